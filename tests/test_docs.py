"""The README's flag tables are generated from the settings dataclasses and must be current."""
import dataclasses
from pathlib import Path

import pytest

from sftkit import docs

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_flag_tables_are_current():
    text = README.read_text()
    assert docs.render(text) == text, "README.md flag tables are stale: run `python -m sftkit.docs`"


@pytest.mark.parametrize("name", sorted(docs.SETTINGS))
def test_every_flag_is_in_the_readme(name):
    text = README.read_text()
    assert f"<!-- BEGIN flags:{name} -->" in text
    for field in dataclasses.fields(docs.settings_class(name)):
        assert f"`--{field.name}`" in text, f"--{field.name} of {name} missing from README.md"


def test_stale_table_is_detected():
    fresh = docs.render(README.read_text())
    stale = fresh.replace("| `--learning_rate` |", "| `--learning_rate_old` |", 1)
    assert stale != fresh and docs.render(stale) == fresh


def test_unknown_block_name_is_an_error():
    with pytest.raises(KeyError, match="nosuch"):
        docs.render("<!-- BEGIN flags:nosuch -->\n<!-- END flags:nosuch -->")


def test_readme_lists_every_prompt_type_with_an_example():
    from sftkit.prompts import PROMPT_TYPES

    text = README.read_text()
    block = text[text.index("<!-- BEGIN prompt-types -->"):text.index("<!-- END prompt-types -->")]
    for name in PROMPT_TYPES:
        assert f"| `{name}` |" in block
    assert "`<human>: Who are you?\\n<bot>:I am sftkit's assistant.`" in block
