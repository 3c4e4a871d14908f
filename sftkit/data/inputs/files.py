"""Which input files a run reads, and the local copy of each (the file itself, or a resumable download)."""
from __future__ import annotations

from pathlib import Path

from sftkit.data import DataError
from sftkit.data.config import OIG_USEFUL_FILES, DataConfig
from sftkit.data.inputs.fetch import download, file_url, local_source_dir

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")  # issue #10: every input format


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
