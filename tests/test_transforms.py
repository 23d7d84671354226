"""The albumentations pipelines: normalize, reflect pad + crop, flip, one 8x8 cutout hole; channel_stats."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from modular.data import channel_stats
from modular.tools.synthetic import synthetic_cifar10

# aliased: a module-level name test_* would be collected by pytest as a test
from modular.transforms import denormalize, reseed, train_transforms
from modular.transforms import test_transforms as make_test_transforms

N_SAMPLES = 200


def normalized(image: np.ndarray, mean, std) -> np.ndarray:
    """(x / 255 - mean) / std in float64, channels first."""
    return ((image / 255.0 - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)


@pytest.mark.parametrize("cutout_p", [0.0, 1.0])
def test_train_output_is_float32_chw_tensor(grid_image, norm, cutout_p):
    out = train_transforms(*norm, cutout_p=cutout_p, seed=0)(image=grid_image)["image"]
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert out.shape == (3, 32, 32)


def test_test_output_is_float32_chw_tensor(grid_image, norm):
    out = make_test_transforms(*norm)(image=grid_image)["image"]
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32
    assert out.shape == (3, 32, 32)


def test_crop_is_a_window_of_the_reflect_padded_image(grid_image, norm, locate_window):
    """Without cutout, every output is a 32x32 window of np.pad(image, 4, mode="reflect"), maybe flipped.

    The grid image has a unique (R, G) pair per pixel, so the window and the flip are unambiguous;
    constant or symmetric (edge-repeating) padding would not match at the border offsets.
    """
    transform = train_transforms(*norm, cutout_p=0.0, seed=123)
    found = [locate_window(transform(image=grid_image)["image"], grid_image, *norm) for _ in range(N_SAMPLES)]
    assert all(f is not None for f in found), "an output is not a window of the reflect-padded image"
    ys = {y for y, _, _ in found}
    xs = {x for _, x, _ in found}
    assert ys <= set(range(9)) and xs <= set(range(9))  # the crop lies inside the 40x40 padded image
    assert {0, 8} <= ys and {0, 8} <= xs  # the padding is really used, on all four sides
    flips = sum(f for _, _, f in found)
    assert 0.35 * N_SAMPLES <= flips <= 0.65 * N_SAMPLES  # p = 0.5; binomial sd is 7 of 200


def test_crop_offsets_cover_all_positions(grid_image, norm, locate_window):
    transform = train_transforms(*norm, cutout_p=0.0, seed=5)
    found = [locate_window(transform(image=grid_image)["image"], grid_image, *norm) for _ in range(N_SAMPLES)]
    assert {y for y, _, _ in found} == set(range(9))
    assert {x for _, x, _ in found} == set(range(9))


def _zero_masks(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    zeros = out.numpy() == 0
    return zeros.all(axis=0), zeros.any(axis=0)


@pytest.mark.parametrize("size", [8, 4])
def test_cutout_makes_exactly_one_square_hole_of_zeros(grid_image, norm, size):
    # No input pixel normalizes to 0, so every 0 comes from the hole.
    assert not (normalized(grid_image, *norm) == 0).any()
    transform = train_transforms(*norm, cutout_p=1.0, cutout_size=size, seed=3)
    for _ in range(50):
        out = transform(image=grid_image)["image"]
        all_channels, any_channel = _zero_masks(out)
        assert np.array_equal(all_channels, any_channel), "a zero outside the hole, or a hole not on all channels"
        rows, cols = np.nonzero(all_channels)
        assert len(rows) == size * size
        assert rows.max() - rows.min() + 1 == size and cols.max() - cols.min() + 1 == size  # one square


def test_cutout_off_leaves_no_zeros(grid_image, norm):
    transform = train_transforms(*norm, cutout_p=0.0, seed=3)
    for _ in range(50):
        assert not (transform(image=grid_image)["image"] == 0).any()


def test_cutout_hole_is_filled_with_the_dataset_mean(norm):
    """On a white image every pixel but the hole stays white, so the hole is found without assuming
    how it is filled; de-normalized, it must be the dataset mean (a black fill, a random fill or no
    hole at all fail)."""
    white = np.full((32, 32, 3), 255, np.uint8)
    transform = train_transforms(*norm, cutout_p=1.0, seed=4)
    for _ in range(10):
        restored = denormalize(transform(image=white)["image"], *norm)  # H x W x 3 in [0, 1]
        hole = ~np.isclose(restored, 1.0, atol=1e-5).all(axis=-1)
        assert hole.sum() == 64, "not exactly one 8x8 hole"
        assert np.allclose(restored[hole], np.asarray(norm[0]), atol=1e-5)


def test_test_pipeline_only_normalizes(grid_image, norm):
    transform = make_test_transforms(*norm)
    out = transform(image=grid_image)["image"].numpy()
    assert np.allclose(out, normalized(grid_image, *norm), rtol=0, atol=1e-5)
    assert np.array_equal(out, transform(image=grid_image)["image"].numpy())  # no randomness


def test_test_pipeline_on_random_images(norm):
    images = synthetic_cifar10(n_train=10, n_test=10, seed=3).test_images
    transform = make_test_transforms(*norm)
    for image in images:
        assert np.allclose(transform(image=image)["image"].numpy(), normalized(image, *norm), atol=1e-5)


def test_denormalize_inverts_test_pipeline(grid_image, norm):
    out = make_test_transforms(*norm)(image=grid_image)["image"]
    assert np.allclose(denormalize(out, *norm), grid_image / 255.0, atol=1e-6)
    batch = torch.stack([out, out])
    assert denormalize(batch, *norm).shape == (2, 32, 32, 3)


def test_pipelines_are_strict(norm):
    assert train_transforms(*norm).strict
    assert make_test_transforms(*norm).strict


def test_strict_compose_rejects_albumentations_1x_arguments():
    with pytest.warns(UserWarning, match="max_holes"):
        dropout = A.CoarseDropout(max_holes=1, max_height=8, max_width=8)
    with pytest.raises(ValueError, match="max_holes"):
        A.Compose([dropout], strict=True)
    with pytest.warns(UserWarning, match="value"):
        pad = A.PadIfNeeded(min_height=40, min_width=40, value=0)
    with pytest.raises(ValueError, match="value"):
        A.Compose([pad], strict=True)


def test_same_seed_same_outputs(grid_image, norm):
    first = train_transforms(*norm, seed=11)
    second = train_transforms(*norm, seed=11)
    other = train_transforms(*norm, seed=12)
    a = torch.stack([first(image=grid_image)["image"] for _ in range(20)])
    b = torch.stack([second(image=grid_image)["image"] for _ in range(20)])
    c = torch.stack([other(image=grid_image)["image"] for _ in range(20)])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_reseed_makes_flip_and_crop_independent(grid_image, norm, locate_window):
    """``reseed`` gives the steps one shared stream. With albumentations' ``set_random_seed`` every
    step gets its own generator with the same seed, and the first image of a seed is flipped
    exactly when its crop starts near the top (both read the same first draw)."""
    first = [locate_window(train_transforms(*norm, cutout_p=0.0, seed=seed)(image=grid_image)["image"], grid_image, *norm)
             for seed in range(60)]
    near_top = [flipped for y, _, flipped in first if y <= 3]
    lower = [flipped for y, _, flipped in first if y >= 5]
    assert near_top and lower
    assert 0 < sum(near_top) < len(near_top) or 0 < sum(lower) < len(lower), "flip decided by the crop position"


def test_reseed_restarts_the_stream(grid_image, norm):
    transform = train_transforms(*norm)
    reseed(transform, 42)
    a = [transform(image=grid_image)["image"] for _ in range(5)]
    reseed(transform, 42)
    b = [transform(image=grid_image)["image"] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_channel_stats_matches_numpy():
    images = synthetic_cifar10(n_train=60, n_test=10, seed=2).train_images
    mean, std = channel_stats(images)
    pixels = images.reshape(-1, 3) / 255.0
    assert len(mean) == len(std) == 3
    assert all(isinstance(v, float) for v in mean + std)
    assert np.allclose(mean, pixels.mean(axis=0), rtol=0, atol=1e-6)
    assert np.allclose(std, pixels.std(axis=0), rtol=0, atol=1e-6)


def test_channel_stats_constant_and_extreme_images():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[..., 0] = 255
    images[2:, ..., 2] = 255
    mean, std = channel_stats(images)
    assert np.allclose(mean, (1.0, 0.0, 0.5), atol=1e-12)
    assert np.allclose(std, (0.0, 0.0, 0.5), atol=1e-6)


def test_normalized_training_data_has_zero_mean_unit_std():
    images = synthetic_cifar10(n_train=100, n_test=10, seed=4).train_images
    mean, std = channel_stats(images)
    transform = make_test_transforms(mean, std)
    out = np.stack([transform(image=image)["image"].numpy() for image in images])
    assert np.allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    assert np.allclose(out.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
