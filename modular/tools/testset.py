"""Which test set a run record's indices point into: a hash of the test images and labels in order,
with the source's kind. An image tree is read class by class (files sorted by name), torchvision's
batches in the official interleaved order: the same 10,000 images, other indices. Labels alone miss a
tree whose files are named in another order within a class, so the pixels are hashed too."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modular.data import CifarData
from modular.tools.jsonio import write_record


class TestSetError(RuntimeError):
    """A record and a test set that do not belong together; the message says which --data-dir to pass."""
    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class TestSetIdentity:
    __test__ = False  # not a pytest test class
    kind: str        # the source's layout, e.g. "image tree" (class-sorted) or "torchvision batches" (official order)
    images: int
    sha256: str      # of the labels (int64), then the images (uint8 N x 32 x 32 x 3), in order

    @classmethod
    def of(cls, data: CifarData) -> TestSetIdentity:
        digest = hashlib.sha256(np.ascontiguousarray(data.test_labels, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(data.test_images, dtype=np.uint8).tobytes())
        return cls(data.kind, int(len(data.test_labels)), digest.hexdigest())

    @classmethod
    def from_record(cls, record: dict) -> TestSetIdentity | None:
        """The record's identity; None for a record written before identities existed."""
        stored = record.get("test_set")
        return None if stored is None else cls(stored["kind"], int(stored["images"]), stored["sha256"])

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.kind} of {self.images:,} images (sha256 {self.sha256[:12]})"


def check_test_set(record: dict, name: str, data: CifarData) -> str:
    """Raise TestSetError unless ``data``'s test set is the one the record ``name`` ran on; returns a
    note when that could only be checked in part (a record that predates identities)."""
    here = TestSetIdentity.of(data)
    recorded = TestSetIdentity.from_record(record)
    fix = f"pass --data-dir with the test set the run used (its record says: {record.get('data_source', 'unknown')})"
    if recorded is not None:
        if recorded.sha256 != here.sha256:
            raise TestSetError(f"{name} ran on another test set ({recorded}) than this one ({here}), so its "
                               f"indices point at other images; {fix}")
        return ""
    wrong = _labels_that_differ(record, data)
    if wrong:
        raise TestSetError(f"{name} ran on another test set: {wrong}; {fix}")
    return (f"{name} predates test-set identities: only its image count and the labels at its misclassified "
            "indices could be checked (they match)")


def _labels_that_differ(record: dict, data: CifarData) -> str:
    """What a record without an identity contradicts in ``data``: its image count, the labels at its
    misclassified indices; '' if nothing."""
    count = record.get("test_images")
    if count is not None and count != len(data.test_labels):
        return f"it had {count:,} test images, this one has {len(data.test_labels):,}"
    for entry in record.get("misclassified", []):
        index = entry["index"]
        if index >= len(data.test_labels) or data.test_labels[index] != entry["actual"]:
            return f"test image {index} is not of class {data.classes[entry['actual']]!r} here"
    return ""


def stamp_record(path: str | os.PathLike, data: CifarData) -> TestSetIdentity:
    """Add ``data``'s test-set identity to the run record at ``path`` (after "test_images"), after
    checking what the record says about its test set: image count, labels at its misclassified
    indices, images per class (its confusion matrix). Refuses a record stamped with another identity."""
    path = Path(path)
    record = json.loads(path.read_text())
    here = TestSetIdentity.of(data)
    recorded = TestSetIdentity.from_record(record)
    if recorded is not None:
        if recorded != here:
            raise TestSetError(f"{path} already names another test set ({recorded}); not changed")
        return here
    wrong = _labels_that_differ(record, data)
    counts = np.bincount(data.test_labels, minlength=len(data.classes)).tolist()
    if not wrong and "confusion_matrix" in record and [sum(row) for row in record["confusion_matrix"]] != counts:
        wrong = "its images per class (confusion matrix rows) differ"
    if wrong:
        raise TestSetError(f"{path} did not run on this test set ({here}): {wrong}; not changed")
    stamped = {}
    for key, value in record.items():
        stamped[key] = value
        if key == "test_images":
            stamped["test_set"] = here.to_dict()
    stamped.setdefault("test_set", here.to_dict())
    write_record(path, stamped)
    return here
