"""What every stage shares: flags refused where they do not apply, full fine-tuning, bf16 autocast on the CPU."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftkit.train.loop import train
from tests.train.helpers import run_cli, tiny_config
from tests.train.toy_preferences import pair_config

REPO = Path(__file__).resolve().parents[2]




@pytest.mark.parametrize("args, message", [
    (["--stage=kto"], "--stage must be one of sft, rm, dpo, ppo, grpo"),
    (["--stage=ppo"], "--stage=ppo needs a reward: --reward_model"),
    (["--kl_coef=0.1"], "--kl_coef only applies to --stage=ppo or --stage=grpo"),
    (["--stage=grpo", "--reward_funcs=m:f", "--vf_coef=0.5"], "--vf_coef only applies to --stage=ppo"),
    (["--stage=grpo", "--reward_funcs=m:f", "--rollouts_per_prompt=1"], "at least 2 for grpo"),
    (["--stage=ppo", "--reward_funcs=m:f", "--reward_weights=1,2"], "--reward_weights: 2 weights for 1 rewards"),
    (["--stage=ppo", "--reward_funcs=m:f", "--val_set_size=10"], "--val_set_size does not apply to --stage=ppo"),
    (["--stage=grpo", "--reward_funcs=m:f", "--pack=True"], "--pack does not apply to --stage=grpo"),
    (["--stage=grpo", "--reward_funcs=m:f", "--lora_r=0"], "--stage=grpo trains a LoRA adapter"),
    (["--stage=grpo", "--reward_funcs=m:f", "--max_new_tokens=600"], "--max_new_tokens must be at least 1 and below"),
    (["--beta=0.5"], "--beta only applies to --stage=dpo"),
    (["--stage=rm", "--dpo_loss=ipo"], "--dpo_loss only applies to --stage=dpo"),
    (["--stage=dpo", "--pack=True"], "--pack does not apply to --stage=dpo"),
    (["--stage=rm", "--val_metrics=rouge"], "--val_metrics does not apply to --stage=rm"),
    (["--stage=rm", "--lora_weights=x"], "--lora_weights does not apply to --stage=rm"),
    (["--lora_r=0", "--train_4bit=True"], "full fine-tuning trains every weight"),
    (["--stage=dpo", "--finetune_method=full"], "--stage=dpo trains a LoRA adapter"),
])
def test_flags_of_another_stage_are_refused_in_one_line(args, message, tiny_llama, tmp_path, capsys):
    code = run_cli(f"--base_model={tiny_llama}", f"--output_dir={tmp_path / 'out'}", "--report_to=none", *args)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert re.search(re.escape(message), err.splitlines()[-1]), err[-1000:]


def test_full_finetuning_trains_every_weight_resumes_and_exports(tiny_llama, tmp_path):
    common = dict(lora_r=0, learning_rate=1e-3, lr_scheduler="constant", save_steps=2, val_set_size=0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    metrics = train(tiny_config(tiny_llama, tmp_path / "a", max_steps=4, **common))
    assert metrics["run"]["full_finetune"] and metrics["run"]["trainable_params"] == metrics["run"]["total_params"]
    train(tiny_config(tiny_llama, tmp_path / "b", max_steps=2, **common))
    train(tiny_config(tiny_llama, tmp_path / "b", max_steps=4, resume_from_checkpoint="latest", **common))
    a, b = (load_file(str(tmp_path / x / "out" / "model.safetensors")) for x in "ab")
    base = load_file(str(Path(tiny_llama) / "model.safetensors"))
    assert a.keys() == base.keys() and not (tmp_path / "a" / "out" / "adapter_config.json").exists()
    assert all(not torch.equal(a[k], base[k]) for k in a if k.endswith("q_proj.weight"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    merged = tmp_path / "merged"
    done = subprocess.run([sys.executable, str(REPO / "finetune.py"), "export", f"--base_model={tiny_llama}",
                           f"--lora_weights={tmp_path / 'a' / 'out'}", f"--output_dir={merged}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    exported = load_file(str(merged / "model.safetensors"))
    torch.testing.assert_close(exported["model.layers.0.self_attn.q_proj.weight"],
                               a["model.layers.0.self_attn.q_proj.weight"])


def test_full_finetuning_of_a_reward_model(tiny_llama, tmp_path):
    metrics = train(pair_config(tiny_llama, tmp_path, "rm", finetune_method="full", max_steps=3, learning_rate=1e-3))
    assert metrics["run"]["trainable_params"] == metrics["run"]["total_params"]
    assert metrics["eval_accuracy"] > 0.5


def test_bf16_on_the_cpu_is_autocast_over_float32_weights(tiny_llama, tmp_path):
    metrics = train(tiny_config(tiny_llama, tmp_path, bf16=True, pack=True, max_steps=3, val_set_size=0,
                                lora_dropout=0.0))
    assert metrics["run"]["dtype"] == "float32 weights, bfloat16 autocast"
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in adapter.values())  # master weights stay float32
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert all(h["loss"] == h["loss"] and h["loss"] > 0 for h in metrics["history"])  # finite, learned
