"""load_cifar10 from every source, its error messages, CifarData.subset, the Dataset and the loaders."""

from __future__ import annotations

import random
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from writers import write_tar_gz, write_torchvision_batches

from modular.config import CIFAR10_CLASSES, Config, ConfigError
from modular.data import CifarData, DataError, load_cifar10, load_data
from modular.device import Runtime
from modular.loaders import CifarDataset, make_loaders
from modular.tools.synthetic import synthetic_cifar10, write_image_tree
from modular.transforms import test_transforms as make_test_transforms
from modular.transforms import train_transforms

CPU = Runtime(torch.device("cpu"), None, channels_last=False)


def assert_same_data(loaded: CifarData, expected: CifarData) -> None:
    assert loaded.classes == CIFAR10_CLASSES
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        got, want = getattr(loaded, name), getattr(expected, name)
        assert got.dtype == want.dtype, name
        assert np.array_equal(got, want), name
    assert loaded.train_images.shape[1:] == (32, 32, 3)


def tar_batches(batches_root: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(str(batches_root / "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    return archive


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

def _source(kind: str, data: CifarData, image_tree: Path, tmp: Path) -> Path:
    if kind == "image tree":
        return image_tree
    if kind == "image tree in the only subfolder":
        return image_tree.parent
    if kind == "cifar-10-batches-py":
        return write_torchvision_batches(data, tmp / "batches")
    if kind == "folder with cifar-10-python.tar.gz":
        (tmp / "dl").mkdir()
        tar_batches(write_torchvision_batches(data, tmp / "staging"), tmp / "dl" / "cifar-10-python.tar.gz")
        return tmp / "dl"
    if kind == "cifar-10-python.tar.gz file":
        return tar_batches(write_torchvision_batches(data, tmp / "staging"), tmp / "cifar-10-python.tar.gz")
    if kind == "tar.gz of the image tree":
        return write_tar_gz(image_tree, tmp / "cifar10-png.tar.gz")
    raise AssertionError(kind)


SOURCES = ["image tree", "image tree in the only subfolder", "cifar-10-batches-py",
           "folder with cifar-10-python.tar.gz", "cifar-10-python.tar.gz file", "tar.gz of the image tree"]


@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_loads_the_same_arrays(kind, tiny_data, image_tree, tmp_path, cifar10_no_md5):
    loaded = load_cifar10(_source(kind, tiny_data, image_tree, tmp_path))
    assert_same_data(loaded, tiny_data)


def test_sources_agree_with_each_other(tiny_data, image_tree, tmp_path, cifar10_no_md5):
    tree = load_cifar10(image_tree)
    batches = load_cifar10(write_torchvision_batches(tiny_data, tmp_path / "b"))
    archive = load_cifar10(write_tar_gz(image_tree, tmp_path / "t.tar.gz"))
    for other in (batches, archive):
        assert_same_data(other, tree)


def test_archive_in_folder_is_extracted_next_to_it(tiny_data, tmp_path, cifar10_no_md5):
    folder = tmp_path / "dl"
    folder.mkdir()
    tar_batches(write_torchvision_batches(tiny_data, tmp_path / "staging"), folder / "cifar-10-python.tar.gz")
    load_cifar10(folder)
    assert (folder / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert_same_data(load_cifar10(folder), tiny_data)  # second time from the extracted folder


def test_download_path_reads_an_existing_copy(tiny_data, tmp_path, cifar10_no_md5, monkeypatch):
    """data_dir=None with the files already in download_root: no network."""
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download although the files are there")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    write_torchvision_batches(tiny_data, tmp_path)
    assert_same_data(load_cifar10(None, download_root=tmp_path), tiny_data)


def test_jpeg_tree_loads_with_lossy_values(tiny_data, tmp_path):
    loaded = load_cifar10(write_image_tree(tiny_data, tmp_path / "jpeg", suffix=".jpg"))
    assert loaded.train_images.shape == tiny_data.train_images.shape
    assert np.array_equal(loaded.train_labels, tiny_data.train_labels)
    # JPEG loses the pixel noise but keeps each image's colour
    colour = loaded.train_images.mean(axis=(1, 2)) - tiny_data.train_images.mean(axis=(1, 2))
    assert np.abs(colour).max() < 6


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        load_cifar10(missing)
    assert str(missing) in str(info.value)


def test_folder_without_cifar(tmp_path):
    (tmp_path / "something").mkdir()
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="holds no CIFAR-10") as info:
        load_cifar10(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_file_that_is_not_an_archive(tmp_path):
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK")
    with pytest.raises(DataError) as info:
        load_cifar10(path)
    assert str(path) in str(info.value)


def test_corrupt_tar_gz(tmp_path):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="not a readable") as info:
        load_cifar10(path)
    assert str(path) in str(info.value)


def test_batches_folder_with_a_missing_file(tiny_data, tmp_path, cifar10_no_md5):
    root = write_torchvision_batches(tiny_data, tmp_path / "b")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing or corrupt") as info:
        load_cifar10(root)
    assert str(root) in str(info.value)


def _offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # torchvision's download entry point, and urlopen underneath it: the test never reaches the network
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)


def test_offline_without_local_copy(tmp_path, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(DataError) as info:
        load_cifar10(None, download_root=tmp_path)
    message = str(info.value)
    assert "--data-dir" in message
    assert "download" in message
    assert "\n" not in message


def _missing_class(root: Path) -> str:
    shutil.rmtree(root / "train" / "cat")
    return str(root / "train")


def _extra_class(root: Path) -> str:
    (root / "test" / "unicorn").mkdir()
    shutil.copy(root / "test" / "cat" / "0000.png", root / "test" / "unicorn" / "0000.png")
    return str(root / "test")


def _empty_class(root: Path) -> str:
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    return str(root / "train" / "dog")


def _non_image(root: Path) -> str:
    path = root / "train" / "frog" / "notes.txt"
    path.write_text("not an image")
    return str(path)


def _truncated_png(root: Path) -> str:
    path = root / "test" / "ship" / "0001.png"
    path.write_bytes(path.read_bytes()[:40])
    return str(path)


def _wrong_size(root: Path) -> str:
    path = root / "train" / "horse" / "0099.png"
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(path)
    return str(path)


BAD_TREES = {
    "missing class": (_missing_class, "missing classes"),
    "extra class": (_extra_class, "unexpected folders"),
    "empty class": (_empty_class, "empty"),
    "non-image file": (_non_image, "not a readable image"),
    "truncated png": (_truncated_png, "not a readable image"),
    "wrong size": (_wrong_size, "24x16, expected 32x32"),
}


@pytest.mark.parametrize("case", list(BAD_TREES))
def test_bad_tree_names_the_offending_path(case, tree_copy):
    damage, words = BAD_TREES[case]
    offending = damage(tree_copy)
    with pytest.raises(DataError) as info:
        load_cifar10(tree_copy)
    message = str(info.value)
    assert offending in message
    assert words in message
    if case == "missing class":
        assert "'cat'" in message
    if case == "extra class":
        assert "unicorn" in message


@pytest.mark.parametrize("case", list(BAD_TREES))
def test_bad_tree_in_tar_gz_names_the_offending_member(case, tree_copy, tmp_path):
    damage, words = BAD_TREES[case]
    offending = damage(tree_copy)
    archive = write_tar_gz(tree_copy, tmp_path / "bad.tar.gz")
    with pytest.raises(DataError) as info:
        load_cifar10(archive)
    message = str(info.value)
    assert str(archive) in message
    # same path inside the archive: <archive>/<split>/<class>[/<file>]
    assert str(archive) + offending[len(str(tree_copy)):] in message
    assert words in message


# --------------------------------------------------------------------------------------------
# subset
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [10, 20, 25, 37, 200])
def test_subset_is_class_balanced(small_data, n):
    sub = small_data.subset(n, seed=0)
    counts = np.bincount(sub.train_labels, minlength=10)
    assert counts.sum() == n == len(sub.train_images)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(sub.test_images, small_data.test_images)
    assert np.array_equal(sub.test_labels, small_data.test_labels)
    assert sub.classes == small_data.classes


def test_subset_images_come_with_their_labels(small_data):
    sub = small_data.subset(30, seed=3)
    for image, label in zip(sub.train_images, sub.train_labels, strict=True):
        matches = np.flatnonzero((small_data.train_images == image).all(axis=(1, 2, 3)))
        assert len(matches) == 1 and small_data.train_labels[matches[0]] == label


def test_subset_is_deterministic_by_seed(small_data):
    a, b, c = small_data.subset(40, seed=7), small_data.subset(40, seed=7), small_data.subset(40, seed=8)
    assert np.array_equal(a.train_images, b.train_images)
    assert np.array_equal(a.train_labels, b.train_labels)
    assert not np.array_equal(a.train_images, c.train_images)


def test_test_subset_is_class_balanced_in_the_test_sets_order_and_keeps_the_training_set(small_data):
    sub = small_data.test_subset(20, seed=0)
    assert np.array_equal(np.bincount(sub.test_labels, minlength=10), [2] * 10)
    assert np.array_equal(sub.train_images, small_data.train_images)
    index = [int(np.flatnonzero((small_data.test_images == image).all(axis=(1, 2, 3)))[0]) for image in sub.test_images]
    assert index == sorted(index) and [int(small_data.test_labels[i]) for i in index] == sub.test_labels.tolist()
    assert "test subset of 20" in sub.kind  # its identity is the sample's, not the full test set's
    with pytest.raises(ConfigError, match="--test-subset"):
        small_data.test_subset(len(small_data.test_labels) + 1, seed=0)


def test_load_data_applies_both_subsets(tmp_path):
    tree = write_image_tree(synthetic_cifar10(n_train=60, n_test=40), tmp_path / "tree")
    data = load_data(Config(data_dir=str(tree), subset=20, test_subset=10))
    assert (len(data.train_labels), len(data.test_labels)) == (20, 10)


# subset raises ConfigError (a bad --subset value); it raised DataError until data.py was changed.
def test_subset_larger_than_the_training_set(small_data):
    with pytest.raises(ConfigError, match="--subset"):
        small_data.subset(len(small_data.train_labels) + 1, seed=0)


def test_subset_needing_more_of_a_class_than_it_has():
    data = synthetic_cifar10(n_train=50, n_test=10)
    keep = data.train_labels != 3
    keep[np.flatnonzero(data.train_labels == 3)[0]] = True  # class 3 keeps one image
    lopsided = CifarData(data.train_images[keep], data.train_labels[keep], data.test_images,
                         data.test_labels, data.classes, "lopsided")
    with pytest.raises(ConfigError, match="'cat'"):
        lopsided.subset(30, seed=0)


# --------------------------------------------------------------------------------------------
# Dataset and loaders
# --------------------------------------------------------------------------------------------

@pytest.fixture
def loaders(small_data, small_stats):
    def build(workers: int = 0, batch_size: int = 64, data: CifarData = small_data, seed: int = 0):
        return make_loaders(data, train_transforms(*small_stats), make_test_transforms(*small_stats),
                            Config(batch_size=batch_size, workers=workers, seed=seed), CPU)

    return build


def first_batch(loader, epoch: int):
    loader.sampler.set_epoch(epoch)
    return next(iter(loader))


def all_batches(loader, epoch: int):
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_loader_batches_have_the_right_shapes_and_types(loaders):
    train_loader, test_loader = loaders()
    images, labels = first_batch(train_loader, 0)
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    images, labels = next(iter(test_loader))
    assert images.shape == (50, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


def test_train_epoch_visits_every_image_once(loaders, small_data):
    train_loader, _ = loaders()
    batches = all_batches(train_loader, 2)
    assert [len(labels) for _, labels in batches] == [64, 64, 64, 8]
    labels = torch.cat([labels for _, labels in batches]).numpy()
    assert np.array_equal(np.sort(labels), np.sort(small_data.train_labels))
    assert not np.array_equal(labels, small_data.train_labels)  # shuffled


def test_same_epoch_same_first_batch_other_epoch_different(loaders):
    train_loader, _ = loaders()
    images_a, labels_a = first_batch(train_loader, 3)
    images_b, labels_b = first_batch(train_loader, 3)
    images_c, labels_c = first_batch(train_loader, 4)
    assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)
    assert not torch.equal(images_a, images_c)
    assert not torch.equal(labels_a, labels_c)


def test_resumed_loader_matches_uninterrupted_one(loaders):
    """A fresh loader set to epoch 2 gives what a loader that already ran epochs 0 and 1 gives."""
    running, _ = loaders()
    for epoch in (0, 1):
        all_batches(running, epoch)
    expected = all_batches(running, 2)
    resumed = all_batches(loaders()[0], 2)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(expected, resumed, strict=True))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(expected, resumed, strict=True))


def test_another_seed_draws_another_first_batch(loaders):
    a, labels_a = first_batch(loaders(seed=0)[0], 0)
    b, labels_b = first_batch(loaders(seed=1)[0], 0)
    assert not torch.equal(labels_a, labels_b)  # another order
    assert not torch.equal(a, b)


def test_test_loader_is_in_order_and_only_normalized(loaders, small_data, small_stats):
    _, test_loader = loaders()
    transform = make_test_transforms(*small_stats)
    for epoch in (0, 5):
        test_loader.sampler.set_epoch(epoch)
        images = torch.cat([x for x, _ in test_loader])
        labels = torch.cat([y for _, y in test_loader])
        expected = torch.stack([transform(image=image)["image"] for image in small_data.test_images])
        assert torch.equal(images, expected)
        assert np.array_equal(labels.numpy(), small_data.test_labels)


def test_batches_do_not_depend_on_workers(loaders):
    """With 2 worker processes the batches equal those of the main process (tiny data)."""
    data = synthetic_cifar10(n_train=40, n_test=20, seed=5)
    serial, serial_test = loaders(workers=0, batch_size=8, data=data)
    parallel, parallel_test = loaders(workers=2, batch_size=8, data=data)
    try:
        for epoch in (0, 1):
            expected, got = all_batches(serial, epoch), all_batches(parallel, epoch)
            assert len(expected) == len(got) == 5
            for (xa, ya), (xb, yb) in zip(expected, got, strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(serial_test, parallel_test, strict=True))
    finally:
        del parallel, parallel_test  # shut the persistent workers down


def test_only_the_training_loader_keeps_its_workers_between_passes(loaders):
    """The training loader's workers live through the run; the test loader's start for each evaluation and
    end with it, so they do not sit beside training holding memory on a 2-vCPU Colab machine. Its batches
    are the same on every pass."""
    data = synthetic_cifar10(n_train=40, n_test=20, seed=5)
    train, test = loaders(workers=2, batch_size=8, data=data)
    try:
        passes = []
        for loader in (train, test, test):
            batches = iter(loader)
            passes.append([x for x, _ in batches])
            alive = [worker.is_alive() for worker in batches._workers]
            assert len(alive) == 2 and all(alive) == (loader is train), (loader is train, alive)
        assert all(torch.equal(a, b) for a, b in zip(passes[1], passes[2], strict=True))
    finally:
        del train, test


WORKERS_AT_EXIT = """
import os, signal
import torch
from modular.config import Config
from modular.tools.synthetic import synthetic_cifar10
from modular.device import Runtime
from modular.loaders import make_loaders
from modular.transforms import test_transforms, train_transforms

stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
train, test = make_loaders(synthetic_cifar10(n_train=40, n_test=20), train_transforms(*stats), test_transforms(*stats),
                           Config(batch_size=8, workers=2), Runtime(torch.device("cpu"), None, False))
batches = iter(train)
next(batches)
for worker in batches._workers:          # what `kill -- -PGID` or Ctrl-C does to the workers
    os.kill(worker.pid, signal.SIGTERM)
    os.kill(worker.pid, signal.SIGINT)
print(len(list(batches)) + 1, len(list(train)), flush=True)   # the rest of the epoch, then another
cycle = [train, test, batches]
cycle.append(cycle)                      # alive until the interpreter exits
"""


def test_workers_leave_stop_signals_to_the_main_process_which_shuts_them_down_at_exit():
    """Workers survive SIGTERM and SIGINT (the main process decides), and a loader still alive when
    Python exits (a global, a reference cycle) has its workers shut down: the exit does not hang."""
    import subprocess
    import sys

    from helpers import cli_env

    try:
        done = subprocess.run([sys.executable, "-c", WORKERS_AT_EXIT], env=cli_env(), capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError("the exit hung: the workers were not shut down") from None
    assert done.returncode == 0 and done.stdout.split() == ["5", "5"], done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_dataset_getitem_and_getitems_agree_for_untransformed_keys(small_data, small_stats):
    dataset = CifarDataset(small_data.test_images, small_data.test_labels, make_test_transforms(*small_stats))
    n = len(dataset)
    single = dataset[7]
    batch = dataset.__getitems__([3 * n + 7, 8])
    assert torch.equal(single[0], batch[0][0]) and single[1] == batch[0][1]  # key = epoch * n + index
    assert batch[1][1] == int(small_data.test_labels[8])


def test_flip_of_first_image_in_batch_is_independent_of_its_crop(grid_image, norm, locate_window):
    """Per-batch reseeding must not tie one random choice to another.

    Compose.set_random_seed(s) gives every transform its own generator seeded with the same s,
    so the first draw of RandomCrop (vertical offset) equals the first draw of HorizontalFlip:
    the first image of every batch is flipped exactly when its crop starts in rows 0..4.
    """
    dataset = CifarDataset(np.stack([grid_image] * 8), np.zeros(8, np.int64),
                           train_transforms(*norm, cutout_p=0.0), seed=0)
    found = [locate_window(dataset.__getitems__([epoch * 8, epoch * 8 + 1])[0][0], grid_image, *norm)
             for epoch in range(120)]
    top = [flipped for y, _, flipped in found if y < 4]
    bottom = [flipped for y, _, flipped in found if y > 4]
    assert len(top) > 20 and len(bottom) > 20
    # Independent choices: about half of each group flipped (p < 1e-6 of all or none by chance).
    assert 0 < sum(top) < len(top), "first image of a batch: flip decided by the crop offset"
    assert 0 < sum(bottom) < len(bottom), "first image of a batch: flip decided by the crop offset"


def test_random_module_state_is_not_used_for_augmentation(loaders):
    """Global RNGs (random, numpy, torch) do not reach the pipeline: only seed and epoch matter."""
    train_loader, _ = loaders()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    a, _ = first_batch(train_loader, 0)
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    b, _ = first_batch(train_loader, 0)
    assert torch.equal(a, b)
