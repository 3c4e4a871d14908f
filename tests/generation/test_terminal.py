"""Terminal chat: commands, multi-turn history, Ctrl-C stopping an answer, and generate.py --cli=True."""
import io
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from sftkit.generation import GenerateConfig, build_prompt, generate_answers, load_models
from sftkit.generation.terminal import chat_loop

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama(tiny_llama):
    config = GenerateConfig(base_model=tiny_llama, local_files_only=True, max_new_tokens=12, repetition_penalty=1.0)
    return config, load_models(config)


def scripted(lines):
    lines = list(lines)

    def read(prompt):
        if not lines:
            raise EOFError
        return lines.pop(0)

    return read


def greedy(models, config, history, message):
    prompt = build_prompt(models.tokenizer, history, message, config, 512)
    return generate_answers(models, [prompt.text], config)[0].text


def test_chat_keeps_history_and_obeys_commands(llama):
    config, models = llama
    out = io.StringIO()
    history = chat_loop(models, config, out=out, read=scripted(
        ["Hi", "/undo", "What is the capital of France?", "", "Who are you?", "/clear", "Hello", "And you?"]))
    first = greedy(models, config, [], "Hello")
    second = greedy(models, config, [("Hello", first)], "And you?")
    assert history == [("Hello", first), ("And you?", second)]
    text = out.getvalue()
    assert text.count("bot: ") == 5
    assert "(dropped the last exchange)" in text and "(history cleared)" in text
    assert f"bot: {first}\n" in text and f"bot: {second}\n" in text


def test_regenerate_save_and_load_and_unstreamed_answers(llama, tmp_path):
    import json

    config, models = llama
    saved = tmp_path / "chat.json"
    out = io.StringIO()
    history = chat_loop(models, replace(config, stream_output=False), out=out, read=scripted(
        ["/regenerate", "Hello", "/regenerate", f"/save {saved}", "/clear", f"/load {saved}", "And you?",
         f"/load {tmp_path / 'missing.json'}"]))
    first = greedy(models, config, [], "Hello")
    second = greedy(models, config, [("Hello", first)], "And you?")
    assert history == [("Hello", first), ("And you?", second)]
    text = out.getvalue()
    assert "(nothing to regenerate)" in text and text.count(f"bot: {first}\n") == 2
    assert json.loads(saved.read_text())["messages"] == [{"human": "Hello", "bot": first}]
    assert f"(loaded 1 exchange(s) from {saved})" in text and "(error: [Errno 2]" in text


def test_quit_command_and_too_long_prompt_warning(llama):
    config, models = llama
    out = io.StringIO()
    config = replace(config, max_context_tokens=64)
    history = chat_loop(models, config, out=out,
                        read=scripted(["word " * 200, "/quit", "never read"]))
    assert len(history) == 1
    assert "(warning: prompt too long for the context: cut the first" in out.getvalue()


class InterruptingOutput(io.StringIO):
    """A terminal where the user presses Ctrl-C while the second piece of the first answer prints."""

    def __init__(self):
        super().__init__()
        self.pieces = 0
        self.interrupted = False

    def write(self, text):
        if self.getvalue().count("bot: ") == 1 and not self.interrupted and not text.startswith("bot"):
            self.pieces += 1
            if self.pieces == 2:
                self.interrupted = True
                raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_answer_but_not_the_chat(llama):
    config, models = llama
    config = replace(config, max_new_tokens=300, max_context_tokens=512)
    out = InterruptingOutput()
    history = chat_loop(models, config, out=out, read=scripted(["Tell me a long story", "Hi"]))
    assert out.interrupted and "[stopped]" in out.getvalue()
    assert len(history) == 2 and history[1][0] == "Hi"
    assert len(models.tokenizer(history[0][1])["input_ids"]) < 300  # the first answer was cut short
    assert not [t for t in threading.enumerate() if t.name == "sftkit-generate"]


@pytest.mark.slow
def test_generate_cli_over_stdin_with_a_real_sigint(tmp_path):
    # A long context and a seed whose greedy answer runs to max_new_tokens, so the answer streams for
    # seconds and Ctrl-C surely lands while it does (seed 0 ends its answer after ~30 tokens).
    from tests.tiny_models import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "long_context", seed=1, max_position_embeddings=4096)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "generate.py", f"--base_model={model_dir}", "--cli=True", "--local_files_only=True",
         "--max_new_tokens=1500", "--repetition_penalty=1.0"],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Start with Ctrl-C live, as from a terminal: a suite run as a background job inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.stdin.write("Tell me a long story\n")
        proc.stdin.flush()
        seen = ""
        while "bot: " not in seen:
            char = proc.stdout.read(1)
            assert char, f"generate.py ended early: {proc.stderr.read()[-2000:]}"
            seen += char
        seen += proc.stdout.read(3)  # the answer is streaming now
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("Hi\n/quit\n")
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    transcript = seen + rest
    assert proc.returncode == 0, err[-2000:]
    assert "[stopped]" in transcript
    assert transcript.count("bot: ") == 2 and transcript.rstrip().endswith(">>>")
