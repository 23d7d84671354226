"""Every figure builds from small fake data and saves to a non-empty PNG (headless, Agg)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from modular import galleries, plots
from modular.config import CIFAR10_CLASSES
from modular.tools.figure_files import save_figure

CLASSES = list(CIFAR10_CLASSES)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _save(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    path = save_figure(fig, tmp_path / "figures" / f"{name}.png")
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def _normalized(rng, n):
    raw = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    chw = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255.0
    return (chw - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def test_samples_raw_uint8(rng, tmp_path):
    images = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=20)
    fig = galleries.plot_samples(images, labels, CLASSES, "raw training images")
    assert sum(ax.has_data() for ax in fig.axes) == 16
    _save(fig, tmp_path, "samples_raw")


def test_samples_normalized_tensor(rng, tmp_path):
    images = _normalized(rng, 16)
    labels = torch.from_numpy(rng.integers(0, 10, size=16))
    fig = galleries.plot_samples(images, labels, CLASSES, "augmented", mean=MEAN, std=STD, n=8)
    assert [ax.get_title() for ax in fig.axes if ax.has_data()] == [CLASSES[i] for i in labels[:8].tolist()]
    _save(fig, tmp_path, "samples_normalized")


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_history(tmp_path):
    """Each curve holds its own column, and the star sits on the best test epoch (5), not the last."""
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 50.0 + 7 * e, "test_loss": 2.1 / e, "test_ce": 1.5 / e,
                "test_acc": 48.0 + 7 * e - (9.0 if e == 6 else 0.0), "lr": 0.1, "seconds": 10.0} for e in range(1, 7)]
    fig = plots.plot_history(history)
    loss, acc = (_lines(ax) for ax in fig.axes[:2])
    epochs = list(range(1, 7))
    column = {key: [row[key] for row in history] for key in history[0]}
    assert loss == {"train (label-smoothed)": (epochs, column["train_loss"]),
                    "test (label-smoothed)": (epochs, column["test_loss"]),
                    "test, plain cross-entropy": (epochs, column["test_ce"])}
    assert acc["train"] == (epochs, column["train_acc"]) and acc["test"] == (epochs, column["test_acc"])
    assert acc["best test 83.00% (epoch 5)"] == ([5], [83.0])
    unmeasured = plots.plot_history([{**row, "test_ce": None} for row in history])  # null: not measured, not drawn
    assert all(np.isnan(_lines(unmeasured.axes[0])["test, plain cross-entropy"][1]))
    _save(fig, tmp_path, "history")


def test_lr_finder(rng, tmp_path):
    lrs = np.geomspace(1e-4, 10, 100)
    losses = 2.3 - 0.8 * np.exp(-((np.log10(lrs) + 0.5) ** 2)) + np.where(lrs > 1, (lrs - 1) ** 2, 0)
    raw = losses + rng.normal(0, 0.05, losses.size)
    fig = plots.plot_lr_finder(lrs.tolist(), losses.tolist(), lr_max=0.34, lr_min=0.0034, rule="the rule",
                               raw_losses=raw.tolist(), diverged_lr=1.5, steepest_lr=0.05)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert {"LRMAX = 0.34", "LRMIN = 0.0034", "diverged at 1.5", "steepest descent\n(torch-lr-finder) 0.05"} <= set(texts)
    labels = ax.get_legend_handles_labels()[1]
    assert {"raw loss (per batch)", "smoothed loss", "diverged: ignored by the rule"} <= set(labels)
    assert "the rule" in [t.get_text() for t in fig.texts]
    _save(fig, tmp_path, "lr_finder")


def test_lr_schedule(tmp_path):
    steps_per_epoch, epochs, peak_epoch = 10, 6, 2
    up = np.linspace(0.004, 0.4, peak_epoch * steps_per_epoch)
    down = np.linspace(0.4, 0.0, (epochs - peak_epoch) * steps_per_epoch + 1)[1:]
    lrs = np.concatenate([up, down]).tolist()
    fig = plots.plot_lr_schedule(lrs, steps_per_epoch, peak_epoch=peak_epoch)
    ax = fig.axes[0]
    curve, peak = ax.get_lines()[:2]
    # step i at (i + 1) / steps: the last step of epoch e sits at x = e, so the peak is drawn at x = 2
    assert np.allclose(curve.get_xdata(), np.arange(1, 61) / 10) and np.allclose(curve.get_ydata(), lrs)
    assert (peak.get_xdata()[0], peak.get_ydata()[0]) == pytest.approx((2.0, 0.4))
    assert [t.get_text() for t in ax.texts] == ["peak LR 0.4\nat epoch 2"]
    _save(fig, tmp_path, "lr_schedule")
    unnamed = plots.plot_lr_schedule(lrs, steps_per_epoch)  # no peak epoch given: the step is named
    assert [t.get_text() for t in unnamed.axes[0].texts] == ["peak LR 0.4\nat epoch 2 (step 20)"]
    _save(unnamed, tmp_path, "lr_schedule_no_peak")


def test_misclassified(rng, tmp_path):
    images = _normalized(rng, 12)
    predicted = rng.integers(0, 10, size=12)
    actual = (predicted + 1) % 10
    fig = galleries.plot_misclassified(images, predicted, actual, CLASSES, mean=MEAN, std=STD)
    shown = [ax for ax in fig.axes if ax.has_data()]
    assert len(shown) == 12 and "(12 shown)" in fig.get_suptitle()
    assert [ax.get_title() for ax in shown] == [f"pred: {CLASSES[p]}\ntrue: {CLASSES[a]}" for p, a in zip(predicted, actual)]
    # each cell shows its own image, de-normalized back to [0, 1]
    restored = images.permute(0, 2, 3, 1).numpy() * np.asarray(STD) + np.asarray(MEAN)
    for ax, image in zip(shown, restored):
        assert np.allclose(ax.get_images()[0].get_array(), np.clip(image, 0, 1), atol=1e-5)
    _save(fig, tmp_path, "misclassified")


def test_misclassified_titles_are_pred_then_true(rng):
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    fig = galleries.plot_misclassified(images, [3, 0, 9], [5, 1, 8], CLASSES)
    titles = [ax.get_title() for ax in fig.axes if ax.has_data()]
    assert titles == ["pred: cat\ntrue: dog", "pred: airplane\ntrue: automobile", "pred: truck\ntrue: ship"]


def test_confusion_matrix(rng, tmp_path):
    matrix = rng.integers(0, 30, size=(10, 10)) + np.diag(rng.integers(800, 950, size=10))
    fig = plots.plot_confusion_matrix(matrix, CLASSES)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert len(ax.texts) == 100
    _save(fig, tmp_path, "confusion_matrix")


@pytest.mark.parametrize("as_dict", [True, False])
def test_per_class_accuracy(rng, tmp_path, as_dict):
    values = rng.uniform(80, 99, size=10)
    acc = dict(reversed(list(zip(CLASSES, values)))) if as_dict else values.tolist()  # a mapping in another order
    fig = plots.plot_per_class_accuracy(acc, CLASSES)
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx(values.tolist())  # bar i is class i, whatever the mapping's order
    assert [label.get_text() for label in ax.get_yticklabels()] == list(CLASSES)
    assert [t.get_text() for t in ax.texts] == [f"{v:.1f}%" for v in values]
    _save(fig, tmp_path, f"per_class_{as_dict}")


def test_save_figure_closes_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    _save(fig, tmp_path, "pyplot_made")
    assert not plt.fignum_exists(fig.number)


def test_figures_stay_out_of_pyplot_and_render_in_notebooks():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plots.plot_per_class_accuracy([90.0] * 10, CLASSES)
    assert plt.get_fignums() == before  # nothing for the inline backend to show a second time
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # what IPython displays without %matplotlib inline


def test_a_figure_in_a_notebook_is_drawn_at_the_inline_dpi_in_256_colours():
    """What a saved notebook keeps of every figure: about 640 px across, a palette PNG (the notebook of
    issue 26 weighed 1.49 MB, one Grad-CAM figure 776 KB of it)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(plots.plot_per_class_accuracy([90.0] * 10, CLASSES)._repr_png_()))
    assert image.mode == "P" and image.getcolors(256) is not None
    assert 0.9 * plots.WIDTH * plots.INLINE_DPI < image.width < 1.1 * plots.WIDTH * plots.INLINE_DPI
