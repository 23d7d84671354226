"""What keeps a run's finished epochs safe where notebooks and clusters stop it: atomic writes that
survive a crash, also on folders shared between machines (Google Drive, NFS), and DataLoader workers
that leave stop signals to the main process. The core calls it in two places: ``save_atomic`` for
every checkpoint, ``guard_workers`` for every loader with workers."""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

# Another machine's temporary file is its own business while it may still be written: a folder on
# Google Drive is shared by Colab VMs, and a pid says nothing about another machine. Left this long
# untouched, though, it is a dead machine's leftover (a write takes seconds to minutes).
FOREIGN_TMP_STALE_SECONDS = 24 * 3600


def save_atomic(payload: Any, path: str | os.PathLike) -> Path:
    """torch.save ``payload`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, renamed over the old one, then the folder synced so the rename itself survives a power cut.
    A crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{host_tag()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    _remove_orphans(path)
    return path


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def host_tag() -> str:
    """This machine's name as temporary files carry it: letters, digits and '-' (no dots)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "unknown-host"


def _remove_orphans(path: Path) -> None:
    """Delete temporary files (``.<name>.<host>.<pid>.<random>.tmp``) left by writers killed mid-write.
    On this machine: those whose process is gone; a file a live process is still writing stays.
    Another machine's (a shared folder): only once untouched for FOREIGN_TMP_STALE_SECONDS, its pid
    meaning nothing here. Files named otherwise (older versions wrote no host) are left alone."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        parts = stale.name[len(path.name) + 2:-len(".tmp")].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        host, pid = parts[0], int(parts[1])
        if host == host_tag():
            if pid != os.getpid() and _alive(pid):
                continue
        else:
            try:
                if time.time() - stale.stat().st_mtime < FOREIGN_TMP_STALE_SECONDS:
                    continue
            except OSError:  # removed meanwhile
                continue
        stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def guard_workers(loader: DataLoader) -> DataLoader:
    """Make ``loader``'s worker processes safe to stop: they ignore SIGINT and SIGTERM, and they are
    shut down before the interpreter exits. Returns the loader. Call it before its first iteration."""
    if loader.num_workers > 0:
        loader.worker_init_fn = leave_stop_signals_to_the_main_process
        atexit.register(shut_down_workers, weakref.ref(loader))
    return loader


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT and SIGTERM. `timeout`, Slurm, ``kill -- -PGID``
    and Ctrl-C in a terminal signal every process of the job; a worker that died of it would make
    the main process's DataLoader raise "worker ... is killed by signal" (mid-epoch, before the run
    could say how to resume). The main process stops on the signal and shuts its workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def shut_down_workers(loader_ref: weakref.ref) -> None:
    """Stop the persistent worker processes of the DataLoader ``loader_ref`` points to, if any.

    Workers that ignore SIGTERM must be shut down by the main process before it exits. torch does it
    when the loader is freed, but not at interpreter exit (a loader in a global or a reference cycle),
    and multiprocessing then waits forever for the daemon workers it tried to SIGTERM. atexit runs
    handlers last-registered first, so this runs before torch's own exit handler turns the shutdown
    into a no-op."""
    loader = loader_ref()
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None
