"""finetune.py trains files in other projects' formats as they are: ShareGPT (SFT), LLaMA-Factory's ShareGPT-style
ranking rows (DPO) and tool-calling conversations (SFT, through a chat template with tools and an h2oGPT type)."""
import json
from pathlib import Path

import pytest

from tests.train.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ROOT / "data" / "formats"


def finetune(model_dir, tmp_path, capsys, *args):
    out = tmp_path / "out"
    code = run_cli(f"--base_model={model_dir}", f"--output_dir={out}", "--max_steps=2", "--batch_size=4",
                   "--micro_batch_size=2", "--val_set_size=0", "--report_to=none", "--save_steps=0",
                   "--learning_rate=1e-3", *args)
    captured = capsys.readouterr()
    assert code in (0, None), captured.err[-2000:]
    return json.loads((out / "metrics.json").read_text()), captured.out


def test_sharegpt_file_trains_without_conversion(tiny_llama, tmp_path, capsys):
    metrics, out = finetune(tiny_llama, tmp_path, capsys, f"--data_path={FORMATS / 'sharegpt_sample.json'}",
                            "--prompt_type=human_bot", "--cutoff_len=256")
    assert metrics["data"]["rows_read"] == 6 and not metrics["data"]["rows_skipped"]
    assert metrics["data"]["train"]["kept"] == 6 and "6 train / 0 valid examples" in out


def test_sharegpt_ranking_file_trains_dpo_without_conversion(tiny_llama, tmp_path, capsys):
    metrics, out = finetune(tiny_llama, tmp_path, capsys, "--stage=dpo",
                            f"--data_path={FORMATS / 'sharegpt_ranking.json'}", "--prompt_type=human_bot",
                            "--cutoff_len=256")
    assert metrics["data"]["rows_read"] == 8 and metrics["data"]["train"]["kept"] == 8
    assert "8 train / 0 valid pairs" in out


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    """A tiny model whose chat template renders tools (Qwen2.5 / Hermes style), with room for the tool
    schemas (the tiny tokenizer spends about a token per two characters)."""
    from transformers import AutoTokenizer

    from tests.tiny_models import TOOL_CHAT_TEMPLATE, build_tiny_model

    model_dir = build_tiny_model(tmp_path_factory.mktemp("tool_model"), "llama", max_position_embeddings=2048)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


@pytest.mark.parametrize("name, prompt_type", [("openai_tools.jsonl", "chat"), ("sharegpt_tools.json", "chat"),
                                               ("openai_tools.jsonl", "human_bot")])
def test_tool_calling_file_trains_without_conversion(tool_model, tmp_path, capsys, name, prompt_type):
    metrics, out = finetune(tool_model, tmp_path, capsys, f"--data_path={FORMATS / name}",
                            f"--prompt_type={prompt_type}", "--cutoff_len=2048")
    data = metrics["data"]
    assert data["rows_read"] == 8 and not data["rows_skipped"] and data["train"]["kept"] == 8
    assert data["train"]["skipped_render"] == 0 and data["train"]["learned_tokens"] > 0
