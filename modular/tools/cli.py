"""Command line: ``python -m modular {train,lr-find,evaluate,predict,gradcam,export-weights,stats,bench,report,
app,app-samples,app-latency,lr-seeds}``.

Flags (modular/tools/cli_args.py) follow torchvision's reference scripts. Known failures end in one line on stderr:
exit 2 for bad arguments or configuration, 1 for data, checkpoint or training problems,
130 for Ctrl-C and 143 for SIGTERM (both after saying how to resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from modular.config import Config, ConfigError
from modular.tools import SHIPPED_WEIGHTS
from modular.tools.cli_args import GRADCAM_PNG, build_parser, config_from_args, default_output


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
    from modular.tools.train_command import lr_find_and_save, prepare_output_dir

    prepare_output_dir(cfg.output_dir)
    learner = Learner(cfg)
    print(f"data: {learner.data.source}; device: {learner.runtime.describe()}", flush=True)
    result = lr_find_and_save(learner)
    steepest = "none" if result.steepest_lr is None else f"{result.steepest_lr:.3g}"
    diverged = "never diverged" if result.diverged_lr is None else f"diverged at LR {result.diverged_lr:.3g}"
    print(f"{diverged}; torch-lr-finder's steepest-descent suggestion {steepest}\nrule: {result.rule}")
    return 0


def cmd_evaluate(args) -> int:
    from modular.tools.inference import load_for_evaluation
    from modular.tools.testset import unofficial_test_set_note

    if args.record and not args.weights:
        args.command_parser.error("--record goes with --weights: it notes what a run's exported weights file reaches "
                                  "in that run's record; a checkpoint's own evaluation is in its run's run.json")
    loaded = load_for_evaluation(args.checkpoint, args.weights, args.data_dir, args.device)
    learner = loaded.learner
    if args.record:
        check_record_test_set(args.record, learner.data)
    print(f"{loaded.description}\ndata: {learner.data.source}: {len(learner.data.test_labels):,} test images; "
          f"device: {learner.runtime.describe()}", flush=True)
    if note := unofficial_test_set_note(learner.data):
        print(note, flush=True)
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
    from modular.tools.predict import ImageError, predict_files, unofficial_training_note
    from modular.tools.weights import SHIPPED, WeightsError, image_kind, load_checkpoint_model, load_weights

    try:
        trained = load_checkpoint_model(args.checkpoint) if args.checkpoint else load_weights(args.weights or SHIPPED)
    except WeightsError as error:
        if args.weights and image_kind(args.weights):  # meant as an image to classify
            raise WeightsError(f"{error}; to classify {args.weights}, name it without --weights: "
                               f"python -m modular predict {args.weights}") from None
        raise
    if note := unofficial_training_note(trained):
        print(note, file=sys.stderr)
    failed = 0
    for outcome in predict_files(trained, args.images):
        if isinstance(outcome, ImageError):
            failed += 1
            print(f"error: {outcome}", file=sys.stderr)
        else:
            print(outcome)
    return 1 if failed else 0


def cmd_gradcam(args) -> int:
    from modular.tools.figure_files import save_figure
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
    check_test_set(record, record_path, data)
    return record


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
                  include_compile=args.compile, min_seconds=args.min_seconds)
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
    from modular.tools.figure_files import save_figure
    from modular.tools.jsonio import write_record
    from modular.tools.lr_seeds import caption, format_seeds, gather, plot_lr_seeds

    gathered = gather(args.records)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_record(args.output, gathered)
    figure = save_figure(plot_lr_seeds(gathered["seeds"], gathered["spread"], caption(gathered)), args.figure)
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
                    "app-samples": cmd_app_samples, "app": cmd_app,
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
    except BrokenPipeError:  # the reader left (`... | head`): stop quietly, as the Python docs advise for SIGPIPE
        with contextlib.suppress(AttributeError, ValueError, OSError):  # no flush error at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # train handles its own (it says how to resume)
        print("\ninterrupted", file=sys.stderr)
        return 130
