"""Stage 1, download: fetch each input file and convert it to parquet, streaming, with a rejects list.

Output per file in ``<work_dir>/1_download/``: ``<file>.parquet`` (text, source, file, line),
``<file>.rejects.jsonl`` (file, line, reason, excerpt of each malformed record),
``<file>.pairs.jsonl`` (OpenAssistant ranked answer pairs; empty for other formats) and a manifest.
Every input format (sftkit.data.formats) gives the same rows.
With ``--num_shards`` the files are dealt round-robin to the shards.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from sftkit.data import DataError, sources
from sftkit.data.config import OIG_USEFUL_FILES, DataConfig
from sftkit.data.fetch import download, file_url, local_source_dir
from sftkit.data.manifest import cached_step, digests
from sftkit.data.parquet_io import ParquetSink
from sftkit.data.stats import StageStats
from sftkit.data.workdir import check_shard, stage_dir

VERSION = 1
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")  # issue #10: every input format
SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("file", pa.string()), ("line", pa.int64())])


def resolve_files(cfg: DataConfig) -> list[str]:
    """``--files``, else every input file (INPUT_SUFFIXES) of a local source directory, else the useful OIG files."""
    if cfg.files:
        return list(cfg.files)
    local = local_source_dir(cfg.source)
    if local is None:
        return list(OIG_USEFUL_FILES)
    if not local.is_dir():
        raise DataError(f"--source={cfg.source}: no such directory (and not an http(s):// URL); "
                        "the bundled sample is --source=data/sample")
    names = sorted(p.name for p in local.iterdir() if p.name.endswith(INPUT_SUFFIXES))
    if not names:
        raise DataError(f"--source={cfg.source} holds no {', '.join(INPUT_SUFFIXES)} files; pass --files=NAME,...")
    return names


def parquet_path(cfg: DataConfig, name: str) -> Path:
    return stage_dir(cfg.work_dir, "download") / f"{name}.parquet"


def obtain(cfg: DataConfig, name: str) -> Path:
    """The local copy of an input file: the file itself for a local source, else a resumable download."""
    local = local_source_dir(cfg.source)
    if local is not None:
        path = local / name
        if not path.is_file():
            raise DataError(f"--source={cfg.source} has no file {name!r} (from --files); "
                            f"it holds: {', '.join(sorted(p.name for p in local.iterdir() if p.name.endswith(INPUT_SUFFIXES))) or 'nothing'}")
        return path
    return download(file_url(cfg.source, name), Path(cfg.work_dir) / "raw" / name, retries=cfg.retries,
                    backoff_s=cfg.retry_backoff_s, timeout_s=cfg.timeout_s,
                    expected_sha256=cfg.checksums.get(name))


def convert(raw: Path, name: str, out: Path, rejects: Path, cfg: DataConfig) -> StageStats:
    """Stream one input file (any format, see sftkit.data.formats) into parquet rows; malformed records
    go to ``rejects`` with their reason. OpenAssistant preference pairs go to ``<file>.pairs.jsonl``."""
    stats = StageStats(f"download {name}")
    columns: dict[str, list] = {k: [] for k in SCHEMA.names}
    tmp_rejects = rejects.with_name(f".{rejects.name}.tmp-{os.getpid()}")

    def flush(sink: ParquetSink) -> None:
        sink.write(pa.RecordBatch.from_pydict(columns, schema=SCHEMA))
        for values in columns.values():
            values.clear()

    # ---- issue #10 hook: any input format, identity rewrite (sftkit.data.sources) ----
    reader = sources.FileReader(raw, name, cfg)
    malformed = 0
    try:
        with ParquetSink(out, SCHEMA) as sink, open(tmp_rejects, "w", encoding="utf-8") as bad, \
                tqdm(desc=f"convert {name}", unit=" records", leave=False) as bar:
            for unit, rows in reader.units(stats):
                if unit.malformed:
                    malformed += 1
                    bad.write(json.dumps({"file": name, "line": unit.line, "reason": unit.reason,
                                          "excerpt": unit.excerpt}) + "\n")
                for text, source in rows:
                    for key, value in zip(SCHEMA.names, (text, source, name, unit.line)):
                        columns[key].append(value)
                if len(columns["text"]) >= cfg.batch_rows:
                    flush(sink)
                bar.update(1)
            flush(sink)
            bad.close()
            os.replace(tmp_rejects, rejects)
            reader.finish(stats, out.parent)
            if malformed > cfg.max_reject_fraction * max(stats.rows_in, 1):
                raise DataError(
                    f"{raw}: {malformed} of {stats.rows_in} lines are malformed "
                    f"({', '.join(f'{k}={v}' for k, v in sorted(stats.dropped.items()))}), more than "
                    f"--max_reject_fraction={cfg.max_reject_fraction}; see {rejects} for each file, line and "
                    "reason. Fix the input (or name its format with --input_format), or raise "
                    "--max_reject_fraction to keep the good records")
    except (EOFError, gzip.BadGzipFile, OSError, pa.ArrowException) as exc:
        raise DataError(f"{raw}: cannot read ({type(exc).__name__}: {exc}); delete it to fetch it again") from None
    finally:
        tmp_rejects.unlink(missing_ok=True)
    stats.rows_out = sink.rows
    return stats


def run(cfg: DataConfig) -> StageStats:
    check_shard(cfg.shard_index, cfg.num_shards)
    files = resolve_files(cfg)[cfg.shard_index::cfg.num_shards]
    out_dir = stage_dir(cfg.work_dir, "download")
    total = StageStats("download")
    for name in files:
        raw = obtain(cfg, name)
        out, rejects = out_dir / f"{name}.parquet", out_dir / f"{name}.rejects.jsonl"
        settings = {"version": VERSION, "max_reject_fraction": cfg.max_reject_fraction,
                    **sources.settings(cfg)}  # issue #10: format, oasst and identity settings
        stats = cached_step(f"download {name}", out_dir / f"{name}.manifest.json", digests([raw]), settings,
                            [out, rejects, sources.pairs_path(out_dir, name)],
                            lambda: convert(raw, name, out, rejects, cfg))
        print(stats.summary_line())
        total = total.merge(stats)
    return total
