"""What only the notebook needs: its configuration from the environment (quick mode's synthetic data
included), the time a CPU-only runtime will take, and the model summary table."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from modular.config import Config
from modular.device import Runtime
from modular.tools import RESULTS
from modular.tools.gradcam import fp32_cpu_copy
from modular.tools.synthetic import synthetic_cifar10, write_image_tree

DATA_SETTING = "CIFAR10_DIR"  # what names the data in the notebook (the command line's --data-dir)


def notebook_config(quick: bool, workdir: str | Path = ".", output_dir: str | None = None,
                    use_weights: bool = False) -> Config:
    """The notebook's Config. Quick mode (ERA_QUICK=1): a learnable synthetic CIFAR-10 written
    at run time (no internet), 2 epochs, a short range test, in a throwaway runs/quick that is
    cleared each time (so an old quick run never gets resumed; ``output_dir`` is not used, so a real
    run folder is never cleared). Full mode: the defaults, with data from $CIFAR10_DIR if set (else
    torchvision's download) and output in ``output_dir`` ($ERA_OUTPUT_DIR), else runs/headline.
    ``use_weights`` (the shipped weights, no training): fp32, as ``evaluate --weights`` evaluates them."""
    workdir = Path(workdir)
    precision = "fp32" if use_weights else Config.precision
    if not quick:
        return Config(data_dir=os.environ.get(DATA_SETTING), output_dir=output_dir or str(workdir / "runs" / "headline"),
                      precision=precision)
    out = workdir / "runs" / "quick"
    shutil.rmtree(out, ignore_errors=True)
    tree = write_image_tree(synthetic_cifar10(n_train=1000, n_test=200, seed=0), out / "data")
    return Config(data_dir=str(tree), epochs=2, batch_size=64, lr_find_iters=20, output_dir=str(out), precision=precision)


# The runs whose times a CPU-only runtime is told to expect (the README's Seeds table: 24 epochs with the range
# test and the final evaluation, bf16 on a 2-core CPU), and the benchmark made on that CPU.
CPU_RUNS = ("headline.json", "official-seed1.json", "official-seed2.json")
CPU_BENCH = "bench-cpu.json"


def cpu_time_to_expect(runtime: Runtime, results: Path = RESULTS) -> str:
    """One line for a CPU-only runtime, before training: the hours a full run took on the CPU the records were
    made on, scaled by the benchmark's bf16/fp32 ratio where this CPU has no bf16, and how to switch to a GPU."""
    hours = [json.loads((results / name).read_text())["wall_seconds"] / 3600 for name in CPU_RUNS]
    bench = json.loads((results / CPU_BENCH).read_text())
    measured = f"{min(hours):.2f}-{max(hours):.2f} h on {bench['hardware']} in bf16"
    if runtime.precision == "bf16":
        here = f"{measured}, as this runtime runs"
    else:  # fp32 in channels_last, as device.select_runtime picks without bf16
        slower = bench["train_images_per_s"] / bench["fp32_channels_last_train_images_per_s"]
        here = (f"{measured}; this CPU has no bf16, and fp32 is {slower:.1f}x slower ({CPU_BENCH}): about "
                f"{min(hours) * slower:.1f}-{max(hours) * slower:.1f} h")
    return (f"No GPU: the range test and {Config.epochs} epochs take hours on a CPU ({here}). In Colab: "
            "Runtime > Change runtime type > a GPU (T4), then run all cells again.")


def print_model_summary(model: torch.nn.Module) -> None:
    """torchsummary's table on a (3, 32, 32) input, in eval mode so BatchNorm statistics stay put."""
    from torchsummary import summary

    probe = fp32_cpu_copy(model).eval()
    summary(probe, (3, 32, 32), device="cpu")


def tidy_saved_outputs(path: str | Path) -> int:
    """What the progress lines leave in a saved notebook, removed: each is a display output emptied when
    its loop ends (it would stay in the file as an output that shows nothing), and between the lines a cell
    printed it split them into one output each (an epoch table in 24 pieces), joined again here as Jupyter
    shows them while it runs. Returns how many empty outputs were dropped."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    dropped = 0
    for cell in notebook.cells:
        if cell.cell_type == "code":
            kept = []
            for out in cell.outputs:
                if out.output_type == "display_data" and not out.get("data"):
                    dropped += 1
                elif kept and out.output_type == "stream" and kept[-1].output_type == "stream" \
                        and kept[-1].name == out.name:
                    kept[-1].text += out.text
                else:
                    kept.append(out)
            cell.outputs = kept
    nbformat.write(notebook, path)
    return dropped
