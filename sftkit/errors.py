"""One error family for every entry point, and one way to report it.

A user's mistake (a bad flag, an unreadable file, a model that is not there) raises a
subclass of :class:`SftkitError` whose message names the file, row or flag and says what
to do. The three scripts report such errors the same way: one line on stderr and exit
status :data:`EXIT_USER_ERROR`; the traceback only with ``--debug=True``. Anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

EXIT_USER_ERROR = 2

T = TypeVar("T")


class SftkitError(Exception):
    """Something the user can fix; the message says what."""


class FlagError(SftkitError, ValueError):
    """A flag, recipe key or environment variable that cannot be used as given."""


class DataError(SftkitError):
    """Input data, settings or an environment that a data stage or the trainer cannot work with."""


class PromptError(SftkitError, ValueError):
    """A conversation or prompt type that cannot be rendered."""


class ModelError(SftkitError):
    """A model, tokenizer or adapter that cannot be found or loaded."""


class ScorerError(DataError):
    """A scoring model (reward, toxicity) whose weights are missing or unusable."""


class TrainError(SftkitError):
    """A training run that cannot start or continue as configured."""


class ExportError(SftkitError):
    """An adapter that cannot be merged and written out."""


class GenerationError(SftkitError):
    """A generation request or batch file that cannot be answered."""


class LockError(SftkitError):
    """Another run holds the output directory."""


class OutputError(SftkitError):
    """An output location that cannot be created or written (read-only filesystem, no permission)."""


def report(prog: str, run: Callable[[], T], debug: bool = False) -> T:
    """Call ``run()``; turn an :class:`SftkitError` into ``prog: error: …`` and exit status 2."""
    try:
        return run()
    except SftkitError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
