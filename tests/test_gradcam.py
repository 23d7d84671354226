"""Grad-CAM on Layer3's residual output: maps of the right shape and range, the library's maps before its
per-map scaling, the two maps of an image on one scale, each drawn in its own column, and, for a network
trained on images whose class evidence sits in one quadrant, maps that point at that quadrant."""

from __future__ import annotations

import helpers  # noqa: F401  (environment and sys.path)
import numpy as np
import pytest
import torch

from custom_resnet import CustomResNet
from modular.tools.gradcam import gradcam_maps, gradcam_pair, target_layer
from modular.tools.inference import plot_gradcam

QUADRANTS = [(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(16, 32)),
             (slice(16, 32), slice(0, 16)), (slice(16, 32), slice(16, 32))]


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise, plus for class q a bright 8x8 square somewhere inside quadrant q."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = 0.3 * torch.randn(n, 3, 32, 32, generator=g)
    for i, q in enumerate(labels.tolist()):
        rows, cols = QUADRANTS[q]
        top = rows.start + int(torch.randint(0, 9, (1,), generator=g))
        left = cols.start + int(torch.randint(0, 9, (1,), generator=g))
        images[i, :, top:top + 8, left:left + 8] += 2.0
    return images, labels


@pytest.fixture(scope="module")
def quadrant_model():
    torch.manual_seed(0)
    model = CustomResNet(num_classes=4, logit_scale=0.125)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    images, labels = quadrant_images(256, seed=1)
    model.train()
    for step in range(40):
        batch = slice((step % 8) * 32, (step % 8 + 1) * 32)
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_images, test_labels = quadrant_images(40, seed=2)
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    assert accuracy >= 0.9, f"the quadrant task was not learnt ({accuracy:.2f})"
    return model, test_images, test_labels


def test_the_target_is_layer3s_residual_output(quadrant_model):
    model, images, _ = quadrant_model
    seen = []
    handle = target_layer(model).register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    with torch.no_grad():
        model(images[:2])
    handle.remove()
    (x, out), = seen
    assert out.shape == (2, 512, 4, 4)
    with torch.no_grad():
        assert torch.allclose(out, x + torch.nn.Sequential(*model.layer3[1])(x.clone()))  # X + R2(X)


def test_maps_are_n_by_32_by_32_and_the_librarys_before_its_per_map_scaling(quadrant_model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, images, labels = quadrant_model
    maps = gradcam_maps(model, images[:6], labels[:6].tolist())
    assert maps.shape == (6, 32, 32) and maps.dtype == np.float32 and maps.min() >= 0.0
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        library = cam(input_tensor=images[:6], targets=[ClassifierOutputTarget(int(c)) for c in labels[:6]])
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    assert np.allclose((maps - low) / (high - low), library, atol=1e-4)  # the library scales each map by itself
    model.train()
    gradcam_maps(model, images[:2], [0, 1])
    assert model.training  # left in the mode it came in
    model.eval()


def test_the_two_maps_of_an_image_share_one_scale(quadrant_model):
    """Normalised together: the stronger map peaks at 1, the weaker keeps its smaller strength (each map
    scaled by itself would show both at full strength, so the columns could not be compared)."""
    model, images, labels = quadrant_model
    other = ((labels + 1) % 4).tolist()
    true_maps, other_maps = gradcam_pair(model, images[:8], labels[:8].tolist(), other[:8])
    raw_true, raw_other = gradcam_maps(model, images[:8], labels[:8].tolist()), gradcam_maps(model, images[:8], other[:8])
    peak = np.maximum(raw_true.max(axis=(1, 2)), raw_other.max(axis=(1, 2)))[:, None, None]
    assert np.allclose(true_maps, raw_true / peak, atol=1e-6) and np.allclose(other_maps, raw_other / peak, atol=1e-6)
    assert np.allclose(np.maximum(true_maps.max(axis=(1, 2)), other_maps.max(axis=(1, 2))), 1.0)
    assert (other_maps.max(axis=(1, 2)) < 0.9).sum() >= 4, other_maps.max(axis=(1, 2)).round(2)  # weaker evidence
    assert true_maps.min() >= 0.0 and other_maps.min() >= 0.0


def quadrant_share(maps: np.ndarray, labels) -> np.ndarray:
    """Per map: the fraction of its mass inside the quadrant of the image's class."""
    shares = []
    for heat, q in zip(maps, labels):
        rows, cols = QUADRANTS[int(q)]
        shares.append(heat[rows, cols].sum() / max(heat.sum(), 1e-9))
    return np.asarray(shares)


def test_the_map_for_the_true_class_lies_in_its_quadrant(quadrant_model):
    model, images, labels = quadrant_model
    share = quadrant_share(gradcam_maps(model, images, labels.tolist()), labels)
    assert np.median(share) > 0.4, share.round(2)   # a uniform map gives 0.25 (measured: 0.47)


def test_the_map_for_another_class_does_not(quadrant_model):
    """The check above fails when the wrong class is explained: the next quadrant's class here."""
    model, images, labels = quadrant_model
    share = quadrant_share(gradcam_maps(model, images, ((labels + 1) % 4).tolist()), labels)
    assert np.median(share) < 0.25, share.round(2)  # (measured: 0.05)


def test_the_figure_shows_image_predicted_and_true_maps_each_in_its_column(quadrant_model):
    model, images, labels = quadrant_model
    predicted, actual = [1, 2, 3], [0, 1, 2]
    maps_predicted, maps_actual = gradcam_pair(model, images[:3], predicted, actual)
    assert not np.allclose(maps_predicted, maps_actual)
    raw = (np.clip(images[:3].permute(0, 2, 3, 1).numpy() * 0.25 + 0.5, 0, 1) * 255).astype(np.uint8)
    fig = plot_gradcam(raw, maps_predicted, maps_actual, predicted, actual, ["a", "b", "c", "d"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:3] == ["image 1", "pred: b", "true: a"] and len(titles) == 9
    assert "share one colour scale" in fig.get_suptitle()
    for i in range(3):
        row, col = divmod(i, 2)
        image_ax, pred_ax, true_ax = fig.axes[row * 6 + 3 * col: row * 6 + 3 * col + 3]
        assert image_ax.get_title() == f"image {i + 1}"
        for ax in (image_ax, pred_ax, true_ax):
            assert np.array_equal(ax.get_images()[0].get_array(), raw[i])  # the image, under the map
        assert np.array_equal(pred_ax.get_images()[1].get_array(), maps_predicted[i])
        assert np.array_equal(true_ax.get_images()[1].get_array(), maps_actual[i])
        assert pred_ax.get_images()[1].get_clim() == true_ax.get_images()[1].get_clim() == (0.0, 1.0)
