"""Raw OIG-format conversations to a clean instruct dataset, in five resumable stages.

Command line (python-fire flags; `--help` lists every one with its default):

    python create_data.py download|detox|chop|grade|finalize|all [--flag=value ...]

or one stage at a time through pytest, with settings from SFTKIT_* environment variables:

    pytest -s create_data.py::test_download_useful_data_as_parquet
    pytest -s create_data.py::test_assemble_and_detox
    pytest -s create_data.py::test_chop_by_lengths
    pytest -s create_data.py::test_grade
    pytest -s create_data.py::test_add_open_assistant   (when --files holds an OpenAssistant export)
    pytest -s create_data.py::test_finalize_to_json

Offline, on the bundled sample: python create_data.py all --source=data/sample
"""
import sys

from sftkit import cli, flags
from sftkit.data.config import DataConfig
from sftkit.data.pipeline import add_open_assistant, run


def _stage_from_env(stage: str) -> None:
    run(stage, flags.parse(DataConfig))


def test_download_useful_data_as_parquet():
    _stage_from_env("download")


def test_assemble_and_detox():
    _stage_from_env("detox")


def test_chop_by_lengths():
    _stage_from_env("chop")


def test_grade():
    _stage_from_env("grade")


def test_add_open_assistant():
    add_open_assistant(flags.parse(DataConfig))


def test_finalize_to_json():
    _stage_from_env("finalize")


if __name__ == "__main__":
    cli.data_main(sys.argv[1:], summary=__doc__)
