"""Shared fixtures of the generation tests: the tiny model loaded once, adapters, the tiny reward model."""
import torch
import pytest

from sftkit.generation import GenerateConfig, build_prompt, context_length, generate_answers, load_models


def tiny_config(model_dir, **overrides) -> GenerateConfig:
    settings = dict(base_model=model_dir, local_files_only=True, max_new_tokens=24, repetition_penalty=1.0)
    return GenerateConfig(**{**settings, **overrides})


def answer(models, config, message, history=()):
    """The engine's greedy answer to ``message`` after ``history``, rendered as every front end does."""
    prompt = build_prompt(models.tokenizer, list(history), message, config, context_length(models.model, config))
    return generate_answers(models, [prompt.text], config)[0]


@pytest.fixture(scope="session")
def llama(tiny_llama):
    config = tiny_config(tiny_llama)
    return config, load_models(config)


def make_adapter(base_dir, out_dir, target_modules, seed: int = 1) -> str:
    """A LoRA adapter with random (non-zero) B matrices, so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=target_modules,
                                                 init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory):
    """Directory of a tiny sequence-classification reward model (tests/data/tiny_scorers.py)."""
    from tests.data.tiny_scorers import build_reward_model

    return str(build_reward_model(tmp_path_factory.mktemp("tiny_reward")))


@pytest.fixture(scope="session")
def two_adapters(tiny_llama, tmp_path_factory):
    """Two different LoRA adapters of the tiny Llama: {name: directory}."""
    root = tmp_path_factory.mktemp("adapters")
    return {"tuned": make_adapter(tiny_llama, root / "tuned", ["q_proj", "v_proj", "down_proj"], seed=1),
            "other": make_adapter(tiny_llama, root / "other", ["q_proj", "v_proj", "down_proj"], seed=3)}
