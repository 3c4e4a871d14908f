"""The runner's guarantees: one writer per work dir, stale temporaries removed, empty results caught,
interrupted steps rerun (never refused), and errors that say whether an input or an output failed."""
import gzip
import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from sftkit import lock
from sftkit.data import DataError
from sftkit.data.pipeline import run, run_stage
from sftkit.data.run import manifest
from sftkit.errors import LockError
from tests.data.conftest import SAMPLE, sample_config

download = partial(run_stage, "download")

ROOT = Path(__file__).resolve().parents[3]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_run_on_the_same_work_dir_fails_naming_the_holder(tmp_path):
    with lock.hold(tmp_path, "test"):
        holder = subprocess.run([sys.executable, "create_data.py", "download", "--source=data/sample",
                                 f"--work_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert holder.returncode == 2 and f"PID {__import__('os').getpid()}" in holder.stderr
        assert not (tmp_path / "1_download").exists()
    with pytest.raises(LockError):  # the same in-process: a pipeline holds it for the whole command
        with lock.hold(tmp_path, "test"):
            run("download", sample_config(tmp_path))


def test_temporaries_of_killed_runs_are_removed_at_stage_start(tmp_path, capsys):
    pid = dead_pid()
    stale = tmp_path / "1_download" / f".unified_sample_dialog.jsonl.gz.parquet.tmp-{pid}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a parquet file")
    mine = tmp_path / "1_download" / ".other.tmp-1"  # PID 1 is alive: not ours to remove
    mine.write_bytes(b"x")
    download(sample_config(tmp_path))
    assert not stale.exists() and mine.exists()
    assert "removed 1 temporary file(s) left by a killed run" in capsys.readouterr().out


def test_empty_input_warns_at_each_stage_and_fails_at_finalize(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "empty.jsonl").write_bytes(b"")
    command = [sys.executable, "create_data.py", "all", f"--source={source}", f"--work_dir={tmp_path / 'work'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(r"finalize: 0 rows left.*--allow_empty=True", result.stderr), result.stderr
    for stage in ("download", "detox", "chop", "grade"):
        assert f"[{stage}] warning: 0 rows out" in result.stdout
    assert not (tmp_path / "work" / "oig_instruct_cleaned.json").exists()
    allowed = subprocess.run([*command, "--allow_empty=True"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert allowed.returncode == 0, allowed.stderr
    rows = json.loads((tmp_path / "work" / "oig_instruct_cleaned.json").read_text())
    assert {row["source"] for row in rows} == {"personality"}  # only the generated identity rows


def test_a_kill_between_output_and_manifest_reruns_the_step(tmp_path, monkeypatch):
    real = manifest.write_manifest

    def killed(path, step, *args):
        if step == "download unified_sample_dialog.jsonl.gz":
            raise KeyboardInterrupt("killed after the output rename")
        return real(path, step, *args)

    monkeypatch.setattr(manifest, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        download(sample_config(tmp_path))
    out = tmp_path / "1_download" / "unified_sample_dialog.jsonl.gz.parquet"
    assert out.is_file()  # the output is in place, its manifest says "pending"
    monkeypatch.setattr(manifest, "write_manifest", real)
    stats = download(sample_config(tmp_path))
    assert stats.rows_out > 0 and "pending" not in (out.with_name(out.name.replace(".parquet", ".manifest.json"))
                                                   ).read_text()


def test_work_dir_that_is_a_file_is_named_as_the_output(tmp_path):
    work = tmp_path / "work"
    work.write_text("not a directory")
    with pytest.raises(DataError, match=r"--work_dir=.*is a file, not a directory.*outputs"):
        run("download", sample_config(work))


def test_an_unwritable_output_is_not_blamed_on_the_input(tmp_path):
    blocker = tmp_path / "1_download" / "unified_sample_dialog.jsonl.gz.rejects.jsonl"
    blocker.mkdir(parents=True)  # a directory where an output file must go
    (blocker / "keep").write_text("x")
    with pytest.raises(DataError) as error:
        download(sample_config(tmp_path, files=["unified_sample_dialog.jsonl.gz"]))
    message = str(error.value)
    assert message.startswith("output ") and "--work_dir" in message and "delete it" not in message
    assert str(SAMPLE) not in message


def test_a_truncated_local_input_is_not_told_to_be_fetched_again(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    whole = (SAMPLE / "unified_sample_dialog.jsonl.gz").read_bytes()
    (source / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as error:
        download(sample_config(tmp_path / "work", source=str(source)))
    message = str(error.value)
    assert message.startswith(f"input {source / 'cut.jsonl.gz'}") and "replace it" in message
    assert "fetch it again" not in message
    assert gzip.decompress(whole)  # the sample itself is fine
