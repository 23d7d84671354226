"""The trained weights as a small file anyone can use: the state_dict in fp16 plus what inference
needs besides it (mean, std, class names, logit scale). Exported from a run's final checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from custom_resnet import CustomResNet
from modular.checkpoint import CheckpointError, RunFacts, RunSoFar, Weights, load_checkpoint, load_model_state
from modular.config import CIFAR10_CLASSES, Config
from modular.robust import save_atomic
from modular.tools import REPO, RESULTS, SHIPPED_WEIGHTS
from modular.tools.jsonio import write_record
from modular.tools.record import without_timings

SHIPPED = REPO / SHIPPED_WEIGHTS
WEIGHTS_FORMAT = "era-s10-weights/1"
# what a training checkpoint that evaluate, predict or gradcam cannot read needs
GIVE_A_RUN_CHECKPOINT = "give --checkpoint the checkpoint.pt of a run that train wrote, or --weights a weights file"
HEADLINE = RESULTS / "headline.json"  # the record of the run the shipped weights come from


class WeightsError(RuntimeError):
    """A weights file that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class TrainedModel:
    """A trained CustomResNet in eval mode (fp32, CPU) and what its inputs need."""
    model: CustomResNet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    source: str                      # the file it came from


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_own_run(state: dict, checkpoint: str | os.PathLike, record: dict, record_path: str | os.PathLike) -> None:
    """WeightsError unless ``state`` (the checkpoint at ``checkpoint``) is the final epoch of the run that
    ``record`` describes: the same configuration and seed (where and how fast it ran aside), the
    record's last epoch, and the same epoch history (another run of one configuration has its own)."""
    differences = Config.from_dict(record["config"]).differences(Config.from_dict(state["config"]))
    if differences:
        reason = f"another configuration ({'; '.join(differences[:3])})"
    elif int(state["epoch"]) != len(record["history"]):
        reason = f"epoch {state['epoch']}, while the run ended at epoch {len(record['history'])}"
    elif without_timings(state["history"]) != without_timings(record["history"]):
        reason = "another run of the same configuration (its epoch history differs)"
    else:
        return
    raise WeightsError(f"{checkpoint} is not the final checkpoint of the run {record_path} describes: {reason}; "
                       f"export it without --record, or with that run's own record (its run.json)")


def export_weights(checkpoint: str | os.PathLike, destination: str | os.PathLike, classes: list[str],
                   record_path: str | os.PathLike | None = None) -> dict:
    """Write the checkpoint's weights in fp16 with mean, std, classes and logit scale to ``destination``;
    returns what a run record keeps about the file (name, sha256, epoch, source checkpoint).
    ``record_path``: the run record the file will be noted in; checked (``check_own_run``) before
    anything is written."""
    state = read_run_checkpoint(checkpoint)
    if "mean" not in state or "std" not in state:
        raise CheckpointError(f"{checkpoint} lacks the run's mean and std; export the checkpoint of a full run")
    if record_path is not None:
        check_own_run(state, checkpoint, json.loads(Path(record_path).read_text()), record_path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in evaluated_weights(state).items()}
    save_atomic({"format": WEIGHTS_FORMAT, "state_dict": half, "mean": list(state["mean"]), "std": list(state["std"]),
                     "classes": list(classes), "logit_scale": state["config"]["logit_scale"], "epoch": state["epoch"]},
                    destination)
    return {"file": Path(destination).name, "sha256": sha256(destination), "dtype": "float16",
            "epoch": int(state["epoch"]), "exported_from": str(checkpoint)}


def restore_hint(path: str | os.PathLike) -> str:
    """How to get a missing or damaged weights file back: the shipped one from git, any other by exporting again."""
    if Path(path).resolve() == SHIPPED:
        return f"it comes with the repository: restore it with git checkout -- {SHIPPED_WEIGHTS} (in the repository's folder)"
    return f"export it again: python -m modular export-weights --checkpoint <run folder>/checkpoint.pt --output {path}"


IMAGE_SIGNATURES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                    b"BM": "a BMP image", b"RIFF": "a WebP image"}
TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, and its older pickle format


def image_kind(path: str | os.PathLike) -> str | None:
    """"a PNG image" (JPEG, ...) when the file at ``path`` starts as one, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((kind for signature, kind in IMAGE_SIGNATURES.items() if head.startswith(signature)), None)


def not_a_torch_file(path: str | os.PathLike, what: str) -> str | None:
    """"<path> is a PNG image, not a <what>" (or "... is no <what>, nor any file torch.save writes") when
    torch.save did not write the file at ``path``; None when it starts as a torch file (one torch.load then
    refused: truncated or damaged) or is empty."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head or head.startswith(TORCH_SIGNATURES):
        return None
    kind = image_kind(path)
    return f"{path} is {kind}, not a {what}" if kind else f"{path} is no {what}, nor any file torch.save writes"


def load_weights(path: str | os.PathLike = SHIPPED) -> TrainedModel:
    """The model stored at ``path`` (fp16 on disk, fp32 in memory), ready for inference."""
    path = Path(path)
    if not path.is_file() and path.resolve() == SHIPPED:
        raise WeightsError(f"no weights file at {path}; {restore_hint(path)}")
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}; pass --weights with the path of one "
                           f"(the repository ships {SHIPPED_WEIGHTS})")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, corrupt, not a torch file: torch's own words name none of these
        other = not_a_torch_file(path, "weights file")
        if other:  # nothing to restore, and nothing to export over it
            raise WeightsError(f"{other}: --weights takes one that export-weights wrote, such as {SHIPPED_WEIGHTS} "
                               "(shipped with the repository)") from None
        broken = "is empty" if path.stat().st_size == 0 else "is truncated or damaged (a torch file whose end is missing)"
        raise WeightsError(f"cannot read weights file {path}: it {broken}; {restore_hint(path)}") from None
    if not isinstance(stored, dict) or stored.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path} is not a weights file of this project (for a training checkpoint use --checkpoint)")
    model = CustomResNet(num_classes=len(stored["classes"]), logit_scale=stored["logit_scale"])
    try:
        load_model_state(model, Weights(stored["state_dict"], stored["mean"], stored["std"], str(path)))
    except CheckpointError as error:
        raise WeightsError(str(error)) from None
    return TrainedModel(model.float().eval(), tuple(stored["mean"]), tuple(stored["std"]), tuple(stored["classes"]),
                        str(path))


def shipped_run(record_path: str | os.PathLike = HEADLINE, weights_path: str | os.PathLike = SHIPPED) -> RunSoFar:
    """The shipped weights as the finished run they come from (what a Learner starts from): the weights
    (fp32), mean and std, and from the run's record its epochs, the LR of every step and its LR decision.
    Such a Learner has nothing left to train: ``fit_one_cycle`` shows the recorded epochs, ``lr_find``
    the recorded range test; ``evaluate`` evaluates the weights here."""
    trained = load_weights(weights_path)
    record = json.loads(Path(record_path).read_text())
    source = f"{Path(weights_path).name} (with {Path(record_path).name})"
    weights = Weights(trained.model.state_dict(), list(trained.mean), list(trained.std), source)
    return RunSoFar(weights, RunFacts.from_dict({**record, "mean": weights.mean, "std": weights.std}),
                    record["history"], record["lr_per_step"])


def read_run_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint's dict, for the tools that read one given with --checkpoint; a weights file
    given there instead is named as one."""
    try:
        return load_checkpoint(path, fix=GIVE_A_RUN_CHECKPOINT)
    except CheckpointError:
        if is_weights_file(path):
            raise CheckpointError(f"{path} is a weights file, not a training checkpoint: evaluate, predict and "
                                  "gradcam take it with --weights") from None
        other = not_a_torch_file(path, "training checkpoint") if Path(path).is_file() else None
        if other:  # an image, a text file: not "truncated or damaged"
            raise CheckpointError(f"{other}; {GIVE_A_RUN_CHECKPOINT}") from None
        raise


def evaluated_weights(state: dict) -> dict:
    """The weights a checkpoint's run is judged by: the moving average's when the run keeps one
    (``Learner.evaluated_model``), else the model's."""
    if state.get("ema") is None:
        return state["model"]
    return {name.removeprefix("module."): value for name, value in state["ema"].items() if name.startswith("module.")}


def is_weights_file(path: str | os.PathLike) -> bool:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable: not one
        return False
    return isinstance(stored, dict) and stored.get("format") == WEIGHTS_FORMAT


def load_checkpoint_model(path: str | os.PathLike) -> TrainedModel:
    """The model of a training checkpoint (a run of one's own), as ``load_weights`` gives a weights file."""
    state = read_run_checkpoint(path)
    if "mean" not in state or "std" not in state:
        raise CheckpointError(f"{path} lacks the run's mean and std; export the checkpoint of a run that train wrote")
    model = CustomResNet(logit_scale=Config.from_dict(state["config"]).logit_scale)
    load_model_state(model, Weights(evaluated_weights(state), state["mean"], state["std"], str(path)))
    return TrainedModel(model.float().eval(), tuple(state["mean"]), tuple(state["std"]), CIFAR10_CLASSES, str(path))


def record_export(record_path: str | os.PathLike, exported: dict) -> None:
    """Add the weights file's description (sha256, source) to a run record, as ``weights``."""
    record = json.loads(Path(record_path).read_text())
    record["weights"] = exported
    write_record(record_path, record)


def record_evaluation(record_path: str | os.PathLike, weights: str | os.PathLike | None, evaluation: dict,
                      data_source: str) -> None:
    """Note in a run record what its exported weights file reaches on a test set, as
    ``weights.evaluated``; refuses a file that is not the one the record describes."""
    record = json.loads(Path(record_path).read_text())
    described = record.get("weights", {}).get("sha256")
    if weights is None or described != sha256(weights):
        raise WeightsError(f"{record_path} does not describe {weights}; evaluate the file exported from this run "
                           "(python -m modular export-weights --record ...)")
    record["weights"]["evaluated"] = {"data_source": data_source, "precision": "fp32",
                                      **{k: evaluation[k] for k in ("test_acc", "test_ce", "tta_test_acc")}}
    write_record(record_path, record)
