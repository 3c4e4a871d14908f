"""Keep the README's flag tables generated from the settings dataclasses, so they cannot drift.

``python -m sftkit.docs`` rewrites every ``<!-- BEGIN flags:NAME -->`` … ``<!-- END flags:NAME -->``
block of README.md, and the ``<!-- BEGIN prompt-types -->`` table from sftkit.prompts; ``python -m sftkit.docs --check`` exits 1 when a block is stale.
"""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from sftkit import atomic, flags
from sftkit.prompts import PROMPT_TYPES, example_rendering, stop_strings

# NAME in the README marker -> the dataclass that owns those flags.
SETTINGS = {
    "create_data": "sftkit.data.config:DataConfig",
    "finetune": "sftkit.train.config:TrainConfig",
    "rlhf": "sftkit.train.config:RLHFConfig",
    "generate": "sftkit.generation.config:GenerateConfig",
    "demo": "sftkit.demo:DemoConfig",
    "demo_align": "sftkit.demo_align:AlignDemoConfig",
}

_BLOCK = re.compile(r"(<!-- BEGIN flags:(\w+) -->\n).*?(<!-- END flags:\2 -->)", re.DOTALL)
_PROMPT_TYPES = re.compile(r"(<!-- BEGIN prompt-types -->\n).*?(<!-- END prompt-types -->)", re.DOTALL)


def prompt_types_table() -> str:
    """Every prompt type of sftkit.prompts with its code, stops and the training text of one exchange."""
    def code(text: str) -> str:
        return "`" + text.replace("\n", "\\n").replace("|", "\\|") + "`" if text else ""

    rows = ["| type | code | training text of one exchange (the prompt is this up to the answer) | stops | meaning |",
            "| --- | --- | --- | --- | --- |"]
    for name, spec in PROMPT_TYPES.items():
        example = code(example_rendering(name)[0]) if name != "chat" else "the tokenizer's chat template"
        stops = ", ".join(code(s) for s in stop_strings(name)) or "EOS only"
        rows.append(f"| `{name}` | {'' if spec.code is None else spec.code} | {example} | {stops} | "
                    f"{spec.description.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


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

    readme = _BLOCK.sub(table, readme)
    return _PROMPT_TYPES.sub(lambda m: f"{m.group(1)}{prompt_types_table()}\n{m.group(2)}", readme)


def main(argv: list[str]) -> int:
    path = Path(__file__).resolve().parent.parent / "README.md"
    current = path.read_text()
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print("README.md flag or prompt-type tables are stale: run `python -m sftkit.docs`", file=sys.stderr)
            return 1
        return 0
    atomic.write_text(path, fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
