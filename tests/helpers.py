"""Helpers for the schedule, LR finder, training, reliability and CLI tests.

* ``run_cli`` / ``start_cli`` / ``run_cli_many``: ``python -m modular ...`` in subprocesses with a
  clean environment (no albumentations version check, no display, no network);
* ``shared_run``: one finished tiny training run (in-process, through the CLI's own flag parsing),
  computed once per pytest session and reused by several test files;
* ``wait_for_epoch``: poll a run's checkpoint until it records a finished epoch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]  # the project root: the tests' one definition of it
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
# A proxy that refuses every connection: a download attempt fails at once instead of hanging.
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
              "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}

# Flags of every small CPU run: fp32 so runs are bit-for-bit comparable, batch 32, no range test.
FAST = ["--batch-size", "32", "--precision", "fp32", "--device", "cpu", "--seed", "0"]


def cli_env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1", **NO_NETWORK)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def _command(args) -> list[str]:
    return [PYTHON, "-m", "modular", *[str(a) for a in args]]


def start_cli(args, cwd: str | os.PathLike | None = None, env: dict | None = None,
              own_group: bool = False) -> subprocess.Popen:
    """``python -m modular *args`` running in the background, output captured as text. ``own_group``:
    in a process group of its own (a new session), as a job scheduler or ``timeout`` starts it, so
    that ``os.killpg(proc.pid, ...)`` signals it and every process it started."""
    return subprocess.Popen(_command(args), cwd=cwd or ROOT, env=env or cli_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=_default_sigint, start_new_session=own_group)


def _default_sigint() -> None:
    """Ctrl-C reaches the child even where pytest itself was started in the background with SIGINT
    ignored (non-interactive shells do that to background jobs, and children inherit it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish in {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(args, cwd=None, env=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return finish(start_cli(args, cwd, env), timeout)


def run_cli_many(commands: list, cwd=None, env=None, parallel: int = 4, timeout: float = 240) -> list:
    """Run several short commands side by side (each mostly imports torch); results in order."""
    results: list = [None] * len(commands)
    running: list[tuple[int, subprocess.Popen]] = []
    pending = list(enumerate(commands))
    while pending or running:
        while pending and len(running) < parallel:
            i, args = pending.pop(0)
            running.append((i, start_cli(args, cwd, env)))
        i, proc = running.pop(0)
        results[i] = finish(proc, timeout)
    return results


def cli_main(argv, capsys) -> tuple[int, str, str]:
    """``python -m modular *argv`` in this process (the function __main__ calls): (exit code, stdout, stderr)."""
    from modular.tools.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def describe(result: subprocess.CompletedProcess) -> str:
    """For assertion messages: the command, its exit code and its output."""
    return (f"\n$ {' '.join(map(str, result.args[2:]))}\nexit {result.returncode}\n"
            f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, and stderr holding every needle; returns stderr."""
    assert result.returncode == code, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in stderr" + describe(result)
    return result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def read_until(proc: subprocess.Popen, wanted, timeout: float = 300) -> list[str]:
    """Read ``proc``'s stdout line by line until ``wanted(line)`` is true; returns the lines read.
    The process must still be running; after ``timeout`` seconds it is killed (its group too, if it
    leads one) and the test fails."""
    import threading

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if wanted(line):
                return lines
    finally:
        timer.cancel()
    proc.wait(timeout=60)
    raise AssertionError(f"the run ended (exit {proc.returncode}) or was killed after {timeout}s before the line "
                         f"awaited\n{''.join(lines)}\n{proc.stderr.read()}")


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run (zombies aside), from /proc (Linux)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def wait_for_epoch(checkpoint: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> dict:
    """Poll ``checkpoint`` until it records ``epoch`` or later; the process must still be running."""
    from modular.checkpoint import load_checkpoint

    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before epoch {epoch} was saved\n{out}\n{err}")
        if checkpoint.exists():
            stamp = checkpoint.stat().st_mtime_ns
            if stamp != seen:
                seen = stamp
                state = load_checkpoint(checkpoint)
                if state["epoch"] >= epoch:
                    return state
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{checkpoint} did not reach epoch {epoch} in {timeout}s")


# --------------------------------------------------------------------------------------------
# One finished run, shared by the test files of a session
# --------------------------------------------------------------------------------------------

SHARED_N_TRAIN, SHARED_N_TEST = 320, 100
SHARED_FLAGS = ["--epochs", "2", "--max-lr", "0.2", *FAST]


@dataclass
class SharedRun:
    tree: Path            # the synthetic image tree it trained on
    output_dir: Path      # run.json, checkpoint.pt, plots
    args: list[str]       # the CLI arguments that describe it (without --resume)
    cfg: object           # its Config
    record: dict          # what train_command.train returned
    log: list[str]        # what it printed

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / "checkpoint.pt"


_CACHE: dict[str, object] = {}


def shared_tree(tmp_path_factory) -> Path:
    """Synthetic CIFAR-10, 320 train / 100 test images, as an image tree (written once)."""
    if "tree" not in _CACHE:
        from modular.tools.synthetic import synthetic_cifar10, write_image_tree

        data = synthetic_cifar10(n_train=SHARED_N_TRAIN, n_test=SHARED_N_TEST, seed=0)
        _CACHE["tree"] = write_image_tree(data, tmp_path_factory.mktemp("shared") / "cifar10")
    return _CACHE["tree"]


def shared_run(tmp_path_factory) -> SharedRun:
    """A 2-epoch run on ``shared_tree`` (--max-lr 0.2, batch 32, fp32), run once per session."""
    if "run" not in _CACHE:
        from modular.tools.cli_args import build_parser, config_from_args
        from modular.tools.train_command import train

        tree = shared_tree(tmp_path_factory)
        out = tmp_path_factory.mktemp("shared_run") / "out"
        args = ["train", "--data-dir", str(tree), "--output-dir", str(out), *SHARED_FLAGS]
        cfg = config_from_args(build_parser().parse_args(args))
        log: list[str] = []
        record = train(cfg, log=log.append)
        _CACHE["run"] = SharedRun(tree, out, args, cfg, record, log)
    return _CACHE["run"]


def small_tree(root: Path, n_train: int = 128, n_test: int = 40, seed: int = 0) -> Path:
    from modular.tools.synthetic import synthetic_cifar10, write_image_tree

    return write_image_tree(synthetic_cifar10(n_train=n_train, n_test=n_test, seed=seed), root)
