import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftkit.models import apply_adapter, load_model, load_tokenizer
from sftkit.prompts import render_prompt
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


# ---------------------------------------------------------------- what a new user does
HELDOUT = json.loads((REPO / "data" / "identity_heldout.json").read_text())
MAX_NEW = 24


def h2ogpt_rows(path: Path, short: bool = False) -> str:
    """The bundled identity rows as h2oGPT writes human_bot data: each ends with the next ``<human>:``.

    ``short``: every answer is "I am Kestrel.", which a tiny model learns (with the ``<human>:`` after it)
    in a few dozen steps; the embedded model learns the bundled answers themselves.
    """
    rows = json.loads((REPO / "data" / "personality.json").read_text())
    if short:
        rows = [{"input": r["input"].split("\n<bot>:")[0] + "\n<bot>: I am Kestrel."} for r in rows]
    path.write_text(json.dumps([{"input": r["input"] + "\n<human>:", "prompt_type": "human_bot"} for r in rows]))
    return str(path)


def export_cli(*args) -> None:
    done = subprocess.run([sys.executable, str(REPO / "finetune.py"), "export", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def modelfile_parts(text: str) -> tuple[str, list[str], str]:
    """FROM, the PARAMETER stop values and the TEMPLATE of a Modelfile (values in triple quotes)."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    stops = re.findall(r'^PARAMETER stop """(.*?)"""$', text, re.S | re.M)
    return re.search(r"^FROM (.*)$", text, re.M).group(1), stops, template


def check_deployed_export(export: Path, gguf_type: str = "f16") -> dict:
    """Every route answers the held-out identity questions alike; returns what it saw (for the report)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftkit.generation import GenerateConfig, generate_answers, load_models
    from tests.go_template import render as go_render

    questions = [row["prompt"] for row in HELDOUT]
    # 1. generate.py's engine on the export (greedy, no repetition penalty, as plain transformers decodes).
    config = GenerateConfig(base_model=str(export), prompt_type="human_bot", max_new_tokens=MAX_NEW,
                            do_sample=False, repetition_penalty=1.0, device="cpu")
    engine = load_models(config)
    engine_answers = generate_answers(engine, [render_prompt([], q, "human_bot") for q in questions], config)

    # 2. plain transformers: the tokenizer's chat template, the stop strings the card and sftkit_prompt.json list.
    stops = json.loads((export / "sftkit_prompt.json").read_text())["stop"]
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    gguf_file = f"{export.name}-{gguf_type}.gguf"
    gguf_tokenizer = AutoTokenizer.from_pretrained(export / "gguf", gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(export / "gguf", gguf_file=gguf_file, dtype=torch.float32).eval()
    stopped, same_tokens = 0, 0
    for question, engine_answer in zip(questions, engine_answers):
        messages = [{"role": "user", "content": question}]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        assert tokenizer.decode(inputs["input_ids"][0]) == render_prompt([], question, "human_bot")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, stop_strings=stops,
                                 tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)
        raw = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        answer = min((raw.split(s)[0] for s in stops), key=len).strip()
        assert answer == engine_answer.text.strip(), (question, raw, engine_answer)
        stopped += any(s in raw for s in stops) and engine_answer.finish_reason == "stop_string"

        # 3. the GGUF read back by transformers' reader: same prompt tokens from its own template, same answer.
        gguf_inputs = gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                         return_dict=True)
        assert gguf_inputs["input_ids"].tolist() == inputs["input_ids"].tolist()
        with torch.no_grad():
            plain = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
            from_gguf = gguf_model.generate(**gguf_inputs, max_new_tokens=MAX_NEW, do_sample=False,
                                            pad_token_id=tokenizer.pad_token_id)
        same_tokens += plain.tolist() == from_gguf.tolist()

    # 4. the Modelfile: FROM the GGUF beside it, the same stops, a template rendering the same prompts.
    source, modelfile_stops, template = modelfile_parts((export / "ollama" / "Modelfile").read_text())
    assert (export / "ollama" / source).is_file() and modelfile_stops == stops
    for question in questions:
        data = {"Messages": [{"Role": "user", "Content": question}]}
        assert go_render(template, data) == render_prompt([], question, "human_bot")

    # 5. the model card says how to use every route and what trained it.
    card = (export / "README.md").read_text()
    for needed in ("prompt type: `human_bot`", "apply_chat_template", "vllm serve", "ollama create",
                   "generate.py", "## Training", "## Data", '"<human>:"'):
        assert needed in card, needed
    return {"stopped_at_stop_string": stopped, "gguf_same_tokens": same_tokens, "questions": len(questions)}


def test_a_new_user_fine_tunes_h2ogpt_data_and_deploys_every_format(tiny_llama, tmp_path):
    # A full fine-tune: the tiny model learns to end with <human>: there (its LoRA runs end at EOS at once).
    train(tiny_config(tiny_llama, tmp_path, data_path=h2ogpt_rows(tmp_path / "h2ogpt.json", short=True),
                      max_steps=60, batch_size=8, micro_batch_size=8, val_set_size=0, learning_rate=3e-3,
                      save_steps=0, cutoff_len=96, lora_r=0))
    adapter = tmp_path / "out"
    assert "sftkit prompt_type human_bot" in (adapter / "chat_template.jinja").read_text()
    export = tmp_path / "kestrel"
    export_cli(f"--base_model={tiny_llama}", f"--lora_weights={adapter}", f"--output_dir={export}",
               "--format=hf,gguf,ollama", "--gguf_type=f16")
    seen = check_deployed_export(export)
    assert seen["gguf_same_tokens"] == seen["questions"]
    assert seen["stopped_at_stop_string"] >= 1, "the fine-tune never wrote <human>:, so stopping went untested"


@pytest.mark.slow
def test_the_embedded_model_deploys_every_format_alike(tmp_path):
    """The same on SmolLM2-135M-Instruct (the embedded model): a 12-step LoRA on the bundled identity rows."""
    from sftkit.models import DEFAULT_BASE_MODEL, resolve_base_model

    base = resolve_base_model(DEFAULT_BASE_MODEL)
    train(tiny_config(base, tmp_path, data_path=h2ogpt_rows(tmp_path / "h2ogpt.json"), max_steps=12,
                      batch_size=4, micro_batch_size=4, val_set_size=0, learning_rate=3e-3, save_steps=0,
                      cutoff_len=96))
    export = tmp_path / "kestrel"
    export_cli(f"--base_model={DEFAULT_BASE_MODEL}", f"--lora_weights={tmp_path / 'out'}", f"--output_dir={export}",
               "--format=hf,gguf,ollama", "--gguf_type=f16")
    seen = check_deployed_export(export)
    print(f"embedded export: {seen}")
    assert seen["gguf_same_tokens"] == seen["questions"]
    assert seen["stopped_at_stop_string"] >= 1
