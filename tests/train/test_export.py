import subprocess
import sys
from pathlib import Path

import torch

from sftkit.models import apply_adapter, load_model, load_tokenizer
from sftkit.train.loop import train
from tests.train.helpers import tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_export_merges_into_a_model_that_loads_without_peft(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    train(tiny_config(tiny_llama, tmp_path, max_steps=3, val_set_size=0, learning_rate=5e-2))
    adapter, merged = tmp_path / "out", tmp_path / "merged"
    cmd = [sys.executable, str(REPO / "finetune.py"), "export", f"--base_model={tiny_llama}",
           f"--lora_weights={adapter}", f"--output_dir={merged}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()

    tokenizer = load_tokenizer(tiny_llama)
    prompt = tokenizer("<human>: What is the capital of France?\n<bot>:", return_tensors="pt")
    standalone = AutoModelForCausalLM.from_pretrained(merged).eval()
    with_adapter = apply_adapter(load_model(tiny_llama, device="cpu"), str(adapter), base_model=tiny_llama).eval()
    base = load_model(tiny_llama, device="cpu").eval()
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        merged_tokens = standalone.generate(**prompt, **kw)
        adapter_tokens = with_adapter.generate(**prompt, **kw)
        torch.testing.assert_close(standalone(**prompt).logits, with_adapter(**prompt).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(base(**prompt).logits, with_adapter(**prompt).logits, atol=1e-3)
    assert merged_tokens.tolist() == adapter_tokens.tolist()

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
