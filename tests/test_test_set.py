"""Records say which test set their indices point into: the same images in another order (classes
interleaved as in torchvision's batches, or permuted within a class in an image tree) are refused by
``gradcam --record`` and ``evaluate --record`` with one line naming --data-dir; the matching order draws
the images whose labels the figure prints; a record without an identity is refused."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, cli_main, shared_run
from writers import write_tar_gz, write_torchvision_batches

from custom_resnet import CustomResNet
from modular.checkpoint import Weights
from modular.config import Config
from modular.data import load_cifar10
from modular.learner import Learner, new_model
from modular.robust import save_atomic
from modular.tools.inference import gradcam_figure
from modular.tools.synthetic import synthetic_cifar10, write_image_tree
from modular.tools.testset import TestSetError, TestSetIdentity, check_test_set
from modular.tools.weights import WEIGHTS_FORMAT, sha256

WRONG = [3, 14, 25]  # test indices the record says were misclassified: one image each of classes 1, 4, 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 30 test images (3 per class) three ways: the class-sorted tree the record ran on,
    torchvision batches with the classes interleaved, and a tree whose files are named in another
    order within each class."""
    root = tmp_path_factory.mktemp("orders")
    data = synthetic_cifar10(n_train=40, n_test=30, seed=3)
    sorted_tree = write_image_tree(data, root / "sorted")
    position = np.arange(30)
    order = (position % 10) * 3 + position // 10  # the first of every class, then the second of every class, ...
    mixed = replace(data, test_images=data.test_images[order], test_labels=data.test_labels[order])
    batches = write_torchvision_batches(mixed, root / "batches")
    permuted = Path(shutil.copytree(sorted_tree, root / "permuted"))
    for folder in (permuted / "test").iterdir():  # 0000 <-> 0002 in every class: same labels, other images
        first, last = folder / "0000.png", folder / "0002.png"
        first.rename(folder / "swap.png")
        last.rename(first)
        (folder / "swap.png").rename(last)
    return {"sorted": sorted_tree, "interleaved": batches, "permuted": permuted}


@pytest.fixture(scope="module")
def record(sources):
    data = load_cifar10(sources["sorted"])
    wrong = [{"index": i, "predicted": (int(data.test_labels[i]) + 1) % 10, "actual": int(data.test_labels[i])}
             for i in WRONG]
    return {"data_source": "runs/cifar10-sorted", "test_images": 30, "test_set": TestSetIdentity.of(data).to_dict(),
            "misclassified": wrong, "confusion_matrix": [[3 if i == j else 0 for j in range(10)] for i in range(10)]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, sources):
    """An untrained model as a weights file (what is drawn does not depend on what it learnt)."""
    model = CustomResNet(logit_scale=0.125)
    data = load_cifar10(sources["sorted"])
    path = tmp_path_factory.mktemp("weights") / "w.pt"
    save_atomic({"format": WEIGHTS_FORMAT, "state_dict": {k: v.half() if v.is_floating_point() else v
                                                  for k, v in model.state_dict().items()},
                 "mean": [0.5] * 3, "std": [0.25] * 3, "classes": list(data.classes), "logit_scale": 0.125, "epoch": 1},
                path)
    return path


def test_the_three_orders_hold_the_same_images_but_not_the_same_identity(sources, cifar10_no_md5):
    loaded = {name: load_cifar10(path) for name, path in sources.items()}
    identities = {name: TestSetIdentity.of(data) for name, data in loaded.items()}
    assert len({i.sha256 for i in identities.values()}) == 3
    assert identities["sorted"].kind == "image tree" and identities["interleaved"].kind == "torchvision batches"
    rows = {name: sorted(map(bytes, data.test_images)) for name, data in loaded.items()}
    assert rows["sorted"] == rows["interleaved"] == rows["permuted"]  # the same 30 images
    # labels alone would not tell the permuted tree apart: that is why the pixels are hashed
    assert np.array_equal(loaded["permuted"].test_labels, loaded["sorted"].test_labels)


def test_the_identity_depends_on_order_and_pixels_not_on_the_container(sources, tmp_path):
    data = load_cifar10(sources["sorted"])
    archived = load_cifar10(write_tar_gz(sources["sorted"], tmp_path / "tree.tar.gz"))
    assert TestSetIdentity.of(archived).sha256 == TestSetIdentity.of(data).sha256
    assert TestSetIdentity.of(archived).kind == "image tree in a .tar.gz"
    changed = data.test_images.copy()
    changed[7, 0, 0, 0] ^= 1
    assert TestSetIdentity.of(replace(data, test_images=changed)).sha256 != TestSetIdentity.of(data).sha256


@pytest.mark.parametrize("order", ["interleaved", "permuted"])
@pytest.mark.parametrize("command", ["gradcam", "evaluate"])
def test_a_record_on_another_order_is_refused_with_one_line(order, command, sources, record, weights, tmp_path,
                                                             capsys, cifar10_no_md5):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**record, "weights": {"file": weights.name, "sha256": sha256(weights)}}))
    args = [command, "--weights", weights, "--data-dir", sources[order], "--record", path]
    code, out, err = cli_main(args + (["--output", tmp_path / "g.png"] if command == "gradcam" else []), capsys)
    assert code == 1 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {path} ran on another test set") and "pass --data-dir" in line
    assert "runs/cifar10-sorted" in line   # the data the record names
    assert not (tmp_path / "g.png").exists() and "evaluated" not in json.loads(path.read_text())["weights"]


def test_the_matching_order_is_accepted_by_both_commands(sources, record, weights, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**record, "weights": {"file": weights.name, "sha256": sha256(weights)}}))
    code, out, err = cli_main(["gradcam", "--weights", weights, "--data-dir", sources["sorted"], "--record", path,
                               "--output", tmp_path / "g.png"], capsys)
    assert code == 0 and err == "" and (tmp_path / "g.png").exists()
    code, out, err = cli_main(["evaluate", "--weights", weights, "--data-dir", sources["sorted"], "--record", path], capsys)
    assert code == 0 and err == "" and "evaluated" in json.loads(path.read_text())["weights"]


def drawn(figure) -> list[tuple[np.ndarray, str]]:
    """(the image drawn, the true class printed) for every image of a Grad-CAM figure, in order."""
    axes = [ax for ax in figure.axes if ax.get_title()]
    shown = []
    for i, ax in enumerate(axes):
        if ax.get_title().startswith("image "):
            shown.append((np.asarray(ax.get_images()[0].get_array()), axes[i + 2].get_title().removeprefix("true: ")))
    return shown


def test_the_matching_order_draws_the_images_whose_labels_the_figure_prints(sources, record):
    cfg = Config(data_dir=str(sources["sorted"]), device="cpu", precision="fp32", batch_size=16)
    learner = Learner(cfg, start=Weights(new_model(cfg).state_dict(), [0.5] * 3, [0.25] * 3, "random weights"))
    check_test_set(record, "run.json", learner.data)
    shown = drawn(gradcam_figure(learner, record["misclassified"]))
    assert len(shown) == len(WRONG)
    for (image, printed), index in zip(shown, WRONG):
        assert np.array_equal(image, learner.data.test_images[index])
        assert printed == learner.data.classes[learner.data.test_labels[index]]


def test_the_permuted_tree_would_draw_other_images_under_the_same_labels(sources, record):
    """What the check prevents: same labels at the record's indices, other pictures."""
    right, permuted = load_cifar10(sources["sorted"]), load_cifar10(sources["permuted"])
    index = next(i for i in WRONG if i % 3 != 1)  # 0000 and 0002 swapped: the first or last of a class
    assert permuted.test_labels[index] == right.test_labels[index]
    assert not np.array_equal(permuted.test_images[index], right.test_images[index])
    with pytest.raises(TestSetError, match="ran on another test set"):
        check_test_set(record, "run.json", permuted)


def test_a_record_without_an_identity_is_refused_with_one_line(sources, record, weights, tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "test_set"}))
    code, out, err = cli_main(["gradcam", "--weights", weights, "--data-dir", sources["sorted"], "--record", path,
                               "--output", tmp_path / "g.png"], capsys)
    assert code == 1 and "Traceback" not in err and not (tmp_path / "g.png").exists()
    (line,) = err.strip().splitlines()
    assert "names no test set" in line and "run.json" in line


def test_a_runs_record_holds_its_test_sets_identity(tmp_path_factory):
    run = shared_run(tmp_path_factory)
    assert run.record["test_set"] == TestSetIdentity.of(load_cifar10(run.tree)).to_dict()
    assert list(run.record).index("test_set") == list(run.record).index("test_images") + 1


def test_the_committed_official_records_name_the_class_sorted_tree():
    root = ROOT / "results"
    identities = {json.dumps(json.loads((root / f"{name}.json").read_text())["test_set"], sort_keys=True)
                  for name in ("headline", "official-seed1", "official-seed2")}
    assert len(identities) == 1 and json.loads(next(iter(identities)))["kind"] == "image tree"
    jpeg = json.loads((root / "jpeg-seed0.json").read_text())["test_set"]  # the lossy copy: other pixels
    assert jpeg["kind"] == "image tree in a .tar.gz" and jpeg["images"] == 10000 \
        and {json.dumps(jpeg, sort_keys=True)} != identities


def test_the_content_digest_is_one_whatever_the_order_and_tells_other_images_apart(sources, cifar10_no_md5):
    """The official test set is recognised in torchvision's order and in a class-sorted tree alike; one pixel
    changed (as a lossy copy changes many) or a sample of it is another test set."""
    from modular.tools.testset import content_digest

    datasets = [load_cifar10(path) for path in sources.values()]
    assert len({content_digest(data) for data in datasets}) == 1
    assert len({TestSetIdentity.of(data).sha256 for data in datasets}) == 3
    changed = datasets[0].test_images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert content_digest(replace(datasets[0], test_images=changed)) != content_digest(datasets[0])


@pytest.mark.parametrize("official", [False, True])
def test_evaluate_says_in_one_line_when_the_test_set_is_not_the_official_one(official, sources, weights, monkeypatch,
                                                                              capsys, cifar10_no_md5):
    """On other images (here synthetic ones) evaluate says that its accuracy does not compare with the official
    test set's; on the official test set (stood in for by these images' digest) it says nothing of the kind."""
    from modular.tools import testset

    if official:
        monkeypatch.setattr(testset, "OFFICIAL_TEST_CONTENT", testset.content_digest(load_cifar10(sources["interleaved"])))
    code, out, err = cli_main(["evaluate", "--weights", weights, "--data-dir", sources["sorted"]], capsys)
    assert code == 0 and "test accuracy" in out, err
    notes = [line for line in out.splitlines() if "official" in line]
    if official:
        assert notes == []
    else:
        assert len(notes) == 1 and "not the official CIFAR-10 test set (30 images, not the official 10,000)" in notes[0]


def test_the_official_digest_is_the_headline_runs_test_set():
    """OFFICIAL_TEST_CONTENT was computed from the image tree whose identity results/headline.json names (the
    official pixels, ../shared/data/get-cifar10-official); with that tree at hand (CIFAR10_OFFICIAL_DIR) this
    computes it again."""
    import os

    from modular.tools.testset import OFFICIAL_TEST_CONTENT, content_digest, unofficial_test_set_note

    headline = json.loads((ROOT / "results" / "headline.json").read_text())
    assert headline["test_set"]["images"] == 10_000 and len(OFFICIAL_TEST_CONTENT) == 64
    folder = os.environ.get("CIFAR10_OFFICIAL_DIR")
    if not folder:
        pytest.skip("set CIFAR10_OFFICIAL_DIR to the official image tree to check the digest against it")
    data = load_cifar10(folder)
    assert TestSetIdentity.of(data).sha256 == headline["test_set"]["sha256"]
    assert content_digest(data) == OFFICIAL_TEST_CONTENT and unofficial_test_set_note(data) is None
