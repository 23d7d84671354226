"""The command line's arguments: every subcommand of ``python -m modular``, its flags and their
defaults (read from Config, so the help and the recipe cannot disagree). modular/tools/cli.py runs them."""

from __future__ import annotations

import argparse
from pathlib import Path

from modular.config import DEVICES, LR_RULES, OPTIMIZERS, PRECISIONS, Config
from modular.tools import SHIPPED_WEIGHTS

DEFAULT_WORKERS = "0 on the CPU; on a GPU, the usable CPU cores less one, at least 1"  # loaders.default_workers in words


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must lie in 1..65535 (got {value})")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


class ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help: argparse's value appended, except where the help already says
    "(default: ...)" in words (an option whose default is None, i.e. decided at run time) and for switches."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or action.default is None or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="local CIFAR-10: a folder with cifar-10-batches-py/ or cifar-10-python.tar.gz, "
                   "an image tree train/<class>/*, test/<class>/*, or a .tar.gz of one (default: download "
                   "with torchvision into ./data)")
    p.add_argument("--subset", type=_positive_int, help="train on a class-balanced sample of N images. The LR range "
                   "test does not shrink with it (--lr-find-iters batches of --batch-size, "
                   f"{Config.lr_find_iters * Config.batch_size:,} images by default, most of a small run's time): add "
                   "--max-lr to skip it (default: all training images)")
    p.add_argument("--test-subset", type=_positive_int, help="evaluate on a class-balanced sample of N test images "
                   "(after every epoch and at the end): its evaluation takes N/10,000 of the time, and its accuracy "
                   "is noisier: near 90%%, a standard error of 30/sqrt(N) points, 1 point for N=1,000 (default: all test images)")
    p.add_argument("--seed", type=int, default=Config.seed, help="seeds the model's initial weights, the sampling "
                   "order and the augmentations")
    p.add_argument("--val-split", type=_positive_int, help="hold out N class-balanced training images (the same "
                   "ones for every run and seed) and evaluate on them instead of the test set: compare variants "
                   "this way, never on the test set (default: train on all, evaluate on the test set)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=Config.batch_size, help="images per step")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=Config.optimizer,
                   help="sgd: Nesterov momentum (Page's recipe); adam: the original submission's")
    p.add_argument("--label-smoothing", type=float, default=Config.label_smoothing,
                   help="cross-entropy label smoothing, in [0, 1)")
    p.add_argument("--logit-scale", type=float, default=Config.logit_scale,
                   help="the model's logits are multiplied by this, > 0; 1 gives raw logits")
    levers = p.add_argument_group("levers", "ways to train the same network better (modular/recipe.py), off by default")
    levers.add_argument("--whiten-init", action="store_true", help="the prep conv's filters start from the "
                        "eigenvectors of the training images' 3x3 patch covariance (still trained)")
    levers.add_argument("--dirac-init", action="store_true", help="the convolutions inside the residual blocks start "
                        "as the identity")
    levers.add_argument("--frozen-bn-scale", action="store_true", help="every BatchNorm scale fixed at 1, not trained")
    levers.add_argument("--bn-bias-lr-factor", type=_positive_float, default=Config.bn_bias_lr_factor,
                        help="BatchNorm biases at this x the LR, with weight decay / this (SGD only; Page and "
                        "airbench: 64)")
    levers.add_argument("--ema-decay", type=float, help="evaluate and ship an exponential moving average of the "
                        "weights with this decay per training step, in (0, 1) (default: none; Page: 0.99)")
    levers.add_argument("--ema-every", type=_positive_int, default=Config.ema_every,
                        help="steps between updates of the moving average (each decays it by the decay ** this)")
    levers.add_argument("--multiview-tta", action="store_true", help="also report TTA over flips and one-pixel "
                        "shifts at the end (never the headline)")
    p.add_argument("--lr-rule", choices=LR_RULES, default=Config.lr_rule,
                   help="how LRMAX is read off the range test: 'minimum', the smoothed loss's minimum before "
                   "divergence (or, where the loss lies flat over more than 5x in LR below it, the steepest descent "
                   "before that valley); "
                   "'steepest', torch-lr-finder's steepest-descent suggestion (the original's)")
    p.add_argument("--device", choices=DEVICES, default=Config.device, help="auto: CUDA, then MPS, then the CPU")
    p.add_argument("--precision", choices=PRECISIONS, default=Config.precision,
                   help="auto: bf16/fp16 autocast where the hardware supports it; fp32: force fp32")
    p.add_argument("--workers", type=int, help=f"DataLoader workers (default: {DEFAULT_WORKERS})")
    p.add_argument("--output-dir", default=Config.output_dir, help="the run's folder: checkpoint, record, plots")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a training checkpoint (runs/.../checkpoint.pt)")
    source.add_argument("--weights", help="a weights file (results/custom_resnet_cifar10.pt, or one export-weights wrote)")
    p.add_argument("--data-dir", help="CIFAR-10 to evaluate on, as for train (default: the data a checkpoint was "
                   "trained on; for --weights, torchvision's download)")


def _add_range_test_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr-find-end", type=_positive_float, default=Config.lr_find_end,
                   help=f"the range test's last LR (it starts at {Config.lr_find_start:g})")
    p.add_argument("--lr-find-iters", type=int, default=Config.lr_find_iters,
                   help="steps (batches) of the range test, at least 20")


GRADCAM_PNG = "gradcam_misclassified.png"


def default_output(explicit: str | None, checkpoint: str | None, weights: str | None, name: str) -> Path:
    """Where a command writes ``name`` unless told: the run's own folder (the checkpoint's), or for a
    weights file runs/<its name>/ (git-ignored); never results/, images/ or README.md."""
    if explicit:
        return Path(explicit)
    if checkpoint:
        return Path(checkpoint).parent / name
    return Path("runs") / Path(weights).stem / name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modular", description="Custom ResNet on CIFAR-10 in 24 epochs")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="LR range test, OneCycle training, evaluation, plots, run record")
    _add_data_flags(train)
    _add_run_flags(train)
    train.add_argument("--epochs", type=int, default=Config.epochs, help="epochs of training")
    train.add_argument("--peak-epoch", type=int, help="epoch whose last step has the peak LR (default: 5/24 of the run)")
    train.add_argument("--max-lr", type=float, help="OneCycle's peak LR; skips the LR range test (default: found by "
                       "the range test)")
    _add_range_test_flags(train)
    train.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt (if there is "
                       "none, a new run starts, and says so)")
    train.add_argument("--record-so-far", action="store_true", help="train no further: write run.json and the plots "
                       "for the epochs the checkpoint holds (the last one evaluated); --resume continues later")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")

    find = commands.add_parser("lr-find", help="the LR range test alone: plot and LRMAX/LRMIN")
    _add_data_flags(find)
    _add_run_flags(find)
    _add_range_test_flags(find)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint or a weights file on the test set")
    _add_model_flags(evaluate)
    evaluate.add_argument("--device", choices=DEVICES, default=Config.device, help="auto: CUDA, then MPS, then the CPU")
    evaluate.add_argument("--record", help="with --weights: note the result in the run record the weights were "
                          "exported from, e.g. results/headline.json (default: noted nowhere)")

    predict = commands.add_parser("predict", help="top-3 classes of image files (any size: turned upright per EXIF, "
                                  "centre-cropped to a square, resized to 32x32)")
    predict.add_argument("images", nargs="+", help="image files Pillow reads (PNG, JPEG, ...)")
    model = predict.add_mutually_exclusive_group()
    model.add_argument("--weights", help="a weights file (default: results/custom_resnet_cifar10.pt, the shipped weights)")
    model.add_argument("--checkpoint", help="a training checkpoint of your own run, runs/.../checkpoint.pt (default: "
                       "none; --weights' file is used)")

    gradcam = commands.add_parser("gradcam", help="Grad-CAM figure of misclassified test images")
    _add_model_flags(gradcam)
    gradcam.add_argument("--record", help="a run record (run.json): show its misclassified images, the ones of "
                         "its misclassified.png (default: those the model gets wrong now)")
    gradcam.add_argument("--output", help=f"the PNG to write; images/ only when named here (default: {GRADCAM_PNG} in "
                         "the checkpoint's folder; with --weights W, in runs/<W's name without .pt>/)")

    export = commands.add_parser("export-weights", help="fp16 weights file from a run's final checkpoint")
    export.add_argument("--checkpoint", required=True, help="the run's checkpoint (<output-dir>/checkpoint.pt)")
    export.add_argument("--output", help=f"the weights file to write; the shipped {SHIPPED_WEIGHTS} only when named "
                        f"here (default: {Path(SHIPPED_WEIGHTS).name} in the checkpoint's folder)")
    export.add_argument("--record", help="the run's own record (its run.json) to note the file's sha256 in; refused "
                        "for a checkpoint of another run (default: noted nowhere)")

    samples = commands.add_parser("app-samples", help="the app's committed sample: one example per class and "
                                  "misclassified images from the test set a run record names (at most 200 in all)")
    samples.add_argument("--data-dir", required=True, help="the test set the record ran on (the official image tree)")
    samples.add_argument("--record", default="results/headline.json", help="the run record of the weights")
    samples.add_argument("--weights", help="a weights file (default: results/custom_resnet_cifar10.pt, the shipped weights)")
    samples.add_argument("--output", default="results/app-samples")
    samples.add_argument("--misclassified", type=_positive_int, default=190, help="misclassified images to keep")
    samples.add_argument("--force", action="store_true", help="replace an existing sample")

    app = commands.add_parser("app", help="the trained network in the browser (Gradio): top-k classes of a picture, "
                              "Grad-CAM, misclassified test images; offline, no training")
    app.add_argument("--weights", help="a weights file (default: results/custom_resnet_cifar10.pt, the shipped weights)")
    app.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default): this computer only; 0.0.0.0: every "
                     "network interface")
    app.add_argument("--port", type=_port, default=7860, help="the port to serve on")
    app.add_argument("--records", nargs="+", help="run records, the weights' own first, then the other seeds' "
                     "(default: results/headline.json results/official-seed1.json results/official-seed2.json)")
    app.add_argument("--samples", help="the sample folder (default: results/app-samples)")

    latency = commands.add_parser("app-latency", help="the app's response time with Grad-CAM through gradio_client "
                                  "(run it on an otherwise idle machine)")
    latency.add_argument("--calls", type=_positive_int, default=50, help="timed calls per picture, after one untimed")
    latency.add_argument("--output", help="the record to write; the README's figure reads results/app-latency.json, "
                         "written only when named here (default: runs/app-latency.json)")

    stats = commands.add_parser("stats", help="image counts, class counts, channel mean and std")
    stats.add_argument("--data-dir", help="as for train (default: download with torchvision into ./data)")

    bench = commands.add_parser("bench", help="side-by-side throughput benchmark")
    bench.add_argument("--output-dir", default="runs/bench", help="where bench-<device>.json goes; the README's "
                       "Performance table reads results/, so pass --output-dir results to replace its record")
    bench.add_argument("--batch-size", type=_positive_int, default=Config.batch_size, help="images per step")
    bench.add_argument("--device", choices=DEVICES, default=Config.device, help="auto: CUDA, then MPS, then the CPU")
    bench.add_argument("--repeats", type=_positive_int, default=5, help="interleaved repeats; medians are reported")
    bench.add_argument("--min-seconds", type=_positive_float, default=1.0, help="each timed sample runs at least this "
                       "long: as many steps (or images) as that takes on this device")
    bench.add_argument("--compile", action="store_true", help="also measure torch.compile")

    report = commands.add_parser("report", help="README tables from run or benchmark records")
    report.add_argument("records", nargs="+", help="one run record (results/headline.json: the Results table), "
                        "several of one configuration (one per seed: the Seeds table), benchmark records "
                        "(results/bench-cpu.json: the Performance table)")
    report.add_argument("--ablation", action="append", default=[], metavar="RECORD",
                        help="a variant's run record that changes one thing (optimizer, LR rule, label smoothing, "
                        "logit scale, LRMAX set by --max-lr): with the baseline seeds as RECORDS, writes the Ablations table "
                        "(repeatable; default: none)")
    report.add_argument("--readme", help="write the tables into this file's marked sections, e.g. README.md "
                        "(default: print them, write nothing)")

    seeds = commands.add_parser("lr-seeds", help="several seeds' LR range tests: each one's picks, their spread, one figure")
    seeds.add_argument("records", nargs="+", help="lr_find.json files (lr-find --seed N) and/or run records whose range "
                       "test is under lr_find (results/headline.json), of one configuration")
    seeds.add_argument("--output", default="runs/lr-seeds/lr-find-seeds.json",
                       help="the gathered record, e.g. results/lr-find-seeds.json")
    seeds.add_argument("--figure", default="runs/lr-seeds/lr_find_seeds.png", help="the figure, e.g. images/lr_find_seeds.png")
    parser.formatter_class = ShowDefaults
    for sub in commands.choices.values():  # configuration errors print the subcommand's usage
        sub.set_defaults(command_parser=sub)
        sub.formatter_class = ShowDefaults
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """A validated Config from the flags that exist on this subcommand."""
    fields = {name: getattr(args, name) for name in Config.__dataclass_fields__ if getattr(args, name, None) is not None}
    return Config(**fields).validate()
