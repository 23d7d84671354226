"""The app's sample of test images: which images are chosen, how they are written and checked against
the record's test set, the ``app-samples`` command, and the committed sample itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, cli_main, shared_run
from PIL import Image

from modular.data import load_cifar10
from modular.tools.app_samples import FOLDER, MOST, SampleError, check_sample, choose, load_sample, write_sample
from modular.tools.synthetic import synthetic_cifar10
from modular.tools.testset import TestSetIdentity
from modular.tools.weights import SHIPPED, sha256


def fake_run(n_test: int = 100, wrong_every: int = 3):
    """Synthetic data (test set grouped by class) and a record of it in which every ``wrong_every``-th
    image was misclassified, and weights' predictions that agree except on the record's first mistake."""
    data = synthetic_cifar10(n_train=20, n_test=n_test, seed=2)
    labels = data.test_labels
    wrong = [{"index": i, "predicted": int((labels[i] + 1) % 10), "actual": int(labels[i])}
             for i in range(1, n_test, wrong_every)]
    predicted = labels.copy()
    for entry in wrong[1:]:
        predicted[entry["index"]] = entry["predicted"]
    record = {"test_images": n_test, "test_set": TestSetIdentity.of(data).to_dict(), "misclassified": wrong}
    return data, record, predicted


def test_choose_picks_right_examples_and_shared_mistakes_spread_with_classes_taking_turns():
    data, record, predicted = fake_run(n_test=200)
    labels = data.test_labels
    examples, wrong = choose(record, labels, predicted, 10, misclassified=30)
    assert [labels[i] for i in examples] == list(range(10))
    recorded = {e["index"] for e in record["misclassified"]}
    assert all(i not in recorded and predicted[i] == labels[i] for i in examples)
    assert len(wrong) == 30 and all(i in recorded and predicted[i] != labels[i] for i in wrong)
    assert record["misclassified"][0]["index"] not in wrong        # right with the weights: left out
    assert [labels[i] for i in wrong[:10]] == list(range(10))    # the classes take turns
    assert min(wrong) < 25 and max(wrong) > 175                   # spread over the whole test set
    assert len(choose(record, labels, predicted, 10, misclassified=500)[1]) == len(record["misclassified"]) - 1


def test_a_sample_is_written_read_back_and_checked_against_its_record(tmp_path):
    data, record, predicted = fake_run()
    written = write_sample(data, record, "run.json", predicted, "abc", tmp_path / "s", misclassified=12)
    sample = load_sample(tmp_path / "s")
    assert sample == written and len(sample.examples) == 10 and len(sample.misclassified) == 12
    for item in sample.examples + sample.misclassified:
        assert np.array_equal(np.asarray(Image.open(sample.path(item))), data.test_images[item.index])
        assert item.label == data.test_labels[item.index] and item.predicted == predicted[item.index]
    check_sample(sample, record, "run.json")
    relabelled = {**record, "test_set": {**record["test_set"], "kind": "torchvision batches"}}
    check_sample(sample, relabelled, "run.json")  # the same images: the kind only describes where they came from
    other = {**record, "test_set": {**record["test_set"], "sha256": "0" * 64}}
    with pytest.raises(SampleError, match="another test set"):
        check_sample(sample, other, "other.json")
    fewer = {**record, "misclassified": [e for e in record["misclassified"] if e["index"] != sample.misclassified[3].index]}
    with pytest.raises(SampleError, match=f"test image {sample.misclassified[3].index} is not misclassified"):
        check_sample(sample, fewer, "run.json")
    with pytest.raises(SampleError, match="does not name this test set"):
        write_sample(data, other, "other.json", predicted, "abc", tmp_path / "t")
    with pytest.raises(SampleError, match=f"at most {MOST} images"):
        write_sample(data, record, "run.json", predicted, "abc", tmp_path / "t", misclassified=MOST)


def test_a_broken_sample_folder_is_one_line_saying_what_to_run(tmp_path):
    data, record, predicted = fake_run()
    write_sample(data, record, "run.json", predicted, "abc", tmp_path / "s", misclassified=5)
    (tmp_path / "s" / load_sample(tmp_path / "s").misclassified[0].file).unlink()
    for folder, needle in ((tmp_path / "nothing", "holds no usable app sample"), (tmp_path / "s", "lacks 1 of its images")):
        with pytest.raises(SampleError, match=needle) as caught:
            load_sample(folder)
        assert "python -m modular app-samples" in str(caught.value) and "\n" not in str(caught.value)


def test_the_app_samples_command_writes_from_a_run_and_keeps_an_existing_sample(tmp_path_factory, tmp_path, capsys):
    run = shared_run(tmp_path_factory)
    weights, out = tmp_path / "w.pt", tmp_path / "sample"
    assert cli_main(["export-weights", "--checkpoint", run.checkpoint, "--output", weights], capsys)[0] == 0
    args = ["app-samples", "--data-dir", run.tree, "--record", run.output_dir / "run.json", "--weights", weights,
            "--output", out, "--misclassified", 5]
    code, stdout, err = cli_main(args, capsys)
    assert code == 0, err
    sample = load_sample(out)
    assert sample.test_set == TestSetIdentity.of(load_cifar10(run.tree)) and sample.weights_sha256 == sha256(weights)
    check_sample(sample, run.record, "run.json")
    code, _, err = cli_main(args, capsys)
    assert code == 1 and str(out) in err and "--force" in err and len(err.strip().splitlines()) == 1, err
    assert cli_main([*args, "--force"], capsys)[0] == 0


def test_the_committed_sample_is_small_of_the_headline_test_set_and_of_the_shipped_weights():
    sample = load_sample(FOLDER)
    files = [p for p in FOLDER.iterdir() if p.suffix == ".png"]
    assert len(files) == len(sample.examples) + len(sample.misclassified) <= MOST
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 1_000_000
    headline = json.loads((ROOT / "results" / "headline.json").read_text())
    check_sample(sample, headline, "headline.json")
    assert sample.record == "headline.json" and sample.weights_sha256 == headline["weights"]["sha256"] == sha256(SHIPPED)
    assert [sample.classes[i.label] for i in sample.examples] == list(sample.classes)
    assert all(i.predicted != i.label for i in sample.misclassified)
    assert len({i.label for i in sample.misclassified[:10]}) == 10
    manifest = (FOLDER / "manifest.json").read_text()
    assert "/tmp/" not in manifest and "/root/" not in manifest and "/home/" not in manifest


def test_a_copy_of_the_sample_elsewhere_still_loads(tmp_path):
    copy = Path(shutil.copytree(FOLDER, tmp_path / "copy"))
    assert load_sample(copy).misclassified == load_sample(FOLDER).misclassified
