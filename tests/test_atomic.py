import os
import subprocess
import sys

import pytest

from sftkit import atomic


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


def test_clean_stale_removes_only_dead_processes_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.parquet.tmp-{dead.stdout.strip()}"
    stale.write_text("half")
    live = tmp_path / f".other.tmp-{os.getppid()}"
    live.write_text("being written")
    mine = atomic.temp_path(tmp_path / "mine")
    mine.write_text("mine")
    assert atomic.clean_stale(tmp_path) == [stale]
    assert live.exists() and mine.exists()
