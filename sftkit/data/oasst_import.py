"""h2oGPT's ``test_add_open_assistant`` step: bring the OpenAssistant inputs into the work directory.

In h2oGPT the OpenAssistant conversations are flattened by a separate step and merged by
``test_finalize_to_json``. Here they are ordinary inputs: this step checks that ``--files`` (or the
source directory) holds an OpenAssistant export, runs the stages before finalize over all inputs
(each reused when its inputs and settings are unchanged, so after the OIG stages only the new
files' work is done again) and writes ``oasst_pairs.json``; ``test_finalize_to_json`` then merges
them. ``create_data.py all`` with the same files does the same in one go.
"""
from __future__ import annotations

from sftkit.data import DataError
from sftkit.data.inputs import formats
from sftkit.data.config import DataConfig
from sftkit.data.stages.download import obtain, resolve_files
from sftkit.data.stages.finalize_extras import write_oasst_pairs
from sftkit.data.run.stats import StageStats

STAGES_BEFORE_FINALIZE = ("download", "detox", "chop", "grade")


def oasst_inputs(cfg: DataConfig) -> list[str]:
    """The input files that are OpenAssistant exports (detected, or named by --input_format)."""
    return [name for name in resolve_files(cfg)
            if formats.detect(obtain(cfg, name), cfg.input_format).name in formats.OASST_FORMATS]


def run(cfg: DataConfig) -> list[StageStats]:
    from sftkit.data.pipeline import run_stage

    found = oasst_inputs(cfg)
    if not found:
        raise DataError("add_open_assistant: none of the input files is an OpenAssistant export (message trees "
                        "or the flat oasst1 message table); add one to --files (e.g. "
                        "--files=<your OIG files>,2023-04-12_oasst_ready.trees.jsonl.gz)")
    print(f"[add_open_assistant] OpenAssistant inputs: {', '.join(found)}")
    stats = [run_stage(stage, cfg) for stage in STAGES_BEFORE_FINALIZE]
    write_oasst_pairs(cfg)
    return stats
