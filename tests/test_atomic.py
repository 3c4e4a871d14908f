import ast
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sftkit import atomic

PACKAGE = Path(atomic.__file__).resolve().parent
REPO = PACKAGE.parent


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    for content in ("old", "new"):
        with atomic.replacing(target) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(content)
    assert (target / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_error_while_writing_a_directory_leaves_the_old_one(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("half")
        raise RuntimeError("failed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in target.iterdir()] == ["weights"] and (target / "weights").read_text() == "old"


def test_clean_stale_removes_only_dead_processes_temporaries(tmp_path):
    stale = tmp_path / f".out.parquet.tmp-{dead_pid()}"
    stale.write_text("half")
    live = tmp_path / f".other.tmp-{os.getppid()}"
    live.write_text("being written")
    mine = atomic.temp_path(tmp_path / "mine")
    mine.write_text("mine")
    assert atomic.clean_stale(tmp_path) == [stale]
    assert live.exists() and mine.exists()


def test_a_kill_between_the_two_renames_of_a_directory_swap_is_undone(tmp_path):
    """The old directory stepped aside, the process died before the new one took its name: the next
    clean_stale puts the old one back (the new one may be incomplete as far as anyone can tell)."""
    target = tmp_path / "checkpoint-4"
    target.mkdir()
    (target / "state").write_text("old")
    swap = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from sftkit import atomic
        real, calls = os.replace, []
        def replace(src, dst):
            calls.append(src)
            if len(calls) == 2:  # after the old one stepped aside, before the new one is renamed in
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
        os.replace = replace
        with atomic.replacing({str(target)!r}) as tmp:
            tmp.mkdir()
            (tmp / "state").write_text("new")
    """)
    killed = subprocess.run([sys.executable, "-c", swap], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert [name.rsplit("-", 1)[0] for name in leftovers] == [".checkpoint-4.old", ".checkpoint-4.tmp"]

    tidied = atomic.clean_stale(tmp_path)
    assert sorted(p.name for p in tidied) == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-4"]
    assert (target / "state").read_text() == "old"


def test_a_set_aside_old_version_is_removed_when_the_target_is_there(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("new")
    old = tmp_path / f".model.old-{dead_pid()}"
    old.mkdir()
    (old / "weights").write_text("old")
    live_old = tmp_path / f".other.old-{os.getppid()}"  # a swap still in progress: not ours
    live_old.mkdir()
    assert atomic.clean_stale(tmp_path) == [old]
    assert (tmp_path / "model" / "weights").read_text() == "new" and live_old.is_dir()


def test_replacing_entries_swaps_each_entry_and_leaves_the_rest(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "stale_file").write_text("old")
    (out / "adapter.safetensors").write_text("old")
    with atomic.replacing_entries(out) as staging:
        (staging / "adapter.safetensors").write_text("new")
        (staging / "tokenizer").mkdir()
        (staging / "tokenizer" / "vocab").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "checkpoint-2", "tokenizer"]
    assert (out / "adapter.safetensors").read_text() == "new"
    assert [p.name for p in (out / "tokenizer").iterdir()] == ["vocab"]  # a directory is replaced whole


def test_an_error_in_replacing_entries_leaves_the_directory_as_it_was(tmp_path):
    (tmp_path / "adapter.safetensors").write_text("old")
    with pytest.raises(RuntimeError), atomic.replacing_entries(tmp_path) as staging:
        (staging / "adapter.safetensors").write_text("half")
        raise RuntimeError("failed mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]
    assert (tmp_path / "adapter.safetensors").read_text() == "old"


def test_promote_renames_a_finished_part_file(tmp_path):
    part, dest = tmp_path / "data.jsonl.part", tmp_path / "data.jsonl"
    dest.write_text("older copy")
    part.write_text("complete")
    atomic.promote(part, dest)
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"] and dest.read_text() == "complete"


def _renames(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that rename a file: os.replace/os.rename/os.renames/shutil.move, a name imported from
    os or shutil for that, and ``<path>.rename(x)`` / ``<path>.replace(x)`` (one argument, no
    keywords: ``str.replace`` takes two, ``dataclasses.replace`` and ``datetime.replace`` keywords)."""
    renaming = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move")}
    imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if (node.module, alias.name) in renaming}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in imported:
            found.append((node.lineno, func.id))
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if (owner, func.attr) in renaming:
                found.append((node.lineno, f"{owner}.{func.attr}"))
            elif func.attr == "rename" or (func.attr == "replace" and len(node.args) == 1 and not node.keywords):
                found.append((node.lineno, f".{func.attr}()"))
    return found


def test_the_rename_finder_sees_every_spelling():
    code = textwrap.dedent("""
        import os, shutil
        from os import replace as swap
        os.replace(a, b); os.rename(a, b); shutil.move(a, b); swap(a, b)
        Path(a).rename(b); tmp.replace(target)
        "x".replace("a", "b"); dataclasses.replace(cfg, workers=1); when.replace(year=1)
    """)
    assert [what for _, what in _renames(ast.parse(code))] == [
        "os.replace", "os.rename", "shutil.move", "swap", ".rename()", ".replace()"]


def test_only_sftkit_atomic_renames_files():
    """Every atomic write goes through sftkit/atomic.py: one temporary-name scheme, one cleanup."""
    offenders = [f"{path.relative_to(REPO)}:{line}: {what}"
                 for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "atomic.py"
                 for line, what in _renames(ast.parse(path.read_text(encoding="utf-8"), str(path)))]
    assert offenders == [], "write through sftkit.atomic (replacing, replacing_entries, promote) instead of:\n" + \
        "\n".join(offenders)
