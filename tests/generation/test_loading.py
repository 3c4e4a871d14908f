"""Loading for generation: adapters by name on one base model, checkpoints, clear errors, quantized loading."""
from dataclasses import replace

import pytest

from sftkit.generation import GenerationError, Request, build_prompt, generate_answers, load_models
from sftkit.models import ModelError
from tests.generation.conftest import answer, make_adapter, tiny_config


def test_adapter_changes_greedy_output(tiny_llama, llama, tmp_path):
    config, models = llama
    base = answer(models, config, "Who are you?")
    adapter = make_adapter(tiny_llama, tmp_path / "lora_out", ["q_proj", "v_proj", "down_proj"])
    adapted_config = replace(config, lora_weights=adapter)
    adapted_models = load_models(adapted_config)
    from peft import PeftModel

    assert isinstance(adapted_models.model, PeftModel)
    adapted = answer(adapted_models, adapted_config, "Who are you?")
    assert adapted.text != base.text


def test_newest_checkpoint_is_used_when_the_adapter_dir_has_only_checkpoints(tiny_llama, tmp_path, capsys):
    from sftkit.generation import resolve_adapter

    out = tmp_path / "lora_out"
    make_adapter(tiny_llama, out / "checkpoint-5", ["q_proj"])
    make_adapter(tiny_llama, out / "checkpoint-20", ["q_proj"])
    make_adapter(tiny_llama, out / "checkpoint-3", ["q_proj"])
    assert resolve_adapter(str(out)) == str(out / "checkpoint-20")
    assert "checkpoint-20" in capsys.readouterr().err


def test_missing_adapter_dir_is_a_clear_error(tiny_llama, tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load_models(tiny_config(tiny_llama, lora_weights=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json"):
        load_models(tiny_config(tiny_llama, lora_weights=str(tmp_path / "empty")))


def test_adapter_for_another_base_model_names_both(tiny_llama, tiny_neox, tmp_path):
    adapter = make_adapter(tiny_neox, tmp_path / "neox_lora", ["query_key_value"])
    with pytest.raises(ModelError) as err:
        load_models(tiny_config(tiny_llama, lora_weights=adapter))
    assert tiny_neox in str(err.value) and tiny_llama in str(err.value)



# ---------------------------------------------------------------- quantized loading

@pytest.mark.parametrize("bits", ["load_8bit", "load_4bit"])
def test_quantized_loading_generates(tiny_llama, bits):
    import bitsandbytes as bnb

    config = tiny_config(tiny_llama, **{bits: True})
    models = load_models(config)
    layer = bnb.nn.Linear8bitLt if bits == "load_8bit" else bnb.nn.Linear4bit
    assert any(isinstance(m, layer) for m in models.model.modules())
    result = answer(models, config, "What is the capital of France?")
    assert result.new_tokens > 0 and result.finish_reason in ("eos", "stop_string", "max_new_tokens")




# ---------------------------------------------------------------- several adapters on one base

def test_lora_weights_names_several_adapters(tmp_path):
    from sftkit.generation.loading import parse_lora_weights

    assert parse_lora_weights(None) == []
    assert parse_lora_weights("base=,tuned=lora_out") == [("base", None), ("tuned", "lora_out")]
    (tmp_path / "my lora").mkdir()
    assert parse_lora_weights(str(tmp_path / "my lora")) == [("my_lora", str(tmp_path / "my lora"))]
    assert parse_lora_weights("runs/lora_out") == [("lora_out", "runs/lora_out")]
    with pytest.raises(GenerationError, match="given twice"):
        parse_lora_weights("a=x,a=y")
    with pytest.raises(GenerationError, match="is not name=path"):
        parse_lora_weights("a=x,y")
    with pytest.raises(GenerationError, match="at most once"):
        parse_lora_weights("a=,b=")


def test_one_load_serves_every_adapter_and_a_mixed_batch_matches_each_alone(tiny_llama, two_adapters):
    from peft import PeftModel

    from sftkit.generation import load_models

    spec = f"tuned={two_adapters['tuned']},other={two_adapters['other']}"
    models = load_models(tiny_config(tiny_llama, lora_weights=spec))
    assert isinstance(models.model, PeftModel)
    assert models.names == ["base", "tuned", "other"] and models.default == "tuned" and models.base == "base"
    assert models.resolve(None) == "tuned" and models.peft_adapter("base") == "__base__"
    with pytest.raises(GenerationError, match="unknown model 'nope'; this server has base, tuned, other"):
        models.resolve("nope")
    config = tiny_config(tiny_llama)
    prompt = build_prompt(models.tokenizer, [], "Who are you?", config, 512).text
    alone = {name: generate_answers(models, [Request(prompt, name)], config)[0].text for name in models.names}
    assert len(set(alone.values())) == 3, "each adapter answers differently"
    assert alone["base"] == answer(load_models(config), config, "Who are you?").text
    mixed = generate_answers(models, [Request(prompt, name) for name in models.names], config)
    assert [a.text for a in mixed] == [alone[name] for name in models.names]
    # the default (first named) adapter answers when none is named, as a single adapter always did
    assert generate_answers(models, [prompt], config)[0].text == alone["tuned"]
