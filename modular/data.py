"""CIFAR-10 from any source into uint8 arrays; statistics (loaders: modular/loaders.py; synthetic data for
tests and the notebook's quick mode: modular/tools/synthetic.py).

Sources (``load_cifar10``):
  * ``data_dir=None``: torchvision's CIFAR10, downloaded into ``download_root`` and md5-verified;
  * a folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` (torchvision format);
  * an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (any format PIL reads, 32x32),
    directly in the folder or in its only subfolder;
  * a ``.tar.gz`` of such a tree (e.g. ``cifar10-jpeg.tar.gz``).
Everything is loaded once into memory: 60,000 images are 184 MB.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from modular.config import CIFAR10_CLASSES, Config, ConfigError

ACCEPTED_LAYOUTS = (
    "a folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz, "
    "an image tree train/<class>/*, test/<class>/* (or a .tar.gz of one)"
)
IMAGE_SIZE = (32, 32)
VAL_SPLIT_SEED = 20261207  # draws the validation split: its own seed, so every run holds out the same images


class DataError(RuntimeError):
    """The data could not be found or is malformed; the message names the path and the fix."""


@dataclass
class CifarData:
    """CIFAR-10 in memory: images N x 32 x 32 x 3 uint8 (RGB), labels int64, CIFAR-10 class order."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    source: str
    kind: str = "unknown"  # the source's layout (image tree, torchvision batches, ...): it fixes the test set's order

    def subset(self, n: int, seed: int) -> CifarData:
        """A class-balanced sample of ``n`` training images, fixed by ``seed`` (test set unchanged)."""
        index = self._balanced(self.train_labels, n, seed, "--subset", "training set")
        return CifarData(self.train_images[index], self.train_labels[index], self.test_images,
                         self.test_labels, self.classes, f"{self.source} (subset of {n})", self.kind)

    def validation_split(self, n: int) -> CifarData:
        """``n`` class-balanced training images held out as the set evaluated on, the rest to train on; the
        test set is not used. The split is fixed by VAL_SPLIT_SEED, the same for every run and seed, so
        variants compared on it are judged on the same images."""
        held_out = self._balanced(self.train_labels, n, VAL_SPLIT_SEED, "--val-split", "training set")
        kept = np.setdiff1d(np.arange(len(self.train_labels)), held_out)
        return CifarData(self.train_images[kept], self.train_labels[kept], self.train_images[held_out],
                         self.train_labels[held_out], self.classes, f"{self.source} (validation split of {n})",
                         f"{self.kind}, validation split of {n}")

    def test_subset(self, n: int, seed: int) -> CifarData:
        """A class-balanced sample of ``n`` test images, fixed by ``seed``, in the test set's order
        (training set unchanged). Its identity is its own, so records point into the sample."""
        index = self._balanced(self.test_labels, n, seed, "--test-subset", "test set")
        return CifarData(self.train_images, self.train_labels, self.test_images[index], self.test_labels[index],
                         self.classes, f"{self.source} (test subset of {n})", f"{self.kind}, test subset of {n}")

    def _balanced(self, labels: np.ndarray, n: int, seed: int, flag: str, split: str) -> np.ndarray:
        """Sorted indices of ``n`` of ``labels``, as many of each class as can be (one more for the first
        ``n % classes``), drawn with ``seed``; ConfigError naming ``flag`` if the split is too small."""
        if n > len(labels):
            raise ConfigError(f"{flag} {n} asked for, but the {split} has only {len(labels)} images: use a smaller {flag}")
        rng = np.random.default_rng(seed)
        per_class = np.full(len(self.classes), n // len(self.classes))
        per_class[: n % len(self.classes)] += 1
        chosen = []
        for label, count in enumerate(per_class):
            members = np.flatnonzero(labels == label)
            if count > len(members):
                raise ConfigError(f"{flag} {n} needs {count} images of class {self.classes[label]!r}, "
                                  f"which has {len(members)} in the {split}: use a smaller {flag}")
            chosen.append(rng.choice(members, size=count, replace=False))
        return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_cifar10(data_dir: str | os.PathLike | None = None, download_root: str | os.PathLike = "data",
                 setting: str = "--data-dir") -> CifarData:
    """Load CIFAR-10 from ``data_dir`` (see the module docstring), or download it when None.
    ``setting``: what the user sets ``data_dir`` with, named in errors (the notebook: CIFAR10_DIR)."""
    if data_dir is None:
        return _load_torchvision(Path(download_root), download=True, setting=setting)
    path = Path(data_dir)
    if not path.exists():
        raise DataError(f"{setting} {path} does not exist; give {ACCEPTED_LAYOUTS}")
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _load_tar(path)
        raise DataError(f"{setting} {path} is a file but not a .tar.gz; give {ACCEPTED_LAYOUTS}")
    if (path / "cifar-10-batches-py").is_dir() or (path / "cifar-10-python.tar.gz").is_file():
        return _load_torchvision(path, download=False, setting=setting)
    tree = _find_image_tree(path)
    if tree is None:
        raise DataError(f"{setting} {path} holds no CIFAR-10; give {ACCEPTED_LAYOUTS}")
    return _load_image_tree(tree)


def load_data(cfg: Config, setting: str = "--data-dir") -> CifarData:
    """CIFAR-10 as ``cfg`` says (cfg.data_dir, or torchvision's download), with cfg.val_split training
    images held out to evaluate on instead of the test set, reduced to cfg.subset training and
    cfg.test_subset test (or held-out) images if set; errors name ``setting``, what the user gives cfg.data_dir with."""
    data = load_cifar10(cfg.data_dir, cfg.download_root, setting)
    data = data.validation_split(cfg.val_split) if cfg.val_split else data
    data = data.subset(cfg.subset, cfg.seed) if cfg.subset else data
    return data.test_subset(cfg.test_subset, cfg.seed) if cfg.test_subset else data


def _load_torchvision(root: Path, download: bool, setting: str = "--data-dir") -> CifarData:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import extract_archive

    archive = root / "cifar-10-python.tar.gz"
    if not download and not (root / "cifar-10-batches-py").is_dir() and archive.is_file():
        extract_archive(str(archive), str(root))
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=False)
    except Exception as error:  # URLError offline, RuntimeError for missing or corrupt files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        what = "could not download CIFAR-10" if download else f"CIFAR-10 in {root} is missing or corrupt"
        raise DataError(f"{what} ({reason}); point {setting} at {ACCEPTED_LAYOUTS}") from None
    classes = tuple(train.classes)
    if classes != CIFAR10_CLASSES:
        raise DataError(f"{root}: batches.meta lists classes {classes}, expected CIFAR-10's {CIFAR10_CLASSES}")
    return CifarData(np.asarray(train.data, np.uint8), np.asarray(train.targets, np.int64),
                     np.asarray(test.data, np.uint8), np.asarray(test.targets, np.int64),
                     classes, f"torchvision CIFAR10 in {root}", "torchvision batches")


def _find_image_tree(path: Path) -> Path | None:
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and (subdirs[0] / "test").is_dir():
        return subdirs[0]
    return None


def _decode_image(payload: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.size != IMAGE_SIZE:
                raise DataError(f"{where}: image is {image.size[0]}x{image.size[1]}, expected 32x32")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{where}: not a readable image ({type(error).__name__}); remove it") from None


def _assemble(files: dict[str, dict[str, list[tuple[str, bytes]]]], where: str, kind: str) -> CifarData:
    """files[split][class] = [(name, payload)] -> arrays in CIFAR-10 class order, names sorted."""
    arrays = {}
    for split in ("train", "test"):
        found = set(files.get(split, {}))
        missing = [c for c in CIFAR10_CLASSES if c not in found]
        extra = sorted(found - set(CIFAR10_CLASSES))
        if missing or extra:
            parts = ([f"missing classes {missing}"] if missing else []) + ([f"unexpected folders {extra}"] if extra else [])
            raise DataError(f"{where}/{split}: {'; '.join(parts)}; "
                            f"expected one folder per CIFAR-10 class {list(CIFAR10_CLASSES)}")
        images, labels = [], []
        for label, name in enumerate(CIFAR10_CLASSES):
            members = sorted(files[split][name])
            if not members:
                raise DataError(f"{where}/{split}/{name}: the class folder is empty")
            for file_name, payload in members:
                images.append(_decode_image(payload, f"{where}/{split}/{name}/{file_name}"))
                labels.append(label)
        arrays[split] = (np.stack(images), np.asarray(labels, np.int64))
    return CifarData(*arrays["train"], *arrays["test"], CIFAR10_CLASSES, where, kind)


def _load_image_tree(root: Path) -> CifarData:
    files: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
    for split in ("train", "test"):
        files[split] = {}
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            files[split][class_dir.name] = [
                (f.name, f.read_bytes()) for f in class_dir.iterdir() if f.is_file() and not f.name.startswith(".")
            ]
    return _assemble(files, str(root), "image tree")


def _load_tar(archive: Path) -> CifarData:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            if any(PurePosixPath(m.name).parts[-2:-1] == ("cifar-10-batches-py",) for m in members):
                return _load_batches_from_tar(tar, members, archive)
            files: dict[str, dict[str, list[tuple[str, bytes]]]] = {}
            for member in members:
                parts = PurePosixPath(member.name).parts
                # .../<split>/<class>/<file>; the split folder may sit under one top folder
                if len(parts) < 3 or parts[-3] not in ("train", "test"):
                    continue
                split, name, file_name = parts[-3:]
                if not member.isfile() or file_name.startswith("."):
                    continue
                files.setdefault(split, {}).setdefault(name, []).append((file_name, tar.extractfile(member).read()))
            for member in members:  # class folders that exist but hold no file
                parts = PurePosixPath(member.name).parts
                if member.isdir() and len(parts) >= 2 and parts[-2] in ("train", "test"):
                    files.setdefault(parts[-2], {}).setdefault(parts[-1], [])
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{archive}: not a readable .tar.gz ({error}); give {ACCEPTED_LAYOUTS}") from None
    if not files:
        raise DataError(f"{archive} holds no train/<class>/ and test/<class>/ folders; give {ACCEPTED_LAYOUTS}")
    return _assemble(files, str(archive), "image tree in a .tar.gz")


def _load_batches_from_tar(tar: tarfile.TarFile, members: list, archive: Path) -> CifarData:
    import pickle

    batches = {PurePosixPath(m.name).name: m for m in members if m.isfile()}
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if any(n not in batches for n in needed):
        raise DataError(f"{archive}: cifar-10-batches-py lacks some of {needed}")

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        entry = pickle.load(tar.extractfile(batches[name]), encoding="latin1")
        images = np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.asarray(entry.get("labels", entry.get("fine_labels")), np.int64)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = read("test_batch")
    return CifarData(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                     test_images, test_labels, CIFAR10_CLASSES, str(archive), "torchvision batches in a .tar.gz")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N x H x W x 3 images, as fractions of 255."""
    pixels = images.reshape(-1, images.shape[-1])
    mean = np.zeros(pixels.shape[1])
    sq = np.zeros(pixels.shape[1])
    for start in range(0, len(pixels), 1 << 22):  # chunks keep float64 copies small
        chunk = pixels[start:start + (1 << 22)].astype(np.float64) / 255.0
        mean += chunk.sum(0)
        sq += (chunk ** 2).sum(0)
    mean /= len(pixels)
    std = np.sqrt(sq / len(pixels) - mean ** 2)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def format_stats(data: CifarData) -> str:
    """A small table: image counts, per-class counts, channel mean and std of the training set."""
    mean, std = channel_stats(data.train_images)
    train_counts = np.bincount(data.train_labels, minlength=len(data.classes))
    test_counts = np.bincount(data.test_labels, minlength=len(data.classes))
    lines = [f"source: {data.source}",
             f"images: {len(data.train_labels):,} train, {len(data.test_labels):,} test",
             f"{'class':<12}{'train':>8}{'test':>8}"]
    lines += [f"{name:<12}{tr:>8,}{te:>8,}" for name, tr, te in zip(data.classes, train_counts, test_counts)]
    lines += [f"{'channel':<12}{'mean':>8}{'std':>8}"]
    lines += [f"{c:<12}{m:>8.4f}{s:>8.4f}" for c, m, s in zip("RGB", mean, std)]
    return "\n".join(lines)
