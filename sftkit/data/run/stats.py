"""Per-stage counts: rows in and out, and why rows were dropped or added."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class StageStats:
    """Counts for one stage (or one part of it). ``rows_in + added - dropped == rows_out`` always holds."""

    stage: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    added: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    counted: dict[str, Counter] = field(default_factory=dict)  # other tallies by topic, added up on merge

    def count(self, topic: str, counts: Counter) -> None:
        if counts:
            self.counted[topic] = self.counted.get(topic, Counter()) + Counter(counts)

    def _counted_sum(self, other: "StageStats") -> dict[str, Counter]:
        return {topic: self.counted.get(topic, Counter()) + other.counted.get(topic, Counter())
                for topic in sorted(self.counted.keys() | other.counted.keys())}

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] += int(n)

    def add(self, reason: str, n: int) -> None:
        if n:
            self.added[reason] += int(n)

    def balanced(self) -> bool:
        return self.rows_in + sum(self.added.values()) - sum(self.dropped.values()) == self.rows_out

    def merge(self, other: "StageStats") -> "StageStats":
        """Counts of two independent pieces (files, shards) added up; notes sorted, so any split agrees."""
        merged = StageStats(self.stage, self.rows_in + other.rows_in, self.rows_out + other.rows_out,
                            self.dropped + other.dropped, self.added + other.added,
                            sorted(set(self.notes + other.notes)), self._counted_sum(other))
        return merged

    def then(self, later: "StageStats") -> "StageStats":
        """This step followed by ``later`` (which read this step's output) as one stage."""
        return StageStats(self.stage, self.rows_in, later.rows_out, self.dropped + later.dropped,
                          self.added + later.added, list(dict.fromkeys(self.notes + later.notes)),
                          self._counted_sum(later))

    def summary_line(self) -> str:
        line = f"[{self.stage}] rows in {self.rows_in:,} -> out {self.rows_out:,}"
        if self.added:
            line += "; added " + ", ".join(f"{k}={v:,}" for k, v in sorted(self.added.items()))
        line += "; dropped " + (", ".join(f"{k}={v:,}" for k, v in sorted(self.dropped.items())) or "none")
        for topic, counts in sorted(self.counted.items()):
            line += f"; {topic}: " + ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items()))
        if self.notes:
            line += "; " + "; ".join(self.notes)
        return line

    def to_dict(self) -> dict:
        return {"stage": self.stage, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "dropped": dict(sorted(self.dropped.items())), "added": dict(sorted(self.added.items())),
                "notes": list(self.notes),
                "counted": {t: dict(sorted(c.items())) for t, c in sorted(self.counted.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> "StageStats":
        return cls(data["stage"], data["rows_in"], data["rows_out"], Counter(data.get("dropped", {})),
                   Counter(data.get("added", {})), list(data.get("notes", [])),
                   {t: Counter(c) for t, c in data.get("counted", {}).items()})
