"""The shipped-weights path: export to fp16, load, evaluate --weights, predict on image files, and the
Grad-CAM command, on a short synthetic run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import SHARED_N_TEST, cli_main, shared_run
from PIL import Image

from custom_resnet import CustomResNet
from modular.checkpoint import load_checkpoint
from modular.config import CIFAR10_CLASSES
from modular.robust import save_atomic
from modular.tools import figure_files
from modular.tools.predict import predict_files
from modular.tools.weights import WEIGHTS_FORMAT, WeightsError, export_weights, load_weights, sha256
from modular.transforms import test_transforms as make_test_transforms


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the shared run, its record copied, the fp16 weights file exported from its checkpoint via the CLI)."""
    run = shared_run(tmp_path_factory)
    folder = tmp_path_factory.mktemp("weights")
    record = folder / "run.json"
    shutil.copy(run.output_dir / "run.json", record)
    weights = folder / "custom_resnet_cifar10.pt"
    from modular.tools.cli import main

    assert main(["export-weights", "--checkpoint", str(run.checkpoint), "--output", str(weights),
                 "--record", str(record)]) == 0
    return run, record, weights


def test_the_weights_file_is_fp16_with_what_inference_needs(exported):
    run, record, weights = exported
    stored = torch.load(weights, weights_only=True)
    assert stored["format"] == WEIGHTS_FORMAT
    assert {v.dtype for v in stored["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert stored["classes"] == list(CIFAR10_CLASSES) and stored["logit_scale"] == run.cfg.logit_scale
    assert stored["mean"] == run.record["mean"] and stored["std"] == run.record["std"]
    noted = json.loads(record.read_text())["weights"]
    assert noted["sha256"] == sha256(weights) and noted["file"] == weights.name and noted["epoch"] == run.cfg.epochs
    assert noted["exported_from"] == "checkpoint.pt"  # the run's own, named without this machine's folders


def test_fp16_weights_give_the_fp32_models_predictions(exported):
    run, _, weights = exported
    fp32 = CustomResNet(logit_scale=run.cfg.logit_scale)
    fp32.load_state_dict(load_checkpoint(run.checkpoint)["model"])
    fp32.eval()
    trained = load_weights(weights)
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = torch.softmax(fp32(images), 1), torch.softmax(trained.model(images), 1)
    assert torch.allclose(got, want, atol=2e-3)
    sure = (want.topk(2).values[:, 0] - want.topk(2).values[:, 1]) > 1e-2  # not a near tie
    assert torch.equal(got.argmax(1)[sure], want.argmax(1)[sure]) and sure.sum() > 32


def test_evaluate_weights_matches_the_run_and_is_noted_in_the_record(exported, capsys):
    run, record, weights = exported
    code, out, err = cli_main(["evaluate", "--weights", weights, "--data-dir", run.tree, "--record", record], capsys)
    assert code == 0, err
    accuracy = float(out.split("test accuracy ", 1)[1].split("%")[0])
    assert abs(accuracy - run.record["test_acc"]) <= 100 / SHARED_N_TEST  # at most one image moved by fp16
    evaluated = json.loads(record.read_text())["weights"]["evaluated"]
    assert evaluated["test_acc"] == pytest.approx(accuracy, abs=0.005) and evaluated["precision"] == "fp32"
    from modular.tools.report import results_table

    assert f"| Shipped weights `{weights.name}` (fp16, evaluated in fp32) | {evaluated['test_acc']:.2f}%" in \
        results_table(json.loads(record.read_text()))
    code, _, err = cli_main(["evaluate", "--weights", weights, "--data-dir", run.tree, "--record", run.output_dir /
                             "run.json"], capsys)
    assert code == 1 and "does not describe" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def images(tmp_path, exported):
    run = exported[0]
    small = tmp_path / "small.png"
    first = sorted((run.tree / "test").glob("*/*.png"))[0]
    shutil.copy(first, small)
    big = tmp_path / "photo.jpg"
    Image.fromarray(np.asarray(Image.open(first)).repeat(3, 0).repeat(5, 1)).save(big)  # 96 x 160
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    return small, big, broken, tmp_path / "missing.jpg"


def test_predict_prints_top3_per_image_and_one_line_per_bad_file(exported, images, capsys):
    small, big, broken, missing = images
    code, out, err = cli_main(["predict", small, broken, big, missing, "--weights", exported[2]], capsys)
    assert code == 1
    lines = out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [str(small), str(big)]
    for line in lines:
        assert len(line.split(": ", 1)[1].split(", ")) == 3 and line.count("%") == 3
    assert "resized" not in lines[0] and lines[1].endswith("(centre-cropped from 160x96 to 96x96; resized from 96x96 to 32x32)")
    errors = [line for line in err.strip().splitlines() if not line.startswith("note: ")]  # the note: its own test
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert str(broken) in errors[0] and "not a readable image" in errors[0]
    assert str(missing) in errors[1] and "no such file" in errors[1]


def test_predict_agrees_with_the_model_on_the_normalized_image(exported, images):
    small = images[0]
    trained = load_weights(exported[2])
    (prediction,) = predict_files(trained, [small])
    image = np.asarray(Image.open(small).convert("RGB"))
    normalized = make_test_transforms(trained.mean, trained.std)(image=image)["image"][None]
    with torch.no_grad():
        probabilities = torch.softmax(trained.model(normalized), 1)[0]
    best = int(probabilities.argmax())
    assert prediction.top[0] == (CIFAR10_CLASSES[best], pytest.approx(float(probabilities[best])))
    assert [p for _, p in prediction.top] == sorted((p for _, p in prediction.top), reverse=True)


def test_weights_of_another_model_or_no_weights_file_are_one_line_errors(exported, tmp_path, capsys):
    run, _, weights = exported
    other = tmp_path / "other.pt"
    save_atomic({**torch.load(weights, weights_only=True), "state_dict": CustomResNet(num_classes=4).half().state_dict()},
                other)
    cases = [(other, "holds weights of another model"), (run.checkpoint, "not a weights file of this project"),
             (tmp_path / "nowhere.pt", "no weights file at")]
    for path, needle in cases:
        code, out, err = cli_main(["predict", str(path), "--weights", path], capsys)
        assert code == 1 and out == "", err
        assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1, err
        with pytest.raises(WeightsError):
            load_weights(path)


def test_gradcam_command_draws_the_records_misclassified_images(exported, tmp_path, capsys, monkeypatch):
    """The figure shows the record's images (not those the model gets wrong now), each titled with the
    record's predicted and true class, in that order."""
    from modular.data import load_cifar10

    run, record, weights = exported
    test = load_cifar10(run.tree)
    chosen = [5, 17, 42, 63]  # made-up mistakes the model does not make: only the record names them
    wrong = [{"index": i, "predicted": int(test.test_labels[i] + 3) % 10, "actual": int(test.test_labels[i])} for i in chosen]
    made_up = tmp_path / "run.json"
    made_up.write_text(json.dumps({**json.loads(record.read_text()), "misclassified": wrong}))
    drawn, real_save = [], figure_files.save_figure
    monkeypatch.setattr(figure_files, "save_figure", lambda fig, path, **kw: drawn.append(fig) or real_save(fig, path, **kw))
    out = tmp_path / "gradcam.png"
    code, stdout, err = cli_main(["gradcam", "--weights", weights, "--data-dir", run.tree, "--record", made_up,
                                  "--output", out], capsys)
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(out) in stdout
    (fig,) = drawn
    shown = [ax for ax in fig.axes if ax.get_title()]
    assert len(shown) == 3 * len(wrong)
    for n, (entry, (image_ax, pred_ax, true_ax)) in enumerate(zip(wrong, zip(*[iter(shown)] * 3)), start=1):
        assert [image_ax.get_title(), pred_ax.get_title(), true_ax.get_title()] == \
            [f"image {n}", f"pred: {CIFAR10_CLASSES[entry['predicted']]}", f"true: {CIFAR10_CLASSES[entry['actual']]}"]
        for ax in (image_ax, pred_ax, true_ax):
            assert np.array_equal(ax.get_images()[0].get_array(), test.test_images[entry["index"]])


def test_export_refuses_a_checkpoint_without_the_runs_statistics(tmp_path, exported):
    from modular.checkpoint import CheckpointError

    state = load_checkpoint(exported[0].checkpoint)
    del state["mean"]
    stripped = save_atomic(state, tmp_path / "stripped.pt")
    with pytest.raises(CheckpointError, match="lacks the run's mean and std"):
        export_weights(stripped, tmp_path / "w.pt", list(CIFAR10_CLASSES))


def test_predict_says_in_one_line_when_the_weights_were_not_trained_on_the_official_images(exported, images, capsys):
    """Weights trained on other images (here synthetic ones; a subset or the JPEG copy alike) get a note on stderr,
    naming the file and the official statistics; the shipped weights, trained on the official pixels, none."""
    small = images[0]
    code, out, err = cli_main(["predict", small, "--weights", exported[2]], capsys)
    assert code == 0 and out.startswith(f"{small}: ")
    (note,) = err.strip().splitlines()
    assert note.startswith(f"note: {exported[2]} was not trained on the official CIFAR-10 training set") and "0.4914" in note
    code, out, err = cli_main(["predict", small], capsys)
    assert code == 0 and out.startswith(f"{small}: ") and err == ""
