import json
import re
from pathlib import Path

import pytest
import yaml

from sftkit.train.config import TrainConfig
from tests.train.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]




def test_help_lists_every_flag_with_its_default(capsys):
    import dataclasses

    assert run_cli("--help") in (0, None)
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}=" in out
    assert "['smollm2-135m-instruct']" in out


@pytest.mark.parametrize("args, message", [
    (["--prompt_type=alpacca"], "unknown prompt_type 'alpacca'"),
    (["--data_path={missing}"], "missing.json: no such file"),
    (["--lerning_rate=1"], "did you mean --learning_rate"),
    (["--data_path={nobot}"], "no usable rows out of 2.*no bot turn"),
])
def test_bad_input_is_one_clear_line(args, message, tiny_llama, tmp_path, capsys):
    (tmp_path / "nobot.json").write_text(json.dumps([{"input": "<human>: hi"}, {"text": "just text"}]))
    args = [a.format(missing=tmp_path / "missing.json", nobot=tmp_path / "nobot.json") for a in args]
    code = run_cli(f"--base_model={tiny_llama}", f"--output_dir={tmp_path / 'out'}", *args)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert re.search(message, err.splitlines()[-1]), err[-1000:]


def test_shipped_recipes_are_valid_flags():
    from sftkit.flags import parse

    for recipe in (REPO / "configs" / "smollm2_lora.yaml", REPO / "configs" / "smollm2_qlora.yaml"):
        assert isinstance(yaml.safe_load(recipe.read_text()), dict)
        parse(TrainConfig, {"config": str(recipe)}, environ={})
