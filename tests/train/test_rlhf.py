"""finetune.py rlhf: SFT -> reward model -> GRPO on a tiny model, each step skipped when complete,
resumed when it stopped part-way, refused when its settings changed."""
import json

import pytest
import yaml

from tests.train.helpers import run_cli, write_rows
from tests.train.toy_preferences import write_pairs

pytestmark = pytest.mark.slow

SMALL = {"cutoff_len": 64, "micro_batch_size": 4, "batch_size": 8, "report_to": "none", "warmup_steps": 0,
         "save_steps": 2, "val_set_size": 0, "learning_rate": 1e-2}


def pipeline(tiny_llama, tmp_path, *extra, train_flags=SMALL):
    return run_cli("rlhf", f"--base_model={tiny_llama}", f"--sft_data={write_rows(tmp_path / 'rows.json')}",
                   f"--preference_data={write_pairs(tmp_path / 'pairs.json')}", "--rl=grpo",
                   f"--output_dir={tmp_path / 'run'}", f"--train_flags={json.dumps(train_flags)}",
                   "--sft_flags={max_steps: 2}", "--rm_flags={max_steps: 2}", *extra)


def test_three_steps_then_skipped_resumed_or_refused(tiny_llama, tmp_path, capfd):
    rl = "--rl_flags={max_steps: 2, rollouts_per_prompt: 4, max_new_tokens: 8}"
    assert pipeline(tiny_llama, tmp_path, rl) == 0
    run = tmp_path / "run"
    assert (run / "sft" / "adapter_model.safetensors").is_file()
    assert (run / "rm" / "model.safetensors").is_file()
    assert (run / "grpo" / "adapter_model.safetensors").is_file()
    rl_settings = yaml.safe_load_all((run / "grpo" / "run_config.yaml").read_text())
    first = next(rl_settings)
    assert first["lora_weights"] == str(run / "sft") and first["reward_model"] == str(run / "rm")
    assert "reward" in json.loads((run / "grpo" / "metrics.json").read_text())["history"][-1]
    out = capfd.readouterr().out
    assert "$ " in out and "--stage=sft" in out and "--stage=grpo" in out

    # Rerun: every step is complete.
    assert pipeline(tiny_llama, tmp_path, rl) == 0
    out = capfd.readouterr().out
    for name in ("sft", "rm", "grpo"):
        assert f"{name}: {run / name} is complete, skipped" in out
    # Longer RL: the first two steps are skipped, RL resumes from its last checkpoint.
    assert pipeline(tiny_llama, tmp_path, rl.replace("max_steps: 2", "max_steps: 4")) == 0
    out = capfd.readouterr().out
    assert "3/3 grpo (resumed)" in out and "--resume_from_checkpoint=latest" in out
    assert json.loads((run / "grpo" / "metrics.json").read_text())["step"] == 4
    runs = list(yaml.safe_load_all((run / "run_config.yaml").read_text()))
    assert runs[0]["rl"] == "grpo" and len(runs) == 4
    assert runs[2]["run"]["steps"]["sft"]["status"] == "skipped (complete)"
    assert runs[3]["run"]["steps"]["grpo"]["status"] == "resumed"
    # Another setting for a finished step: refused by name, nothing run.
    assert pipeline(tiny_llama, tmp_path, rl, train_flags={**SMALL, "learning_rate": 5e-3}) == 2
    err = capfd.readouterr().err
    assert "was trained with other settings" in err and "--learning_rate: 0.01 then, 0.005 now" in err
