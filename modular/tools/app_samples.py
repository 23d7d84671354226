"""The app's committed sample of official test images (at most 200, under 1 MB): one correctly
classified example per class, and misclassified images, each with its index in the record's test
set, its true class and the weights' prediction. Written from the official pixels by
``python -m modular app-samples``; its test-set identity must be the record's, so its indices and
labels are the record's."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modular.data import CifarData
from modular.tools import RESULTS
from modular.tools.jsonio import write_record
from modular.tools.testset import TestSetIdentity

SAMPLE_FORMAT = "era-s10-app-samples/1"
FOLDER = RESULTS / "app-samples"
MANIFEST = "manifest.json"
MOST = 200  # images in all: the sample is committed, and 200 PNGs of 32x32 are about 0.5 MB


class SampleError(RuntimeError):
    """A sample folder that is missing, corrupt or of another test set; the message says what to run."""


@dataclass(frozen=True)
class SampleImage:
    file: str        # its name in the sample folder
    index: int       # in the record's test set
    label: int       # the true class
    predicted: int   # the weights' prediction when the sample was written (fp32, as `evaluate` runs them)


@dataclass(frozen=True)
class Sample:
    folder: Path
    classes: tuple[str, ...]
    test_set: TestSetIdentity
    record: str                                 # the run record's file name
    weights_sha256: str
    examples: tuple[SampleImage, ...]           # one per class, right in the record and with the weights
    misclassified: tuple[SampleImage, ...]      # wrong in the record and with the weights, classes taking turns

    def path(self, image: SampleImage) -> Path:
        return self.folder / image.file


def choose(record: dict, labels: np.ndarray, predicted: np.ndarray, classes: int,
           misclassified: int) -> tuple[list[int], list[int]]:
    """Test indices: the first image of each class that the record and the weights both get right (else
    the class's first image), and up to ``misclassified`` images both get wrong, spread over the test
    set, then ordered so that the classes take turns (the first ten shown are of ten classes where possible)."""
    recorded_wrong = {entry["index"] for entry in record["misclassified"]}
    right = [i for i in range(len(labels)) if i not in recorded_wrong and predicted[i] == labels[i]]
    first = {int(c): int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)}
    examples = [next((i for i in right if labels[i] == c), first[c]) for c in range(classes)]  # else its first image
    both_wrong = [i for i in sorted(recorded_wrong) if predicted[i] != labels[i]]
    kept = min(misclassified, len(both_wrong))
    spread = [both_wrong[j * len(both_wrong) // kept] for j in range(kept)]  # evenly over the list, end to end
    by_class = [[i for i in spread if labels[i] == c] for c in range(classes)]
    turns = [group[turn] for turn in range(max(map(len, by_class))) for group in by_class if turn < len(group)]
    return examples, turns


def write_sample(data: CifarData, record: dict, record_name: str, predicted: np.ndarray, weights_sha256: str,
                 folder: str | os.PathLike = FOLDER, misclassified: int = MOST - 10) -> Sample:
    """Write the chosen test images of ``data`` (the record's test set) as PNGs with a manifest into
    ``folder`` (replacing what is there)."""
    from PIL import Image

    identity = TestSetIdentity.of(data)
    if not TestSetIdentity.from_record(record, record_name).same_images(identity):
        raise SampleError(f"{record_name} does not name this test set ({identity}); pass the --data-dir it ran on")
    if len(data.classes) + misclassified > MOST:
        raise SampleError(f"at most {MOST} images in all: ask for at most {MOST - len(data.classes)} misclassified")
    examples, wrong = choose(record, data.test_labels, predicted, len(data.classes), misclassified)
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def save(index: int) -> SampleImage:
        label = int(data.test_labels[index])
        image = SampleImage(f"{index:05d}-{data.classes[label]}.png", index, label, int(predicted[index]))
        Image.fromarray(data.test_images[index]).save(folder / image.file, optimize=True)
        return image

    sample = Sample(folder, tuple(data.classes), identity, record_name, weights_sha256,
                    tuple(save(i) for i in examples), tuple(save(i) for i in wrong))
    manifest = {"format": SAMPLE_FORMAT, "record": record_name, "test_set": identity.to_dict(), "weights_sha256": weights_sha256,
                "classes": list(sample.classes), "examples": [asdict(i) for i in sample.examples],
                "misclassified": [asdict(i) for i in sample.misclassified]}
    write_record(folder / MANIFEST, manifest)
    return sample


def make_sample(data_dir: str, record_path: str | os.PathLike, weights: str | os.PathLike,
                folder: str | os.PathLike = FOLDER, misclassified: int = MOST - 10, replace: bool = False) -> Sample:
    """Predict the test set of ``data_dir`` with ``weights`` as ``evaluate`` does, check it is the
    record's test set, and write the sample into ``folder`` (an existing sample only if ``replace``)."""
    from modular.evaluate import predict
    from modular.tools.inference import load_for_evaluation
    from modular.tools.testset import check_test_set
    from modular.tools.weights import sha256

    if (Path(folder) / MANIFEST).exists() and not replace:
        raise SampleError(f"{folder} already holds a sample; pass --force to replace it")
    record = json.loads(Path(record_path).read_text())
    learner = load_for_evaluation(None, str(weights), data_dir, device="cpu").learner
    check_test_set(record, str(record_path), learner.data)
    predicted = predict(learner.model, learner.test_loader, learner.runtime).predicted
    return write_sample(learner.data, record, Path(record_path).name, predicted, sha256(weights), folder, misclassified)


def load_sample(folder: str | os.PathLike = FOLDER) -> Sample:
    """The sample in ``folder``; SampleError if its manifest or an image is missing."""
    folder = Path(folder)
    rewrite = "write it with python -m modular app-samples --data-dir <official CIFAR-10> --record <run record>"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != SAMPLE_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        sample = Sample(folder, tuple(manifest["classes"]), TestSetIdentity(**manifest["test_set"]), manifest["record"],
                        manifest["weights_sha256"], tuple(SampleImage(**i) for i in manifest["examples"]),
                        tuple(SampleImage(**i) for i in manifest["misclassified"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SampleError(f"{folder} holds no usable app sample ({type(error).__name__}: {error}); {rewrite}") from None
    missing = [i.file for i in sample.examples + sample.misclassified if not sample.path(i).is_file()]
    if missing:
        raise SampleError(f"{folder} lacks {len(missing)} of its images (first: {missing[0]}); {rewrite}")
    return sample


def check_sample(sample: Sample, record: dict, record_name: str) -> None:
    """SampleError unless the sample comes from the record's test set and its misclassified images are
    among the record's, with the record's true classes."""
    if not TestSetIdentity.from_record(record, record_name).same_images(sample.test_set):
        raise SampleError(f"{sample.folder} was written from another test set ({sample.test_set}) than {record_name} "
                          "names; write it again with python -m modular app-samples")
    recorded = {entry["index"]: entry["actual"] for entry in record["misclassified"]}
    stray = [i for i in sample.misclassified if recorded.get(i.index) != i.label]
    if stray:
        raise SampleError(f"{sample.folder}: test image {stray[0].index} is not misclassified in {record_name}; write "
                          "the sample again with python -m modular app-samples")
