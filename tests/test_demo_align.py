"""The alignment demo's KL to the SFT model: exact per-position KL along each model's own answer."""
import pytest
import torch

from sftkit.demo_align import kl_to_reference
from sftkit.generation import GenerateConfig, build_prompt, load_models
from sftkit.prompts import encode
from tests.generation.conftest import make_adapter


def test_kl_is_zero_to_itself_positive_to_another_model_and_the_exact_sum(tiny_llama, tmp_path):
    a = make_adapter(tiny_llama, tmp_path / "a", ["q_proj", "v_proj", "down_proj"], seed=1)
    b = make_adapter(tiny_llama, tmp_path / "b", ["q_proj", "v_proj", "down_proj"], seed=3)
    settings = GenerateConfig(base_model=tiny_llama, lora_weights=f"base=,a={a},b={b}", prompt_type="human_bot",
                              max_new_tokens=8)
    models = load_models(settings)
    rows = [{"model": m, "prompt": "Who are you?", "response": "I am a helpful assistant."} for m in ("base", "a", "b")]
    kl = kl_to_reference(models, settings, rows, reference="a")
    assert kl["a"] == 0.0 and kl["b"] > 0.01 and kl["base"] > 0.01
    # The same number computed here without the demo: two plain models, the KL summed over the answer.
    from sftkit.models import apply_adapter, load_model

    prompt = build_prompt(models.tokenizer, [], "Who are you?", settings, 512).text
    start = len(encode(models.tokenizer, prompt, "human_bot")["input_ids"])
    ids = torch.tensor([encode(models.tokenizer, f"{prompt} I am a helpful assistant.", "human_bot")["input_ids"]])
    with torch.no_grad():
        p = torch.log_softmax(apply_adapter(load_model(tiny_llama, device="cpu", dtype=torch.float32), b,
                                            base_model=tiny_llama).eval()(input_ids=ids).logits[0, start - 1:-1], -1)
        q = torch.log_softmax(apply_adapter(load_model(tiny_llama, device="cpu", dtype=torch.float32), a,
                                            base_model=tiny_llama).eval()(input_ids=ids).logits[0, start - 1:-1], -1)
    assert kl["b"] == pytest.approx(float((p.exp() * (p - q)).sum()), rel=1e-4)
