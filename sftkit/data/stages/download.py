"""Stage 1, download: fetch each input file and convert it to parquet, streaming, with a rejects list.

Output per file in ``<work_dir>/1_download/``: ``<file>.parquet`` (text, source, file, line, and a tool
conversation's messages: sftkit.data.algorithms.toolrows),
``<file>.rejects.jsonl`` (file, line, reason, excerpt of each malformed record),
``<file>.pairs.jsonl`` (OpenAssistant ranked answer pairs; empty for other formats) and a manifest.
Every input format (sftkit.data.inputs.formats) gives the same rows.
With ``--num_shards`` the files are dealt round-robin to the shards.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from sftkit import atomic, json_records
from sftkit.data import DataError
from sftkit.data.algorithms import toolrows
from sftkit.data.config import DataConfig
from sftkit.data.inputs import sources
from sftkit.data.inputs.fetch import local_source_dir
from sftkit.data.inputs.files import obtain, resolve_files
from sftkit.data.run.contract import Shard, ShardPhase, Stage, Step
from sftkit.data.run.parquet_io import ParquetSink
from sftkit.data.run.stats import StageStats
from sftkit.data.run.workdir import download_part, stage_dir

VERSION = 2  # 2: tool conversations kept, with their messages
SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("file", pa.string()), ("line", pa.int64()),
                    (toolrows.COLUMN, pa.string())])


WHOLE_OBJECT_CHECK_BYTES = 64 << 20  # a larger file is not read whole to explain its error
READ_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, OSError, pa.ArrowException)


def _unreadable(raw: Path, downloaded: bool, exc: BaseException) -> DataError:
    """A damaged input, reported as the input's fault, with the fix."""
    fix = ("it was downloaded: delete it to fetch it again" if downloaded else
           "it is an input file: replace it with a complete copy, or leave it out of --files")
    return DataError(f"input {raw}: cannot read ({type(exc).__name__}: {exc}); {fix}")


def one_object_note(raw: Path, stats: StageStats) -> str:
    """When no line parses because the file is one JSON object written over several lines, say so."""
    if set(stats.dropped) != {"bad_json"}:
        return ""
    try:
        with open(raw, "rb") as fh:
            opener = gzip.open if fh.read(2) == b"\x1f\x8b" else open
        with opener(raw, "rb") as fh:
            data = fh.read(WHOLE_OBJECT_CHECK_BYTES + 1)
    except READ_ERRORS:
        return ""
    record = None
    if len(data) <= WHOLE_OBJECT_CHECK_BYTES:
        record, _ = json_records.parse_record(data.decode("utf-8", errors="replace"))
    if not isinstance(record, dict):
        return ""
    return (f" (the file is one JSON object with keys {sorted(record)[:8]}, not one record per line: write "
            "one JSON object per line, or a JSON list of them)")


def read_units(reader: sources.FileReader, stats: StageStats, raw: Path, downloaded: bool):
    """The records of an input file, with read errors blamed on the input (not the output being written)."""
    try:
        yield from reader.units(stats)
    except READ_ERRORS as exc:
        raise _unreadable(raw, downloaded, exc) from None


def convert(raw: Path, name: str, out: Path, rejects: Path, cfg: DataConfig) -> StageStats:
    """Stream one input file (any format, see sftkit.data.inputs.formats) into parquet rows; malformed records
    go to ``rejects`` with their reason. OpenAssistant preference pairs go to ``<file>.pairs.jsonl``."""
    stats = StageStats(f"download {name}")
    columns: dict[str, list] = {k: [] for k in SCHEMA.names}
    downloaded = local_source_dir(cfg.source) is None

    def flush(sink: ParquetSink) -> None:
        sink.write(pa.RecordBatch.from_pydict(columns, schema=SCHEMA))
        for values in columns.values():
            values.clear()

    # ---- issue #10 hook: any input format, identity rewrite (sftkit.data.inputs.sources) ----
    try:
        reader = sources.FileReader(raw, name, cfg)
    except READ_ERRORS as exc:
        raise _unreadable(raw, downloaded, exc) from None
    malformed = 0
    try:
        with ParquetSink(out, SCHEMA) as sink:
            # The rejects are renamed into place before the check below, so a refused file still shows them.
            with atomic.replacing(rejects) as tmp_rejects, open(tmp_rejects, "w", encoding="utf-8") as bad, \
                    tqdm(desc=f"convert {name}", unit=" records", leave=False) as bar:
                for unit, rows in read_units(reader, stats, raw, downloaded):
                    if unit.malformed:
                        malformed += 1
                        bad.write(json.dumps({"file": name, "line": unit.line, "reason": unit.reason,
                                              "excerpt": unit.excerpt}) + "\n")
                    for text, source, tools in rows:
                        for key, value in zip(SCHEMA.names, (text, source, name, unit.line, tools)):
                            columns[key].append(value)
                    if len(columns["text"]) >= cfg.batch_rows:
                        flush(sink)
                    bar.update(1)
                flush(sink)
            reader.finish(stats, out.parent)
            if malformed > cfg.max_reject_fraction * max(stats.rows_in, 1):
                raise DataError(
                    f"{raw}: {malformed} of {stats.rows_in} lines are malformed{one_object_note(raw, stats)} "
                    f"({', '.join(f'{k}={v}' for k, v in sorted(stats.dropped.items()))}), more than "
                    f"--max_reject_fraction={cfg.max_reject_fraction}; see {rejects} for each file, line and "
                    "reason. Fix the input (or name its format with --input_format), or raise "
                    "--max_reject_fraction to keep the good records")
    except OSError as exc:  # reading errors are DataErrors by now: this is an output that cannot be written
        raise DataError(f"output {exc.filename or out}: cannot write ({exc.strerror or exc}); it is in "
                        f"--work_dir={cfg.work_dir}: make that a writable directory with free space") from None
    stats.rows_out = sink.rows
    return stats


def file_steps(cfg: DataConfig, shard: Shard) -> list[Step]:
    """One step per input file of this shard; the file is fetched here, by the worker that converts it."""
    out_dir = stage_dir(cfg.work_dir, "download")
    steps = []
    for name in resolve_files(cfg)[shard.index::shard.count]:
        raw = obtain(cfg, name)
        out, rejects = download_part(cfg.work_dir, name), out_dir / f"{name}.rejects.jsonl"
        steps.append(Step(f"download {name}", out_dir / f"{name}.manifest.json", [raw],
                          [out, rejects, sources.pairs_path(out_dir, name)],
                          ("max_reject_fraction", *sources.SETTINGS),
                          lambda raw=raw, name=name, out=out, rejects=rejects: convert(raw, name, out, rejects, cfg),
                          derived=sources.derived_settings(cfg)))
    return steps


STAGE = Stage(
    "download", VERSION, [ShardPhase(file_steps, combine="merge")],
    num_shards=lambda cfg: cfg.num_shards,
    describe=lambda cfg, shard: ", ".join(resolve_files(cfg)[shard.index::shard.count]) or "no files",
    check=lambda cfg: resolve_files(cfg) and None,
    temp_dirs=lambda cfg: [stage_dir(cfg.work_dir, "download"), Path(cfg.work_dir) / "raw"])

