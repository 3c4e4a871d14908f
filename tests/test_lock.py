import os
import subprocess
import sys
import textwrap
import time

import pytest

from sftkit import lock
from sftkit.errors import LockError


def test_a_second_holder_is_refused_naming_the_pid(tmp_path):
    with lock.hold(tmp_path, "--output_dir"):
        child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from sftkit import lock
            with lock.hold({str(tmp_path)!r}, "--output_dir"):
                pass
        """)], capture_output=True, text=True, cwd=os.getcwd())
        assert child.returncode != 0 and f"PID {os.getpid()}" in child.stderr and "LockError" in child.stderr
    with lock.hold(tmp_path, "--output_dir"):  # released on exit
        pass


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from sftkit import lock
        with lock.hold({str(tmp_path)!r}, "--work_dir"):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockError):
        with lock.hold(tmp_path, "--work_dir"):
            pass
    holder.kill()
    holder.wait()
    with lock.hold(tmp_path, "--work_dir"):
        pass


def test_exit_with_parent_ends_an_orphan(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import os, time; from sftkit import lock; "
                          "lock.exit_with_parent(0.1); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                          "time.sleep(60)"])
        time.sleep(60)
    """)])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"the child {child} outlived its killed parent")
