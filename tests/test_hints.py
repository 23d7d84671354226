"""Every hint can be followed: each message names a flag, variable or command that exists and works."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import NO_NETWORK, cli_main, shared_run, small_tree

from modular.config import Config
from modular.data import DataError, load_data
from modular.tools import notebook, weights
from modular.tools.train_command import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def weights_file(run, tmp_path_factory):
    path = tmp_path_factory.mktemp("hints") / "w.pt"
    weights.export_weights(run.checkpoint, path, run.record["classes"])
    return path


@pytest.fixture(scope="module")
def image(run):
    return sorted((run.tree / "test").glob("*/*.png"))[0]


def one_line_error(code, out, err, expected=1) -> str:
    """The error line: stderr's only line (exit 1), or the one after the usage (exit 2, argparse's way)."""
    assert code == expected, err
    lines = err.strip().splitlines()
    assert lines and (len(lines) == 1 if expected == 1 else "error: " in lines[-1]), err
    assert sum("error: " in line for line in lines) == 1, err
    assert "Traceback" not in err and "None" not in err, err
    return lines[-1]


def test_predict_with_a_checkpoint_as_weights_points_at_checkpoint_which_works(run, image, capsys):
    err = one_line_error(*cli_main(["predict", image, "--weights", run.checkpoint], capsys))
    assert "use --checkpoint" in err
    code, out, err = cli_main(["predict", image, "--checkpoint", run.checkpoint], capsys)
    assert code == 0, err
    from modular.tools.predict import predict_files

    (expected,) = predict_files(weights.load_checkpoint_model(run.checkpoint), [image])
    assert out == f"{expected}\n"


def test_predict_checkpoint_gives_the_checkpoints_own_model(run, image, weights_file):
    from modular.tools.predict import predict_files

    (from_checkpoint,) = predict_files(weights.load_checkpoint_model(run.checkpoint), [image])
    (from_weights,) = predict_files(weights.load_weights(weights_file), [image])  # fp16 of the same model
    assert [c for c, _ in from_checkpoint.top] == [c for c, _ in from_weights.top]
    assert [p for _, p in from_checkpoint.top] == pytest.approx([p for _, p in from_weights.top], abs=2e-3)


def test_evaluate_with_weights_as_checkpoint_points_at_weights_which_works(run, weights_file, capsys):
    err = one_line_error(*cli_main(["evaluate", "--checkpoint", weights_file], capsys))
    assert "is a weights file" in err and "--weights" in err and "--output-dir" not in err
    code, out, err = cli_main(["evaluate", "--weights", weights_file, "--data-dir", run.tree], capsys)
    assert code == 0 and "test accuracy" in out, err


def test_evaluate_checkpoint_with_record_is_a_usage_error_naming_weights(run, capsys):
    code, out, err = cli_main(["evaluate", "--checkpoint", run.checkpoint, "--record", run.output_dir / "run.json"], capsys)
    one_line_error(code, out, err, expected=2)
    assert "--record goes with --weights" in err and out == ""


@pytest.mark.parametrize("shipped", [True, False])
def test_a_damaged_weights_file_says_how_to_get_it_back(shipped, weights_file, image, tmp_path, monkeypatch, capsys):
    damaged = tmp_path / "custom_resnet_cifar10.pt"
    damaged.write_bytes(weights_file.read_bytes()[:1000])
    if shipped:  # stands in for results/custom_resnet_cifar10.pt, which must stay whole
        monkeypatch.setattr(weights, "SHIPPED", damaged)
    args = ["predict", image] if shipped else ["predict", image, "--weights", damaged]
    err = one_line_error(*cli_main(args, capsys))
    assert "download" not in err
    if shipped:
        assert "git checkout -- results/custom_resnet_cifar10.pt" in err
    else:
        assert f"python -m modular export-weights --checkpoint <run folder>/checkpoint.pt --output {damaged}" in err
    damaged.unlink()
    err = one_line_error(*cli_main(args, capsys))
    assert ("git checkout -- results/custom_resnet_cifar10.pt" in err) == shipped


def notebook_code() -> str:
    import json

    from helpers import ROOT

    cells = json.loads((ROOT / "era_s10_cifar.ipynb").read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_the_notebooks_data_errors_name_cifar10_dir(tmp_path, monkeypatch):
    for name, value in NO_NETWORK.items():  # the download fails at once
        monkeypatch.setenv(name, value)
    offline = Config(download_root=str(tmp_path / "data"))
    assert f'load_data(cfg, setting="{notebook.DATA_SETTING}")' in notebook_code()  # what the notebook calls
    with pytest.raises(DataError, match="could not download CIFAR-10") as raised:
        load_data(offline, setting=notebook.DATA_SETTING)
    assert "CIFAR10_DIR" in str(raised.value) and "--data-dir" not in str(raised.value)
    with pytest.raises(DataError, match=f"CIFAR10_DIR {tmp_path / 'nowhere'} does not exist"):
        load_data(Config(data_dir=str(tmp_path / "nowhere")), setting=notebook.DATA_SETTING)
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "nowhere"))  # what the message asks for reaches the config
    assert notebook.notebook_config(quick=False, workdir=tmp_path).data_dir == str(tmp_path / "nowhere")


def test_resume_without_a_checkpoint_says_it_starts_a_new_run(tmp_path):
    tree = small_tree(tmp_path / "tree", n_train=40, n_test=20)
    cfg = Config(data_dir=str(tree), output_dir=str(tmp_path / "out"), epochs=1, max_lr=0.1, batch_size=20,
                 device="cpu", precision="fp32")
    log: list[str] = []
    train(cfg, resume=True, log=log.append)
    assert str(tmp_path / "out") in log[0] and "new run" in log[0], log[0]  # the folder, and what happens instead
    assert torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_a_finished_run_is_shown_as_finished_not_resumed(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(run.checkpoint, out / "checkpoint.pt")
    log: list[str] = []
    train(run.cfg.replace(output_dir=str(out)), resume=True, log=log.append)
    [said] = [line for line in log if str(out / "checkpoint.pt") in line]
    assert "2 of 2 epochs" in said and "nothing left to train" in said, said
    assert not [line for line in log if line.startswith("resuming")]


# --------------------------------------------------------------------------------------------
# A file that is not what its flag takes: each message names the file, the cause in words, and the fix of the
# command it came from (a newcomer's first hour)
# --------------------------------------------------------------------------------------------

def test_predict_with_a_truncated_checkpoint_names_its_own_flags_not_start_over(run, image, weights_file, tmp_path,
                                                                                capsys):
    truncated = tmp_path / "checkpoint.pt"
    truncated.write_bytes(run.checkpoint.read_bytes()[:100_000])
    err = one_line_error(*cli_main(["predict", image, "--checkpoint", truncated], capsys))
    assert str(truncated) in err and "truncated" in err and "--checkpoint" in err and "--weights" in err
    assert "start over" not in err and "--output-dir" not in err and "zip" not in err  # not train's fix, not torch's words
    for flag, path in (("--checkpoint", run.checkpoint), ("--weights", weights_file)):  # what it says works
        code, out, err = cli_main(["predict", image, flag, path], capsys)
        assert code == 0 and out.startswith(f"{image}: "), err


@pytest.fixture
def png(tmp_path):
    from PIL import Image

    path = tmp_path / "notes.png"
    Image.new("RGB", (40, 30), "white").save(path)
    return path


def test_an_image_given_as_weights_is_called_an_image_and_predict_says_how_to_classify_it(run, png, capsys):
    from helpers import ROOT

    from modular.tools import SHIPPED_WEIGHTS

    err = one_line_error(*cli_main(["predict", png, "--weights", png], capsys))
    assert str(png) in err and "PNG image" in err and "not a weights file" in err
    assert "Error" not in err.removeprefix("error: ") and "export-weights" in err and f"--output {png}" not in err
    assert err.endswith(f"python -m modular predict {png}")
    code, out, err = cli_main(["predict", png], capsys)      # what it says works (the shipped weights)
    assert code == 0 and out.startswith(f"{png}: "), err
    err = one_line_error(*cli_main(["evaluate", "--weights", png, "--data-dir", run.tree], capsys))
    assert "PNG image" in err and SHIPPED_WEIGHTS in err and f"--output {png}" not in err and "predict" not in err
    assert (ROOT / SHIPPED_WEIGHTS).is_file()
    err = one_line_error(*cli_main(["evaluate", "--checkpoint", png], capsys))
    assert "PNG image" in err and "not a training checkpoint" in err and "truncated" not in err


def test_evaluate_with_a_truncated_weights_file_says_so_and_how_to_export_it_again(run, weights_file, tmp_path, capsys):
    damaged = tmp_path / "w.pt"
    damaged.write_bytes(weights_file.read_bytes()[:100_000])
    err = one_line_error(*cli_main(["evaluate", "--weights", damaged, "--data-dir", run.tree], capsys))
    assert str(damaged) in err and "truncated" in err and "(RuntimeError)" not in err and "zip" not in err
    export = f"python -m modular export-weights --checkpoint <run folder>/checkpoint.pt --output {damaged}"
    assert export in err
    code, _, err = cli_main(["export-weights", "--checkpoint", run.checkpoint, "--output", damaged], capsys)  # it works
    assert code == 0, err
    code, out, err = cli_main(["evaluate", "--weights", damaged, "--data-dir", run.tree], capsys)
    assert code == 0 and "test accuracy" in out, err
