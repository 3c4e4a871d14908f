import pytest

from sftkit.models import load_tokenizer
from sftkit.train.data import Conversation
from sftkit.train.tokenize import IGNORE, tokenize_all, tokenize_conversation

TURNS = [("human", "What is the capital of France?"), ("bot", "The capital of France is Paris."),
         ("human", "Who are you?"), ("bot", "I am a helpful assistant.")]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return load_tokenizer(tiny_llama)


def learned_text(tokenizer, example):
    return tokenizer.decode([t for t, l in zip(example.input_ids, example.labels) if l != IGNORE])


@pytest.mark.parametrize("prompt_type", ["human_bot", "instruct", "plain", "chat"])
def test_only_bot_answers_are_learned_token_by_token(tokenizer, prompt_type):
    ex = tokenize_conversation(TURNS, tokenizer, prompt_type, add_eos_token=True)
    assert len(ex.input_ids) == len(ex.labels)
    for token, label in zip(ex.input_ids, ex.labels):
        assert label in (IGNORE, token)  # a label is the token itself or ignored, never shifted
    text = learned_text(tokenizer, ex)
    assert "Paris" in text and "helpful assistant" in text
    for prompt_word in ("capital of France?", "Who are you", "<human>", "### Instruction", "user"):
        assert prompt_word not in text
    assert ex.labels[0] == IGNORE and ex.input_ids[-1] == tokenizer.eos_token_id and ex.labels[-1] != IGNORE
    assert ex.reference == "I am a helpful assistant."
    assert "Who are you?" in ex.prompt and "helpful" not in ex.prompt


def test_human_bot_mask_positions_exactly(tokenizer):
    ex = tokenize_conversation(TURNS, tokenizer, "human_bot")
    pieces = [tokenizer.decode([t]) for t in ex.input_ids]
    learned = [l != IGNORE for l in ex.labels]
    # every learned stretch decodes to exactly one bot answer (plus the closing EOS)
    runs, current = [], []
    for piece, on in zip(pieces, learned):
        if on:
            current.append(piece)
        elif current:
            runs.append("".join(current))
            current = []
    runs.append("".join(current))
    assert [r.strip() for r in runs] == ["The capital of France is Paris.", "I am a helpful assistant.</s>"]


def test_train_on_inputs_learns_everything_but_the_first_token(tokenizer):
    ex = tokenize_conversation(TURNS, tokenizer, "human_bot", train_on_inputs=True)
    assert ex.labels[0] == IGNORE and ex.labels[1:] == ex.input_ids[1:]


def test_truncation_keeps_masking_and_counts(tokenizer):
    full = tokenize_conversation(TURNS, tokenizer, "human_bot")
    cutoff = len(full.input_ids) - 8
    convs = [Conversation(TURNS, "a"), Conversation(TURNS[:2], "b")]
    out = tokenize_all(convs, tokenizer, "human_bot", cutoff, progress=False)
    assert out.stats.truncated == 1 and out.stats.kept == 2
    assert out.examples[0].input_ids == full.input_ids[:cutoff]
    assert out.examples[0].labels == full.labels[:cutoff]
    dropped = tokenize_all(convs, tokenizer, "human_bot", cutoff, drop_truncations=True, progress=False)
    assert dropped.stats.dropped_truncations == 1 and len(dropped.examples) == 1


def test_prompt_longer_than_cutoff_is_a_counted_skip(tokenizer):
    turns = [("human", "What is the capital of France? " * 5), ("bot", "Paris.")]
    out = tokenize_all([Conversation(turns, "a")], tokenizer, "human_bot", 8, progress=False)
    assert out.examples == [] and out.stats.skipped_no_answer_in_cutoff == 1
