"""Which test set a run record's indices point into: a hash of the test images and labels in order,
with the source's kind. An image tree is read class by class (files sorted by name), torchvision's
batches in the official interleaved order: the same 10,000 images, other indices. Labels alone miss a
tree whose files are named in another order within a class, so the pixels are hashed too."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from modular.data import CifarData

# The official CIFAR-10 test set in any order (torchvision's batches, or a lossless image tree of them such as
# ../shared/data/get-cifar10-official writes): ``content_digest`` of its 10,000 images, computed from that tree,
# whose TestSetIdentity is the one results/headline.json names (sha256 e4ade4b5dd77...).
OFFICIAL_TEST_CONTENT = "ce4775a95237188f8c1aedb1e4b0eafb2d035ce044f0697c6ae769638cc626e5"
OFFICIAL_TEST_IMAGES = 10_000


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
    def from_record(cls, record: dict, name: str = "the record") -> TestSetIdentity:
        """The identity a run record names; TestSetError if it names none."""
        stored = record.get("test_set")
        if not isinstance(stored, dict):
            raise TestSetError(f"{name} names no test set (no \"test_set\"): pass a run.json that train wrote")
        return cls(stored["kind"], int(stored["images"]), stored["sha256"])

    def same_images(self, other: TestSetIdentity) -> bool:
        """The one comparison: the same images and labels in the same order (the kind only describes them)."""
        return self.sha256 == other.sha256

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.kind} of {self.images:,} images (sha256 {self.sha256[:12]})"


def check_test_set(record: dict, name: str, data: CifarData) -> None:
    """Raise TestSetError unless ``data``'s test set is the one the record ``name`` ran on."""
    here, recorded = TestSetIdentity.of(data), TestSetIdentity.from_record(record, name)
    if not recorded.same_images(here):
        raise TestSetError(f"{name} ran on another test set ({recorded}) than this one ({here}), so its indices point "
                           f"at other images; pass --data-dir with the test set the run used (its record says: "
                           f"{record.get('data_source', 'unknown')})")


def content_digest(data: CifarData) -> str:
    """The test set's images with their labels, whatever their order: the sha256 of each (label, image) pair's
    sha256, sorted (so torchvision's interleaved batches and a class-sorted image tree of them agree)."""
    labels = np.ascontiguousarray(data.test_labels, dtype=np.int64)
    images = np.ascontiguousarray(data.test_images, dtype=np.uint8)
    pairs = sorted(hashlib.sha256(label.tobytes() + image.tobytes()).digest() for label, image in zip(labels, images))
    return hashlib.sha256(b"".join(pairs)).hexdigest()


def unofficial_test_set_note(data: CifarData) -> str | None:
    """One line when ``data``'s test set is not the official CIFAR-10 test set (None when it is): a sample of
    it, a lossy copy (the JPEG copy's pixels differ) or other images score otherwise than on the official one."""
    if content_digest(data) == OFFICIAL_TEST_CONTENT:
        return None
    n = len(data.test_labels)
    what = (f"{n:,} images, not the official {OFFICIAL_TEST_IMAGES:,}" if n != OFFICIAL_TEST_IMAGES
            else f"{n:,} images, but not the official pixels: a lossy copy such as JPEG, or other images")
    return (f"note: this is not the official CIFAR-10 test set ({what}), so its accuracy does not compare with "
            "accuracies on the official one")
