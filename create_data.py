"""Raw OIG-format conversations to a clean instruct dataset, in five resumable stages.

Command line (python-fire flags; `--help` lists every one with its default):

    python create_data.py download|detox|chop|grade|finalize|all [--flag=value ...]

or one stage at a time through pytest, with settings from SFTKIT_* environment variables:

    pytest -s create_data.py::test_download_useful_data_as_parquet
    pytest -s create_data.py::test_assemble_and_detox
    pytest -s create_data.py::test_chop_by_lengths
    pytest -s create_data.py::test_grade
    pytest -s create_data.py::test_finalize_to_json

Offline, on the bundled sample: python create_data.py all --source=data/sample
"""
import sys

from sftkit import flags
from sftkit.data import DataError
from sftkit.data.config import DataConfig
from sftkit.data.pipeline import STAGES, run


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


def test_finalize_to_json():
    _stage_from_env("finalize")


def main(argv: list[str]) -> None:
    stages = " | ".join([*STAGES, "all"])
    usage = f"usage: create_data.py {{{stages}}} [--flag=value ...]"
    if not argv or argv[0].startswith("-"):
        if any(a in ("-h", "--help") for a in argv):
            flags.main(DataConfig, None, argv=["--help"], prog=f"create_data.py {{{stages}}}", summary=__doc__)
            return
        raise SystemExit(f"{usage}\nname a stage first; --help lists every flag")
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES and stage != "all":
        raise SystemExit(f"{usage}\nunknown stage {stage!r}")
    try:
        flags.main(DataConfig, lambda cfg: run(stage, cfg), argv=rest, prog=f"create_data.py {stage}")
    except DataError as exc:
        print(f"create_data.py {stage}: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
