"""One writer per output directory, and no worker outliving its launcher.

:func:`hold` takes an exclusive ``fcntl`` lock on ``<dir>/.sftkit.lock`` for a run's lifetime;
a second run on the same directory fails at once naming the process that holds it. The
kernel drops the lock when the holder dies, so a killed run never leaves a stale lock. Taking it
is a run's first write into the directory, so an unwritable one (read-only filesystem, no
permission, a file in the way) is refused there, before any model is loaded.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

from sftkit.errors import LockError, OutputError

LOCK_NAME = ".sftkit.lock"


@contextlib.contextmanager
def hold(directory: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``directory``'s lock while the block runs; ``what`` names the run in the error."""
    directory = Path(directory)
    path = directory / LOCK_NAME
    try:  # the first write into the directory: an unwritable one fails here, before any work
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{what}={directory}: cannot write there ({exc.strerror or exc}); choose a writable "
                          "directory (it is created if missing)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockError(f"{directory} is in use by another run (PID {holder}); wait for it to finish, "
                            f"or point {what} at another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Make this process end when the process that started it dies (e.g. ``kill -9`` of torchrun).

    Linux's parent-death signal covers the common case; a watchdog thread covers the rest
    (the parent died before the signal was armed, or another OS).
    """
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(poll_seconds)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="sftkit-parent-watch", daemon=True).start()
