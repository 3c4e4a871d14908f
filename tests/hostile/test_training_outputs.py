"""An output directory that cannot be written: finetune.py says so in one line, before it loads a model.

Tests run as root, for whom a chmod'ed directory is still writable, so the locations are ones root
cannot write either: a path under /sys (no directory can be made there), and a read-only tmpfs
mounted in a private mount namespace of the finetune process (``unshare``).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.helpers import write_rows

ROOT = Path(__file__).resolve().parents[2]
# A base model that does not exist: the run must stop at the output directory, before looking for it.
ARGS = ["--base_model=/nonexistent/model", "--max_steps=1", "--batch_size=2", "--micro_batch_size=2",
        "--cutoff_len=64", "--report_to=none", "--val_set_size=0"]


def finetune(data: str, output_dir: str, wrap: list[str] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "finetune.py", f"--data_path={data}", f"--output_dir={output_dir}", *ARGS]
    return subprocess.run([*wrap, *command], cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_refused(done: subprocess.CompletedProcess, output_dir: str, why: str) -> None:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"finetune.py: error: --output_dir={output_dir}: cannot write there ({why})")
    assert "nonexistent" not in line  # the model was never looked for


def test_a_location_nobody_can_write_is_refused_before_the_model_loads(tmp_path):
    done = finetune(write_rows(tmp_path / "rows.json"), "/sys/sftkit-out")
    assert_refused(done, "/sys/sftkit-out", "Operation not permitted")


def read_only_mount(directory: Path) -> list[str] | None:
    """An ``unshare`` prefix that runs a command with a read-only tmpfs on ``directory``, or None when this
    machine allows no private mount namespace (the /sys test above still runs)."""
    if not shutil.which("unshare"):
        return None
    for flags in (["--mount"], ["--mount", "--map-root-user"]):
        probe = subprocess.run(["unshare", *flags, "sh", "-c", f"mount -t tmpfs -o ro tmpfs {directory} && "
                                f"! touch {directory}/probe 2>/dev/null"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", *flags, "sh", "-c", f'mount -t tmpfs -o ro tmpfs {directory} && exec "$@"', "sh"]
    return None


@pytest.mark.parametrize("inside", [False, True], ids=["the_mount_itself", "a_new_directory_inside"])
def test_a_read_only_filesystem_is_refused_before_the_model_loads(tmp_path, inside):
    mounted = tmp_path / "ro"
    mounted.mkdir()
    wrap = read_only_mount(mounted)
    if wrap is None:
        pytest.skip("no private mount namespace here (unshare --mount); /sys covers the check")
    output_dir = str(mounted / "out") if inside else str(mounted)
    done = finetune(write_rows(tmp_path / "rows.json"), output_dir, wrap)
    assert_refused(done, output_dir, "Read-only file system")
