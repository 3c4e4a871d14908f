import subprocess
import sys
from pathlib import Path

import pytest

from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.pipeline import run_shard_phase
from sftkit.data.run.executors import LocalExecutor, make_executor

ROOT = Path(__file__).resolve().parents[3]


def test_without_ray_installed_the_ray_executor_says_how_to_install_it(tmp_path):
    hide_ray = "import sys; sys.modules['ray'] = None; from sftkit import cli; cli.data_main(sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", hide_ray, "download", "--source=data/sample", "--executor=ray",
                             f"--work_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install -r reqs_optional/requirements_optional_ray.txt" in result.stderr


def test_executor_choice():
    assert isinstance(make_executor(DataConfig(), run_shard_phase), LocalExecutor)
    with pytest.raises(DataError, match="--executor=spark: choose local or ray"):
        make_executor(DataConfig(executor="spark"), run_shard_phase)
