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


PROGRAM = """
import sys
from sftkit import cli
sys.argv = ["finetune.py", *sys.argv[1:]]
cli.finetune_main()
bnb = sys.modules.get("bitsandbytes", "never imported")
print("bitsandbytes:", "refused" if bnb is None else "imported" if bnb != "never imported" else bnb)
"""


@pytest.mark.parametrize("bits, expected", [(None, "refused"), ("train_8bit", "imported")])
def test_a_run_that_does_not_quantize_never_imports_bitsandbytes(bits, expected, tiny_llama, tmp_path):
    """finetune.py as the program: peft and transformers see bitsandbytes as absent (1 s of every
    start); an 8-bit run still gets it and trains."""
    import subprocess
    import sys

    args = [f"--base_model={tiny_llama}", f"--data_path={REPO / 'data' / 'formats' / 'h2ogpt_sample.json'}",
            f"--output_dir={tmp_path / 'out'}", "--max_steps=1", "--batch_size=2", "--micro_batch_size=2",
            "--cutoff_len=64", "--val_set_size=0", "--save_steps=0", "--report_to=none",
            f"--tokenized_cache_dir={tmp_path / 'cache'}"] + ([f"--{bits}=True"] if bits else [])
    done = subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"bitsandbytes: {expected}" in done.stdout
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_a_checkpoint_saved_quantized_keeps_bitsandbytes_importable(tmp_path):
    import subprocess
    import sys

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "quantized").mkdir()
    (tmp_path / "quantized" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}))
    check = ("import sys; from sftkit.cli import skip_bitsandbytes; "
             "print(skip_bitsandbytes(sys.argv[1]), sys.modules.get('bitsandbytes', 'absent'))")
    for model, expected in (("plain", "True None"), ("quantized", "False absent"), ("org/hub-model", "False absent")):
        path = str(tmp_path / model) if "/" not in model else model
        done = subprocess.run([sys.executable, "-c", check, path], capture_output=True, text=True, cwd=REPO)
        assert done.stdout.split() == expected.split(), done.stderr[-2000:]
