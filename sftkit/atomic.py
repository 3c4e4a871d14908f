"""Write files and directories all or nothing: a temporary name beside the target, fsync, one rename.

A reader (or a resumed run) sees the old file or the new one, never half of one. Every
atomic write in sftkit goes through this module (tests/test_atomic.py fails on a rename
anywhere else), so temporary names follow one scheme, ``.<name>.tmp-<pid>``, and
:func:`clean_stale` can tidy what a killed process left behind. A directory target is
replaced whole by two renames: the old one steps aside to ``.<name>.old-<pid>``, the new
one takes its name; a kill between the two is repaired by :func:`clean_stale`, which puts
the old directory back.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def temp_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """The temporary name for ``path`` owned by process ``pid`` (this process by default).

    Processes writing one temporary together (the ranks of a distributed run) name it by
    the PID of the one that renames it, so it is cleaned when that process is gone.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old-{os.getpid()}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder in a directory (the folder entries last)."""
    if path.is_dir() and not path.is_symlink():
        for root, _, files in os.walk(path, topdown=False):
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    _fsync(Path(root, name))
            _fsync(Path(root))
    elif path.is_file():
        _fsync(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _install(new: Path, path: Path, durable: bool) -> None:
    """Rename the finished ``new`` over ``path``; a directory replaces a directory whole."""
    if durable:
        _fsync_tree(new)
    if new.is_dir() and path.is_dir() and not path.is_symlink():
        old = _old_path(path)
        _remove(old)
        os.replace(path, old)
        try:
            os.replace(new, path)
        except BaseException:
            os.replace(old, path)
            raise
        _remove(old)
    else:
        os.replace(new, path)
    if durable:
        _fsync(path.parent)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (a file, or a directory).

    On a clean exit the temporary is fsynced and renamed over ``path`` (a directory target
    is replaced whole); on an exception it is removed and ``path`` is left as it was.
    ``durable=False`` skips the fsyncs, for scratch files no crash needs to find again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    _remove(tmp)
    try:
        yield tmp
        _install(tmp, path, durable)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def replacing_entries(directory: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder inside ``directory``; on a clean exit each thing written
    in it replaces the same name in ``directory`` (files and folders, each by one rename).

    For outputs that share their folder with others (a run's final weights beside its
    checkpoints). A kill mid-way leaves some entries new and some old, never half a file;
    the temporary folder is removed on an exception, and by :func:`clean_stale` after a kill.
    """
    directory = Path(directory)
    staging = temp_path(directory / "entries")
    _remove(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        for entry in sorted(staging.iterdir()):
            _install(entry, directory / entry.name, durable)
    finally:
        _remove(staging)


def promote(finished: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished file that is kept under its own name until complete (a resumable
    download's ``.part``) to ``path``, fsyncing it first and the folder after."""
    _install(Path(finished), Path(path), durable=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, ensure_ascii=False, indent=indent, default=str) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(directory: str | os.PathLike) -> list[Path]:
    """Tidy what processes that no longer run left in ``directory``; return the paths handled.

    A temporary (``.<name>.tmp-<pid>``) is removed. A set-aside old version
    (``.<name>.old-<pid>``) is put back when ``<name>`` is missing (the process died between
    the two renames of a directory swap), else removed.
    """
    directory = Path(directory)
    handled = []
    if not directory.is_dir():
        return handled
    for entry in sorted(directory.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if not match or int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        target = directory / match["name"]
        if match["kind"] == "old" and not os.path.lexists(target):
            os.replace(entry, target)
        else:
            _remove(entry)
        handled.append(entry)
    return handled
