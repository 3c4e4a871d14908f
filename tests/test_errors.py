"""One error family, one reporter: every script prints one line and exits 2 for a user's mistake."""
import subprocess
import sys
from pathlib import Path

import pytest

from sftkit import errors

ROOT = Path(__file__).resolve().parents[1]


def script(*argv, **kwargs):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("argv, says", [
    (["create_data.py", "chop", "--work_dir=/nonexistent/work"], "chop needs the output of detox"),
    (["finetune.py", "--data_path=/nonexistent/rows.json", "--output_dir=/tmp/never-written"], "/nonexistent/rows.json"),
    (["generate.py", "--eval_prompts_file=/nonexistent/prompts.json", "--eval_output_file=/tmp/a.json"],
     "/nonexistent/prompts.json"),
])
def test_each_script_reports_a_user_error_in_one_line_and_exit_2(argv, says):
    plain = script(*argv)
    assert plain.returncode == errors.EXIT_USER_ERROR, plain.stderr
    last = plain.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{argv[0]}") and ": error: " in last and says in last
    assert "Traceback" not in plain.stderr
    debug = script(*argv, "--debug=True")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and says in debug.stderr


def test_every_user_error_class_shares_the_base():
    for cls in (errors.FlagError, errors.DataError, errors.PromptError, errors.ModelError, errors.ScorerError,
                errors.TrainError, errors.ExportError, errors.GenerationError, errors.LockError):
        assert issubclass(cls, errors.SftkitError)


def test_report_keeps_the_traceback_of_bugs():
    def bug():
        raise KeyError("a bug, not a user's mistake")

    with pytest.raises(KeyError):
        errors.report("prog", bug)
