"""Command line: ``python -m modular {train,lr-find,evaluate,predict,gradcam,export-weights,stats,bench,report,lr-seeds}``.

Flags follow torchvision's reference scripts. Known failures end in one line on stderr:
exit 2 for bad arguments or configuration, 1 for data, checkpoint or training problems,
130 for Ctrl-C and 143 for SIGTERM (both after saying how to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
from pathlib import Path

from modular.config import DEFAULT_WORKERS, DEVICES, LR_RULES, OPTIMIZERS, PRECISIONS, Config, ConfigError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="local CIFAR-10: a folder with cifar-10-batches-py/ or cifar-10-python.tar.gz, "
                   "an image tree train/<class>/*, test/<class>/*, or a .tar.gz of one (default: download "
                   "with torchvision into ./data)")
    p.add_argument("--subset", type=_positive_int, help="train on a class-balanced sample of N images (quick runs)")
    p.add_argument("--seed", type=int, default=Config.seed)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=Config.batch_size)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=Config.optimizer)
    p.add_argument("--label-smoothing", type=float, default=Config.label_smoothing,
                   help="cross-entropy label smoothing, in [0, 1) (default: %(default)s)")
    p.add_argument("--logit-scale", type=float, default=Config.logit_scale,
                   help="the model's logits are multiplied by this, > 0; 1 gives raw logits (default: %(default)s)")
    p.add_argument("--lr-rule", choices=LR_RULES, default=Config.lr_rule,
                   help="how LRMAX is read off the range test: 'minimum', the smoothed loss's minimum before "
                   "divergence; 'steepest', torch-lr-finder's steepest-descent suggestion (the original's) "
                   "(default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default=Config.device)
    p.add_argument("--precision", choices=PRECISIONS, default=Config.precision,
                   help="auto: bf16/fp16 autocast where the hardware supports it; fp32: force fp32")
    p.add_argument("--workers", type=int, help=f"DataLoader workers (default: {DEFAULT_WORKERS})")
    p.add_argument("--output-dir", default=Config.output_dir)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a training checkpoint (runs/.../checkpoint.pt)")
    source.add_argument("--weights", help="a weights file (results/custom_resnet_cifar10.pt)")
    p.add_argument("--data-dir", help="default: the data a checkpoint was trained on; for --weights, "
                   "torchvision's download unless given")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modular", description="Custom ResNet on CIFAR-10 in 24 epochs")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="LR range test, OneCycle training, evaluation, plots, run record")
    _add_data_flags(train)
    _add_run_flags(train)
    train.add_argument("--epochs", type=int, default=Config.epochs)
    train.add_argument("--peak-epoch", type=int, help="epoch whose last step has the peak LR (default: 5/24 of the run)")
    train.add_argument("--max-lr", type=float, help="OneCycle's peak LR; skips the LR range test")
    train.add_argument("--lr-find-end", type=_positive_float, default=Config.lr_find_end)
    train.add_argument("--lr-find-iters", type=int, default=Config.lr_find_iters)
    train.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")

    find = commands.add_parser("lr-find", help="the LR range test alone: plot and LRMAX/LRMIN")
    _add_data_flags(find)
    _add_run_flags(find)
    find.add_argument("--lr-find-end", type=_positive_float, default=Config.lr_find_end)
    find.add_argument("--lr-find-iters", type=int, default=Config.lr_find_iters)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint or a weights file on the test set")
    _add_model_flags(evaluate)
    evaluate.add_argument("--device", choices=DEVICES, default=Config.device)
    evaluate.add_argument("--record", help="with --weights: note the result in this run record (results/headline.json)")

    predict = commands.add_parser("predict", help="top-3 classes of image files (any size, resized to 32x32)")
    predict.add_argument("images", nargs="+", help="image files Pillow reads (PNG, JPEG, ...)")
    predict.add_argument("--weights", help="default: results/custom_resnet_cifar10.pt, the shipped weights")

    gradcam = commands.add_parser("gradcam", help="Grad-CAM figure of misclassified test images")
    _add_model_flags(gradcam)
    gradcam.add_argument("--record", help="a run record (run.json): show its misclassified images, the ones of "
                         "its misclassified.png (default: those the model gets wrong now)")
    gradcam.add_argument("--output", default="images/gradcam_misclassified.png")

    export = commands.add_parser("export-weights", help="fp16 weights file from a run's final checkpoint")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--output", default="results/custom_resnet_cifar10.pt")
    export.add_argument("--record", help="the run's record (run.json) to note the file's sha256 in")

    stats = commands.add_parser("stats", help="image counts, class counts, channel mean and std")
    stats.add_argument("--data-dir")

    bench = commands.add_parser("bench", help="side-by-side throughput benchmark")
    bench.add_argument("--output-dir", default="results")
    bench.add_argument("--batch-size", type=_positive_int, default=Config.batch_size)
    bench.add_argument("--device", choices=DEVICES, default=Config.device)
    bench.add_argument("--repeats", type=_positive_int, default=5)
    bench.add_argument("--compile", action="store_true", help="also measure torch.compile")

    report = commands.add_parser("report", help="write README tables from run or benchmark records")
    report.add_argument("records", nargs="+", help="one run record (results/headline.json: the Results table), "
                        "several of one configuration (one per seed: the Seeds table), benchmark records "
                        "(results/bench-cpu.json: the Performance table)")
    report.add_argument("--readme", default="README.md")

    seeds = commands.add_parser("lr-seeds", help="several seeds' LR range tests: each one's picks, their spread, one figure")
    seeds.add_argument("records", nargs="+", help="lr_find.json files (lr-find --seed N) and/or run records whose range "
                       "test is under lr_find (results/headline.json), of one configuration")
    seeds.add_argument("--output", default="results/lr-find-seeds.json")
    seeds.add_argument("--figure", default="images/lr_find_seeds.png")
    for sub in commands.choices.values():  # configuration errors print the subcommand's usage
        sub.set_defaults(command_parser=sub)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """A validated Config from the flags that exist on this subcommand."""
    fields = {name: getattr(args, name) for name in Config.__dataclass_fields__ if getattr(args, name, None) is not None}
    return Config(**fields).validate()


def resume_hint(argv: list[str]) -> str:
    """The command that continues a run started with ``argv`` (the arguments after ``python -m modular``)."""
    return "python -m modular " + " ".join(shlex.quote(a) for a in argv if a != "--resume") + " --resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, a job scheduler), handled like Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While training: SIGTERM raises Terminated in the main thread, so the run stops between two
    statements like Ctrl-C (the checkpoint is written atomically: the last one stays whole)."""
    def interrupt(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_train(args, cfg: Config, argv: list[str]) -> int:
    from modular.pipeline import checkpoint_path, run

    try:
        with sigterm_as_interrupt():
            run(cfg, resume=args.resume)
    except KeyboardInterrupt as stop:
        path = checkpoint_path(cfg)
        saved = f"the last finished epoch is saved in {path}" if path.exists() else "no epoch had finished"
        print(f"\n{'terminated' if isinstance(stop, Terminated) else 'interrupted'}: {saved}; "
              f"resume with: {resume_hint(argv)}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    return 0


def cmd_lr_find(args, cfg: Config) -> int:
    import time

    from modular import plots
    from modular.jsonio import write_record
    from modular.pipeline import lr_range_test, prepare_output_dir
    from modular.prepare import new_model, prepare
    from modular.record import build_lr_find_record

    out = prepare_output_dir(cfg.output_dir)
    prepared = prepare(cfg)
    print(f"data: {prepared.data.source}; device: {prepared.runtime.describe()}; LR range test: {cfg.lr_find_iters} "
          f"steps from {cfg.lr_find_start:g} to {cfg.lr_find_end:g}", flush=True)
    started = time.perf_counter()
    found = lr_range_test(prepared, new_model(cfg))
    record = build_lr_find_record(prepared, found, time.perf_counter() - started)
    write_record(out / "lr_find.json", record)
    plot = plots.save_figure(plots.plot_lr_finder(**found.to_dict()), out / "lr_range_test.png")
    steepest = "none" if found.steepest_lr is None else f"{found.steepest_lr:.3g}"
    diverged = "never diverged" if found.diverged_lr is None else f"diverged at LR {found.diverged_lr:.3g}"
    print(f"LRMAX {found.lr_max:.4g}  LRMIN {found.lr_min:.4g}; {diverged}; "
          f"torch-lr-finder's steepest-descent suggestion {steepest}; plot: {plot}\nrule: {found.rule}")
    return 0


def cmd_evaluate(args) -> int:
    from modular.evaluate import full_evaluation
    from modular.inference import load_for_evaluation

    loaded = load_for_evaluation(args.checkpoint, args.weights, args.data_dir, args.device)
    result = full_evaluation(loaded.model, loaded.prepared.test_loader, loaded.prepared.runtime, loaded.prepared.data.classes,
                             loaded.criterion)
    print(loaded.description)
    print(f"test accuracy {result['test_acc']:.2f}%  loss {result['test_loss']:.4f}  cross-entropy {result['test_ce']:.4f}  "
          f"flip TTA {result['tta_test_acc']:.2f}%")
    for name, acc in result["per_class_acc"].items():
        print(f"  {name:<12}{acc:6.2f}%")
    if args.record:
        from modular.weights import record_evaluation

        record_evaluation(args.record, args.weights, result, loaded.prepared.data.source)
        print(f"noted in {args.record}")
    return 0


def cmd_predict(args) -> int:
    from modular.predict import ImageError, predict_files
    from modular.weights import SHIPPED, load_weights

    failed = 0
    for outcome in predict_files(load_weights(args.weights or SHIPPED), args.images):
        if isinstance(outcome, ImageError):
            failed += 1
            print(f"error: {outcome}", file=sys.stderr)
        else:
            print(outcome)
    return 1 if failed else 0


def cmd_gradcam(args) -> int:
    from modular.inference import gradcam_figure, load_for_evaluation
    from modular.plots import save_figure

    loaded = load_for_evaluation(args.checkpoint, args.weights, args.data_dir, device="cpu")
    record = json.loads(Path(args.record).read_text()) if args.record else None
    path = save_figure(gradcam_figure(loaded.model, loaded.prepared, record), args.output)
    print(f"Grad-CAM figure: {path}")
    return 0


def cmd_export_weights(args) -> int:
    from modular.config import CIFAR10_CLASSES
    from modular.weights import export_weights, record_export

    classes = json.loads(Path(args.record).read_text())["classes"] if args.record else list(CIFAR10_CLASSES)
    exported = export_weights(args.checkpoint, args.output, classes)
    if args.record:
        record_export(args.record, exported)
    print(f"weights of epoch {exported['epoch']} in fp16: {args.output} (sha256 {exported['sha256']})"
          + (f"; noted in {args.record}" if args.record else ""))
    return 0


def cmd_stats(args) -> int:
    from modular.data import format_stats, load_cifar10

    print(format_stats(load_cifar10(args.data_dir)))
    return 0


def cmd_bench(args) -> int:
    from modular.bench import run_benchmark

    run_benchmark(Path(args.output_dir), batch_size=args.batch_size, device=args.device, repeats=args.repeats,
                  include_compile=args.compile)
    return 0


def cmd_report(args) -> int:
    from modular.report import update_readme

    for section in update_readme([Path(r) for r in args.records], Path(args.readme)):
        print(f"updated the {section} section of {args.readme}")
    return 0


def cmd_lr_seeds(args) -> int:
    from modular import plots
    from modular.jsonio import write_record
    from modular.lr_seeds import format_seeds, gather

    gathered = gather(args.records)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_record(args.output, gathered)
    figure = plots.save_figure(plots.plot_lr_seeds(gathered["seeds"], gathered["spread"], gathered["rule"] or ""),
                               args.figure)
    print(f"{format_seeds(gathered)}\nrecord: {args.output}; figure: {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from modular.checkpoint import CheckpointError
    from modular.data import DataError
    from modular.lr_finder import LRFinderError
    from modular.lr_seeds import LRSeedsError
    from modular.pipeline import OutputDirError
    from modular.predict import ImageError
    from modular.report import ReportError
    from modular.train import DivergenceError
    from modular.weights import WeightsError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("train", "lr-find"):
            cfg = config_from_args(args)
            return cmd_train(args, cfg, argv) if args.command == "train" else cmd_lr_find(args, cfg)
        commands = {"evaluate": cmd_evaluate, "predict": cmd_predict, "gradcam": cmd_gradcam,
                    "export-weights": cmd_export_weights, "stats": cmd_stats, "bench": cmd_bench, "report": cmd_report,
                    "lr-seeds": cmd_lr_seeds}
        return commands[args.command](args)
    except ConfigError as error:
        args.command_parser.error(str(error))  # exit 2, like any other bad argument
    except (DataError, CheckpointError, OutputDirError, LRFinderError, DivergenceError, ReportError, WeightsError,
            ImageError, LRSeedsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"error: {error.filename}: file not found", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # train handles its own (it says how to resume)
        print("\ninterrupted", file=sys.stderr)
        return 130
