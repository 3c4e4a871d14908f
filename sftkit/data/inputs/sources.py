"""The download stage's reading of one input file: its format, its rows with the identity applied, its counts.

Glue between the pure parts (sftkit.data.inputs.formats, oasst, identity) and the stage: what a stage
needs to record in its manifest (``settings``), the rows to write, and the notes for the data card.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from sftkit import atomic
from sftkit.data import DataError
from sftkit.data.algorithms import identity, toolrows
from sftkit.data.config import DataConfig
from sftkit.data.inputs import formats, oasst
from sftkit.data.run.stats import StageStats

VERSION = 2  # 2: makers in their "Long Name (SHORT)" form, more self-description phrasings
PAIRS_SUFFIX = ".pairs.jsonl"
REWRITES = "identity rewrites"  # the download stats' tally of rows, names and makers rewritten


# The DataConfig fields that shape a converted file (a change re-runs its conversion).
SETTINGS = ("input_format", "oasst_paths", "oasst_langs", "bot_name", "bot_maker", "other_assistants", "other_makers")


def derived_settings(cfg: DataConfig) -> dict:
    """Checked once per run; the reader's version joins the cache key so a reader change re-runs conversion."""
    if cfg.oasst_paths not in ("all", "best"):
        raise DataError(f"--oasst_paths={cfg.oasst_paths}: choose all or best")
    return {"formats_version": VERSION}


def identity_of(cfg: DataConfig) -> identity.Identity:
    return identity.compile_identity(cfg.bot_name, cfg.bot_maker, cfg.other_assistants, cfg.other_makers)


def pairs_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}{PAIRS_SUFFIX}"


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(counter.items()))


class FileReader:
    """Reads one file unit by unit, applying the identity rules, and keeps the counts for its notes."""

    def __init__(self, raw: Path, name: str, cfg: DataConfig):
        self.name = name
        self.format = formats.detect(raw, cfg.input_format)
        self.raw = raw
        self.options = formats.ReadOptions(cfg.oasst_paths, oasst.parse_langs(cfg.oasst_langs))
        self.identity = identity_of(cfg)
        # OIG rows keep today's source (their metadata's, else the file's stem); other formats: file:format
        self.default_source = (name.split(".")[0] if self.format.name == "oig"
                               else formats.source_name(name, self.format))
        self.events: Counter = Counter()
        self.rewrites: Counter = Counter()
        self.pairs: list[dict] = []
        self.pair_drops: Counter = Counter()

    def _pair(self, pair: dict) -> dict | None:
        texts = [pair["chosen"], pair["rejected"]] + [m["content"] for m in pair["prompt"] if m["role"] == "assistant"]
        fixed = []
        for text in texts:
            new, events = identity.apply_to_answer(text, self.identity)
            if new is None:
                self.pair_drops.update(events)
                return None
            fixed.append(new)
        prompt, answers = [], iter(fixed[2:])
        for message in pair["prompt"]:
            content = next(answers) if message["role"] == "assistant" else message["content"]
            prompt.append({"role": message["role"], "content": content})
        return {"prompt": prompt, "chosen": fixed[0], "rejected": fixed[1], "source": pair["source"]}

    def units(self, stats: StageStats) -> Iterator[tuple[formats.Unit, list[tuple[str, str, str | None]]]]:
        """Each unit with its rows ``(text, source, tool conversation or None)``; ``stats`` counts records in,
        drops and extra paths."""
        for unit in formats.read_units(self.raw, self.name, self.format, self.options):
            stats.rows_in += 1
            self.events.update(unit.events)
            if not unit.texts:
                stats.drop(unit.reason or "no_conversation", 1)
                yield unit, []
                continue
            stats.add("oasst_extra_path", len(unit.texts) - 1)
            rows = []
            for text, tools in zip(unit.texts, unit.tools):
                new, events = identity.apply(text, self.identity)
                if new is None:
                    stats.drop(next(iter(events)), 1)
                else:
                    self.rewrites.update(events, rows=1 if events else 0)
                    rows.append((new, unit.source or self.default_source,
                                 toolrows.payload(*tools, new) if tools else None))
            for pair in unit.pairs:
                kept = self._pair(pair)
                if kept is not None:
                    self.pairs.append(kept)
            yield unit, rows

    def finish(self, stats: StageStats, out_dir: Path) -> None:
        """Write the preference pairs beside the parquet and add this file's notes to ``stats``."""
        atomic.write_text(pairs_path(out_dir, self.name),
                          "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in self.pairs))
        stats.notes.append(f"{self.name}: format {self.format.describe()}")
        merged = self.events.pop("merged_rows", 0)
        if merged:
            stats.notes.append(f"{self.name}: {merged:,} message rows merged into their trees")
        if self.events:
            stats.notes.append(f"{self.name}: oasst messages left out (with their replies): {_counts(self.events)}")
        if +self.rewrites:  # rows whose self-description was rewritten, and the names and makers replaced
            stats.count(REWRITES, +self.rewrites)
            stats.notes.append(f"{self.name}: identity rewritten to {self.identity.name} / {self.identity.maker}")
        if self.format.name in formats.OASST_FORMATS:
            stats.notes.append(f"{self.name}: {len(self.pairs):,} ranked answer pairs"
                               + (f" (dropped by identity: {_counts(self.pair_drops)})" if self.pair_drops else ""))
