"""User-facing failures of finetune.py: one clear line and exit status 2, not a stack trace."""
from __future__ import annotations

import functools
import sys

from sftkit.flags import FlagError
from sftkit.models import ModelError
from sftkit.prompts import PromptError
from sftkit.train.data import DataError

USER_ERRORS = (FlagError, ModelError, PromptError, DataError, FileNotFoundError)


def run_reporting_errors(run):
    """Wrap an entry point so errors the user can fix print as ``finetune.py: error: …``."""
    @functools.wraps(run)
    def wrapped(config):
        from sftkit.train.export import ExportError
        from sftkit.train.loop import TrainError  # imports torch: only once a run starts

        try:
            return run(config)
        except (*USER_ERRORS, ExportError, TrainError) as exc:
            print(f"finetune.py: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return wrapped
