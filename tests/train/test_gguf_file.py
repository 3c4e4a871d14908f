"""The GGUF writer against transformers' GGUF reader (an implementation nobody here wrote)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftkit.errors import ExportError
from sftkit.train import gguf_file
from sftkit.train.gguf_file import gguf_arch, write_gguf

PROMPT = "<human>: What is the capital of France?\n<bot>:"


def round_trip(model_dir, tmp_path, gguf_type):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    write_gguf(model, tokenizer, tmp_path / f"m-{gguf_type}.gguf", gguf_type, name="tiny", chat_template=None,
               add_bos=False, stop_token_ids=[])
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"m-{gguf_type}.gguf", dtype=torch.float32).eval()
    back_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=f"m-{gguf_type}.gguf")
    ids = tokenizer(PROMPT, return_tensors="pt")
    assert back_tokenizer(PROMPT)["input_ids"] == ids["input_ids"][0].tolist()
    with torch.no_grad():
        diff = (model(**ids).logits - back(**ids).logits).abs().max().item()
        kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        same = model.generate(**ids, **kw).tolist() == back.generate(**ids, **kw).tolist()
    return diff, same


def test_f32_reads_back_exactly_and_q8_0_closely(tiny_llama, tmp_path):
    diff, same = round_trip(tiny_llama, tmp_path, "f32")
    assert diff == 0.0 and same
    diff, same = round_trip(tiny_llama, tmp_path, "q8_0")
    assert diff < 0.05
    print(f"q8_0: max logit difference {diff:.4f}, greedy tokens identical: {same}")


def test_without_the_rotary_interleave_the_reader_gets_another_model(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_file, "interleave_rotary", lambda weight, heads: weight)
    diff, _ = round_trip(tiny_llama, tmp_path, "f32")
    assert diff > 1e-3


def test_other_architectures_are_refused_by_name(tiny_neox, tmp_path):
    with pytest.raises(ExportError, match=r"'gpt_neox'.*convert_hf_to_gguf\.py"):
        gguf_arch("gpt_neox")
    model = AutoModelForCausalLM.from_pretrained(tiny_neox)
    with pytest.raises(ExportError, match="gpt_neox"):
        write_gguf(model, AutoTokenizer.from_pretrained(tiny_neox), tmp_path / "x.gguf", "f16", name="x",
                   chat_template=None, add_bos=False, stop_token_ids=[])
    assert not (tmp_path / "x.gguf").exists()
