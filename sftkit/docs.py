"""Keep the README's flag tables generated from the settings dataclasses, so they cannot drift.

``python -m sftkit.docs`` rewrites every ``<!-- BEGIN flags:NAME -->`` … ``<!-- END flags:NAME -->``
block of README.md; ``python -m sftkit.docs --check`` exits 1 when a block is stale.
"""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from sftkit import atomic, flags

# NAME in the README marker -> the dataclass that owns those flags.
SETTINGS = {
    "create_data": "sftkit.data.config:DataConfig",
    "finetune": "sftkit.train.config:TrainConfig",
    "generate": "sftkit.generation.config:GenerateConfig",
    "demo": "sftkit.demo:DemoConfig",
}

_BLOCK = re.compile(r"(<!-- BEGIN flags:(\w+) -->\n).*?(<!-- END flags:\2 -->)", re.DOTALL)


def settings_class(name: str):
    module, _, attr = SETTINGS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def render(readme: str) -> str:
    """The README with every flags block regenerated."""
    def table(match: re.Match) -> str:
        name = match.group(2)
        if name not in SETTINGS:
            raise KeyError(f"README has a flags block {name!r}; known: {', '.join(SETTINGS)}")
        return f"{match.group(1)}{flags.markdown_table(settings_class(name))}\n{match.group(3)}"

    return _BLOCK.sub(table, readme)


def main(argv: list[str]) -> int:
    path = Path(__file__).resolve().parent.parent / "README.md"
    current = path.read_text()
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print("README.md flag tables are stale: run `python -m sftkit.docs`", file=sys.stderr)
            return 1
        return 0
    atomic.write_text(path, fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
