"""Writers of CIFAR-10 in the layouts `load_cifar10` reads, used only by the tests (the image-tree
writer lives in modular/data.py: the notebook's quick mode needs it too)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from modular.data import CifarData


def write_torchvision_batches(data: CifarData, root: str | os.PathLike) -> Path:
    """Write ``data`` in torchvision's format: root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    import pickle

    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R, then G, then B planes
        with open(folder / name, "wb") as f:
            pickle.dump({"data": planes, "labels": labels.tolist()}, f)

    for i, part in enumerate(np.array_split(np.arange(len(data.train_labels)), 5), start=1):
        dump(f"data_batch_{i}", data.train_images[part], data.train_labels[part])
    dump("test_batch", data.test_images, data.test_labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data.classes)}, f)
    return Path(root)


def write_tar_gz(tree_root: str | os.PathLike, archive: str | os.PathLike, top: str = "cifar10") -> Path:
    """Pack an image tree as ``archive`` with the tree under one top folder (like cifar10-jpeg.tar.gz)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(str(tree_root), arcname=top)
    return Path(archive)


def write_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """A checkpoint file holding exactly ``state`` (tagged with the format), however incomplete: what
    the reading side must cope with (old, stripped or foreign checkpoints)."""
    from modular.checkpoint import CHECKPOINT_FORMAT
    from modular.robust import save_atomic

    return save_atomic({"format": CHECKPOINT_FORMAT, **state}, path)
