"""Write files all or nothing: a temporary name beside the target, fsync, then one rename.

A reader (or a resumed run) sees the old file or the new one, never half of one. Every
atomic write in sftkit goes through this module, so temporary names follow one scheme,
``.<name>.tmp-<pid>``, and :func:`clean_stale` can remove what a killed process left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name this process uses for ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to (a file, or a directory).

    On a clean exit the temporary is fsynced and renamed over ``path`` (a directory target
    is replaced whole); on an exception it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    _remove(tmp)
    try:
        yield tmp
        if durable and tmp.is_file():
            _fsync(tmp)
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


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
    """Remove temporaries left in ``directory`` by processes that no longer run; return them."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TMP.match(entry.name)
        if match and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            _remove(entry)
            removed.append(entry)
    return removed
