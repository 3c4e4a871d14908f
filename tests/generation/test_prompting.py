"""Prompting: the training format, history and message cut to fit the context."""
from dataclasses import replace

import pytest

from sftkit.generation import GenerationError, build_prompt, context_length


def test_prompt_uses_the_training_format(llama):
    config, models = llama
    tokenizer = models.tokenizer
    prompt = build_prompt(tokenizer, [("Hi", "Hello!")], "How are you?", config, 512)
    assert prompt.text == "<human>: Hi\n<bot>: Hello!\n<human>: How are you?\n<bot>:"
    assert prompt.warning() is None


def test_history_is_trimmed_from_the_oldest_turn(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    history = [(f"question {i} " + "word " * 3, f"answer {i} " + "word " * 3) for i in range(10)]
    config = replace(config, max_context_tokens=200, max_new_tokens=40)
    prompt = build_prompt(tokenizer, history, "last question", config, context_length(model, config))
    assert 0 < prompt.dropped_turns < 10
    assert prompt.tokens <= 160
    assert "question 9" in prompt.text and "question 0" not in prompt.text
    assert f"question {prompt.dropped_turns - 1} " not in prompt.text
    assert f"question {prompt.dropped_turns} " in prompt.text
    assert prompt.text.endswith("<human>: last question\n<bot>:")
    assert "dropped the" in prompt.warning()


def test_too_long_message_keeps_its_end_and_warns(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    config = replace(config, max_context_tokens=128, max_new_tokens=32)
    message = "start " + "filler " * 300 + "the real question?"
    prompt = build_prompt(tokenizer, [("old", "turn")], message, config, context_length(model, config))
    assert prompt.tokens <= 96 and prompt.truncated_tokens > 0 and prompt.dropped_turns == 1
    assert prompt.text.endswith("the real question?\n<bot>:") and "start" not in prompt.text
    assert "cut the first" in prompt.warning()
    with pytest.warns(UserWarning, match="prompt 1: prompt too long"):
        from sftkit.generation.batch import answer_batch

        rows = answer_batch(models, [message], config, progress=False)
    assert rows[0]["new_tokens"] > 0


def test_empty_message_and_impossible_budget_are_rejected(llama):
    config, models = llama
    tokenizer = models.tokenizer
    with pytest.raises(GenerationError, match="empty message"):
        build_prompt(tokenizer, [], "   ", config, 512)
    with pytest.raises(GenerationError, match="max_new_tokens=600"):
        build_prompt(tokenizer, [], "hi", replace(config, max_new_tokens=600), 512)


