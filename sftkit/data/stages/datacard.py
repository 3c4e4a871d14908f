"""The data card finalize writes beside its output: counts kept and dropped by every stage and reason,
as JSON and Markdown."""
from __future__ import annotations

import json
from pathlib import Path

from sftkit.data.config import DataConfig
from sftkit.data.inputs.files import resolve_files
from sftkit.data.inputs.sources import REWRITES
from sftkit.data.run.manifest import stored_stats
from sftkit.data.run.stats import StageStats
from sftkit.data.run.workdir import stage_dir, stage_parts


def earlier_stages(cfg: DataConfig) -> list[StageStats]:
    """Each earlier stage's counts, merged over its files or shards, from the manifests it wrote."""
    download_dir = stage_dir(cfg.work_dir, "download")
    stages = [StageStats("download")]
    for name in resolve_files(cfg):
        stages[0] = stages[0].merge(stored_stats(download_dir / f"{name}.manifest.json"))
    for stage in ("detox", "chop", "grade"):
        merged = StageStats(stage)
        for part in stage_parts(cfg.work_dir, stage, "finalize"):
            merged = merged.merge(stored_stats(part.with_suffix(".manifest.json")))
        stages.append(merged)
    return stages


def input_files(cfg: DataConfig) -> list[dict]:
    """Per input file, from its download manifest: format, records in, rows out, drops, additions and the
    sha256 of the file as converted (so a user can pin it with ``--checksums``)."""
    download_dir = stage_dir(cfg.work_dir, "download")
    table = []
    for name in resolve_files(cfg):
        manifest_path = download_dir / f"{name}.manifest.json"
        stats = stored_stats(manifest_path)
        digest = json.loads(manifest_path.read_text(encoding="utf-8"))["inputs"][0]["sha256"]
        fmt = next((n.split(": format ", 1)[1] for n in stats.notes if n.startswith(f"{name}: format ")), "?")
        table.append({"file": name, "format": fmt, "records": stats.rows_in, "rows": stats.rows_out,
                      "dropped": dict(sorted(stats.dropped.items())), "added": dict(sorted(stats.added.items())),
                      "identity_rewrites": dict(sorted(stats.counted.get(REWRITES, {}).items())), "sha256": digest})
    return table


def rewrites_cell(counts: dict) -> str:
    """``8 rows (names 8, makers 4)``: the rows of a file whose self-description was rewritten."""
    if not counts:
        return "-"
    return (f"{counts.get('rows', 0):,} rows (names {counts.get('rewrite_name', 0):,}, "
            f"makers {counts.get('rewrite_maker', 0):,})")


def build(stages: list[StageStats], output: Path, sources: dict[str, int], settings: dict,
          inputs: list[dict[str, str]] = ()) -> dict:
    return {"output": output.name, "rows": stages[-1].rows_out, "rows_by_source": dict(sorted(sources.items())),
            "inputs": list(inputs), "stages": [dict(s.to_dict(), balanced=s.balanced()) for s in stages],
            "settings": settings}


def markdown(card: dict) -> str:
    lines = [f"# Data card: {card['output']}", "", f"{card['rows']:,} rows.", "",
             "| stage | rows in | added | dropped (by reason) | rows out |", "| --- | ---: | --- | --- | ---: |"]
    for s in card["stages"]:
        added = ", ".join(f"{k} +{v:,}" for k, v in s["added"].items()) or "-"
        dropped = ", ".join(f"{k} {v:,}" for k, v in s["dropped"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['rows_in']:,} | {added} | {dropped} | {s['rows_out']:,} |")
    notes = [f"- {s['stage']}: {topic}: " + ", ".join(f"{k}={v:,}" for k, v in counts.items())
             for s in card["stages"] for topic, counts in s.get("counted", {}).items()]
    notes += [f"- {s['stage']}: {note}" for s in card["stages"] for note in s["notes"]]
    if notes:
        lines += ["", "Notes:", *notes]
    if card.get("inputs"):  # per input file: its format, what the download stage kept, and its sha256
        lines += ["", "| input file | format | records | rows | dropped (by reason) | identity rewrites | sha256 |",
                  "| --- | --- | ---: | ---: | --- | --- | --- |"]
        lines += [f"| {f['file']} | {f['format']} | {f['records']:,} | {f['rows']:,} | "
                  f"{', '.join(f'{k} {v:,}' for k, v in f['dropped'].items()) or '-'} | "
                  f"{rewrites_cell(f.get('identity_rewrites', {}))} | `{f['sha256']}` |" for f in card["inputs"]]
    lines += ["", "| source | rows |", "| --- | ---: |"]
    lines += [f"| {name} | {n:,} |" for name, n in card["rows_by_source"].items()]
    lines += ["", "Settings:", "", "```json", json.dumps(card["settings"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)
