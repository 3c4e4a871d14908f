import json

import pytest
import torch
from safetensors.torch import load_file

from sftkit.flags import FlagError
from sftkit.train.data import DataError
from sftkit.train.loop import TrainError, train
from tests.train.helpers import tiny_config, write_rows


# The tiny random models' output heads are too weak to move their near-uniform predictions,
# so memorisation adapts the head as well as attention and MLP layers.
TARGETS = {"tiny_llama": ["q_proj", "v_proj", "down_proj", "lm_head"],
           "tiny_neox": ["query_key_value", "dense_4h_to_h", "embed_out"]}


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_neox"])
def test_loss_falls_on_a_memorisation_set(arch, request, tmp_path):
    config = tiny_config(request.getfixturevalue(arch), tmp_path, max_steps=25, val_set_size=0, save_steps=0,
                         lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_target_modules=TARGETS[arch],
                         pack=arch == "tiny_neox")
    metrics = train(config)
    losses = [h["loss"] for h in metrics["history"] if "loss" in h]
    assert losses[-1] < losses[0] - 0.5, losses  # nats; from ln(vocab) ≈ 5.95 at the start
    out = tmp_path / "out"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "run_config.yaml",
                 "metrics.json", "checkpoint-25/optimizer.pt"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["step"] == 25 and saved["tokens_per_s"] > 0 and saved["data"]["train"]["truncated"] == 0


def test_validation_loss_metrics_and_tensorboard(tiny_llama, tmp_path):
    metrics = train(tiny_config(tiny_llama, tmp_path, max_steps=2, eval_steps=1, report_to="tensorboard",
                                val_metrics=["bleu", "sacrebleu", "rouge", "meteor"], val_max_new_tokens=8,
                                group_by_length=True))
    evals = [h for h in metrics["history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [1, 2]
    for key in ("eval_loss", "eval_bleu", "eval_sacrebleu", "eval_rougeL", "eval_meteor"):
        assert key in metrics and metrics[key] >= 0
    assert metrics["data"]["valid"]["kept"] == 4
    assert list((tmp_path / "out" / "logs").glob("events.out.tfevents.*"))


def test_resume_continues_from_the_saved_step_exactly(tiny_llama, tmp_path):
    common = dict(lr_scheduler="constant", save_steps=2, lora_dropout=0.1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(tiny_config(tiny_llama, tmp_path / "a", max_steps=4, **common))
    train(tiny_config(tiny_llama, tmp_path / "b", max_steps=2, **common))
    resumed = train(tiny_config(tiny_llama, tmp_path / "b", max_steps=4, resume_from_checkpoint="latest", **common))
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4] and resumed["step"] == 4
    a = load_file(str(tmp_path / "a" / "out" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "b" / "out").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_save_total_limit_keeps_the_newest(tiny_llama, tmp_path):
    train(tiny_config(tiny_llama, tmp_path, max_steps=3, save_steps=1, save_total_limit=2))
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not list((tmp_path / "out").glob(".checkpoint-*"))


@pytest.mark.parametrize("bits", ["train_8bit", "train_4bit"])
def test_quantized_lora_trains_a_step(bits, tiny_llama, tmp_path):
    metrics = train(tiny_config(tiny_llama, tmp_path, max_steps=2, val_set_size=0, **{bits: True}))
    assert len(metrics["history"]) == 2 and all(h["loss"] > 0 for h in metrics["history"])
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero


def test_continue_from_lora_weights_and_mix_in(tiny_llama, tmp_path):
    train(tiny_config(tiny_llama, tmp_path, max_steps=1, val_set_size=0))
    persona = [{"id": i, "input": f"<human>: Who made you {i}?\n<bot>: The sftkit team.", "prompt_type": "human_bot",
                "source": "personality"} for i in range(3)]
    mix_path = write_rows(tmp_path / "personality.json", persona, repeat=1)
    metrics = train(tiny_config(tiny_llama, tmp_path, output_dir=str(tmp_path / "out2"), max_steps=1,
                                lora_weights=str(tmp_path / "out"), data_mix_in_path=mix_path,
                                data_mix_in_factor=0.5, val_set_size=0))
    assert metrics["data"]["mix_in"]["rows_added"] == 8  # half of 16 training rows, drawn from 3 (repeated)


def test_bad_settings_are_clear_errors(tiny_llama, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(TrainError, match="already exists.*resume_from_checkpoint"):
        train(tiny_config(tiny_llama, tmp_path))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match="no training rows left"):
        train(tiny_config(tiny_llama, tmp_path, output_dir=str(tmp_path / "o2"), cutoff_len=4))
    with pytest.raises(FlagError, match="val_metrics"):
        tiny_config(tiny_llama, tmp_path, val_metrics=["bleurt"])


def test_the_run_reports_its_packing_efficiency(tiny_llama, tmp_path, capsys):
    runs = {name: train(tiny_config(tiny_llama, tmp_path, output_dir=str(tmp_path / name), max_steps=1,
                                    val_set_size=0, **options))
            for name, options in (("padded", {}), ("packed", {"pack": True}))}
    padded, packed = (runs[name]["run"]["packing_efficiency"] for name in ("padded", "packed"))
    assert 0 < padded < packed <= 1  # rows padded to each batch's longest vs rows packed to cutoff_len
    assert json.loads((tmp_path / "packed" / "metrics.json").read_text())["run"]["packing_efficiency"] == packed
    assert f"packing efficiency {packed:.1%}" in capsys.readouterr().out
