"""Fault injector: run create_data.py and ``kill -9`` this process at the N-th call of a function.

    python tests/faults/kill_at.py sftkit.data.run.manifest:write_manifest 1 detox --work_dir=...

The function is replaced by a wrapper that sends SIGKILL to its own process on call N (before the
real function runs), so the run dies exactly there, the way a power cut or OOM kill would.
"""
import importlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def arm(target: str, nth: int) -> None:
    module_name, _, attribute = target.partition(":")
    *owners, name = attribute.split(".")
    owner = importlib.import_module(module_name)
    for part in owners:
        owner = getattr(owner, part)
    real, calls = getattr(owner, name), [0]

    def killed_on_call_n(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, killed_on_call_n)


if __name__ == "__main__":
    target, nth, *argv = sys.argv[1:]
    arm(target, int(nth))
    from sftkit import cli

    cli.data_main(argv)
