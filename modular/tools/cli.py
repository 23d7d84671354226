"""Command line: ``python -m modular {train,lr-find,evaluate,predict,gradcam,export-weights,stats,bench,report,
app,app-samples,app-latency,test-set,lr-seeds}``.

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

from modular.config import DEFAULT_WORKERS, DEVICES, LR_RULES, OPTIMIZERS, PRECISIONS, SHIPPED_WEIGHTS, Config, ConfigError


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
    p.add_argument("--seed", type=int, default=Config.seed, help="seeds the model's initial weights, the sampling "
                   "order and the augmentations")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=Config.batch_size, help="images per step")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=Config.optimizer,
                   help="sgd: Nesterov momentum (Page's recipe); adam: the original submission's")
    p.add_argument("--label-smoothing", type=float, default=Config.label_smoothing,
                   help="cross-entropy label smoothing, in [0, 1)")
    p.add_argument("--logit-scale", type=float, default=Config.logit_scale,
                   help="the model's logits are multiplied by this, > 0; 1 gives raw logits")
    p.add_argument("--lr-rule", choices=LR_RULES, default=Config.lr_rule,
                   help="how LRMAX is read off the range test: 'minimum', the smoothed loss's minimum before "
                   "divergence (the left end of the valley where the loss lies flat over more than 4x in LR); "
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

    test_set = commands.add_parser("test-set", help="the test set's identity (a hash of its images and labels in "
                                   "order); with run records: check them against it and add it to them")
    test_set.add_argument("records", nargs="*", help="run records made on this test set (results/headline.json)")
    test_set.add_argument("--data-dir", help="as for train (default: download with torchvision into ./data)")

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
    bench.add_argument("--compile", action="store_true", help="also measure torch.compile")

    report = commands.add_parser("report", help="README tables from run or benchmark records")
    report.add_argument("records", nargs="+", help="one run record (results/headline.json: the Results table), "
                        "several of one configuration (one per seed: the Seeds table), benchmark records "
                        "(results/bench-cpu.json: the Performance table)")
    report.add_argument("--ablation", action="append", default=[], metavar="RECORD",
                        help="a variant's run record that changes one thing (optimizer, LR rule, label smoothing, "
                        "logit scale): with the baseline seeds as RECORDS, writes the Ablations table "
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
    from modular.checkpoint import checkpoint_path
    from modular.tools.train_command import record_so_far, train

    if args.record_so_far:
        record_so_far(cfg)
        return 0
    try:
        with sigterm_as_interrupt():
            train(cfg, resume=args.resume)
    except KeyboardInterrupt as stop:
        path = checkpoint_path(cfg)
        saved = f"the last finished epoch is saved in {path}" if path.exists() else "no epoch had finished"
        print(f"\n{'terminated' if isinstance(stop, Terminated) else 'interrupted'}: {saved}; "
              f"resume with: {resume_hint(argv)}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
    return 0


def cmd_lr_find(args, cfg: Config) -> int:
    from modular.learner import Learner
    from modular.tools.train_command import prepare_output_dir, range_test

    prepare_output_dir(cfg.output_dir)
    learner = Learner(cfg)
    print(f"data: {learner.data.source}; device: {learner.runtime.describe()}", flush=True)
    found = range_test(learner)
    steepest = "none" if found.steepest_lr is None else f"{found.steepest_lr:.3g}"
    diverged = "never diverged" if found.diverged_lr is None else f"diverged at LR {found.diverged_lr:.3g}"
    print(f"{diverged}; torch-lr-finder's steepest-descent suggestion {steepest}\nrule: {found.rule}")
    return 0


def cmd_evaluate(args) -> int:
    from modular.tools.inference import load_for_evaluation

    if args.record and not args.weights:
        args.command_parser.error("--record goes with --weights: it notes what a run's exported weights file reaches "
                                  "in that run's record; a checkpoint's own evaluation is in its run's run.json")
    loaded = load_for_evaluation(args.checkpoint, args.weights, args.data_dir, args.device)
    learner = loaded.learner
    if args.record:
        check_record_test_set(args.record, learner.data)
    print(f"{loaded.description}\ndata: {learner.data.source}: {len(learner.data.test_labels):,} test images; "
          f"device: {learner.runtime.describe()}", flush=True)
    result = learner.evaluate()
    print(f"test accuracy {result.test_acc:.2f}%  loss {result.test_loss:.4f}  cross-entropy {result.test_ce:.4f}  "
          f"flip TTA {result.tta_test_acc:.2f}%")
    for name, acc in result.per_class_acc.items():
        print(f"  {name:<12}{acc:6.2f}%")
    if args.record:
        from modular.tools.weights import record_evaluation

        record_evaluation(args.record, args.weights, result.to_dict(), learner.data.source)
        print(f"noted in {args.record}")
    return 0


def cmd_predict(args) -> int:
    from modular.tools.predict import ImageError, predict_files
    from modular.tools.weights import SHIPPED, load_checkpoint_model, load_weights

    trained = load_checkpoint_model(args.checkpoint) if args.checkpoint else load_weights(args.weights or SHIPPED)
    failed = 0
    for outcome in predict_files(trained, args.images):
        if isinstance(outcome, ImageError):
            failed += 1
            print(f"error: {outcome}", file=sys.stderr)
        else:
            print(outcome)
    return 1 if failed else 0


def cmd_gradcam(args) -> int:
    from modular.plots import save_figure
    from modular.tools.inference import gradcam_figure, load_for_evaluation

    learner = load_for_evaluation(args.checkpoint, args.weights, args.data_dir, device="cpu").learner
    record = check_record_test_set(args.record, learner.data) if args.record else None
    output = default_output(args.output, args.checkpoint, args.weights, GRADCAM_PNG)
    path = save_figure(gradcam_figure(learner, record["misclassified"] if record else None), output)
    print(f"Grad-CAM figure: {path}")
    return 0


def check_record_test_set(record_path: str, data) -> dict:
    """The run record at ``record_path``, refused (TestSetError) unless ``data`` holds its test set."""
    from modular.tools.testset import check_test_set

    record = json.loads(Path(record_path).read_text())
    note = check_test_set(record, record_path, data)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return record


def cmd_test_set(args) -> int:
    from modular.data import load_cifar10
    from modular.tools.testset import TestSetIdentity, stamp_record

    data = load_cifar10(args.data_dir)
    print(f"test set of {data.source}: {TestSetIdentity.of(data).to_dict()}")
    for record in args.records:
        stamp_record(record, data)
        print(f"{record}: checked (image count, labels at its misclassified indices, images per class) and noted")
    return 0


def cmd_app_samples(args) -> int:
    from modular.tools.app_samples import make_sample
    from modular.tools.weights import SHIPPED

    sample = make_sample(args.data_dir, args.record, args.weights or SHIPPED, args.output, args.misclassified, args.force)
    print(f"{sample.folder}: {len(sample.examples)} examples and {len(sample.misclassified)} misclassified images "
          f"of {sample.test_set}")
    return 0


def cmd_app(args) -> int:
    from modular.tools.app import RECORDS, serve
    from modular.tools.app_samples import FOLDER
    from modular.tools.weights import SHIPPED

    serve(args.weights or SHIPPED, args.records or RECORDS, args.samples or FOLDER, args.host, args.port)
    return 0


def cmd_app_latency(args) -> int:
    from modular.tools.app_latency import measure
    from modular.tools.jsonio import write_record
    from modular.tools.report import latency_summary

    record = measure(args.calls)
    output = Path(args.output or "runs/app-latency.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_record(output, record)
    print(f"{latency_summary(record)}\nrecord: {output}")
    if record["load_average_before"][0] > 0.5 or record["load_average_after"][0] > 1.5:
        print("note: other work was running (see the load averages): measure again on an idle machine",
              file=sys.stderr)
    return 0


def cmd_export_weights(args) -> int:
    from modular.config import CIFAR10_CLASSES
    from modular.tools.weights import export_weights, record_export

    classes = json.loads(Path(args.record).read_text())["classes"] if args.record else list(CIFAR10_CLASSES)
    output = default_output(args.output, args.checkpoint, None, Path(SHIPPED_WEIGHTS).name)
    exported = export_weights(args.checkpoint, output, classes, record_path=args.record)
    if args.record:
        record_export(args.record, exported)
    print(f"weights of epoch {exported['epoch']} in fp16: {output} (sha256 {exported['sha256']})"
          + (f"; noted in {args.record}" if args.record else ""))
    return 0


def cmd_stats(args) -> int:
    from modular.data import format_stats, load_cifar10

    print(format_stats(load_cifar10(args.data_dir)))
    return 0


def cmd_bench(args) -> int:
    from modular.tools.bench import run_benchmark

    run_benchmark(Path(args.output_dir), batch_size=args.batch_size, device=args.device, repeats=args.repeats,
                  include_compile=args.compile)
    return 0


def cmd_report(args) -> int:
    from modular.tools.report import render_sections, update_readme

    paths, ablations = [Path(r) for r in args.records], [Path(a) for a in args.ablation]
    if args.readme is None:  # the README is a tracked file: written only when named
        for name, (_, table) in render_sections(paths, ablations).items():
            print(f"{name}:\n\n{table}\n")
        print(f"(printed only; to write these sections into the README: python -m modular report "
              f"{' '.join(map(str, paths))}{''.join(f' --ablation {a}' for a in ablations)} --readme README.md)")
        return 0
    for section in update_readme(paths, Path(args.readme), ablations):
        print(f"updated the {section} section of {args.readme}")
    return 0


def cmd_lr_seeds(args) -> int:
    from modular import plots
    from modular.tools.jsonio import write_record
    from modular.tools.lr_seeds import format_seeds, gather

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
    from modular.learner import DivergenceError
    from modular.lr_finder import LRFinderError
    from modular.tools.app import AppSetupError
    from modular.tools.app_samples import SampleError
    from modular.tools.lr_seeds import LRSeedsError
    from modular.tools.predict import ImageError
    from modular.tools.report import ReportError
    from modular.tools.testset import TestSetError
    from modular.tools.train_command import OutputDirError
    from modular.tools.weights import WeightsError

    argv = sys.argv[1:] if argv is None else list(argv)
    with contextlib.suppress(AttributeError, ValueError):  # a log file sees each line when it is printed
        sys.stdout.reconfigure(line_buffering=True)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, which lists its flags, not the top level's
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command in ("train", "lr-find"):
            cfg = config_from_args(args)
            return cmd_train(args, cfg, argv) if args.command == "train" else cmd_lr_find(args, cfg)
        commands = {"evaluate": cmd_evaluate, "predict": cmd_predict, "gradcam": cmd_gradcam,
                    "export-weights": cmd_export_weights, "stats": cmd_stats, "bench": cmd_bench, "report": cmd_report,
                    "test-set": cmd_test_set, "app-samples": cmd_app_samples, "app": cmd_app,
                    "app-latency": cmd_app_latency, "lr-seeds": cmd_lr_seeds}
        return commands[args.command](args)
    except ConfigError as error:
        args.command_parser.error(str(error))  # exit 2, like any other bad argument
    except (DataError, CheckpointError, OutputDirError, LRFinderError, DivergenceError, ReportError, WeightsError,
            ImageError, TestSetError, SampleError, AppSetupError, LRSeedsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"error: {error.filename}: file not found", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # train handles its own (it says how to resume)
        print("\ninterrupted", file=sys.stderr)
        return 130
