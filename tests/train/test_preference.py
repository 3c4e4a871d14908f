"""Preference rows in every accepted shape, rendered and tokenized like SFT rows."""
import json

import pytest

from sftkit import rows
from sftkit.errors import DataError
from sftkit.rows import Pair
from sftkit.train.preference import load_pairs
from sftkit.train.tokenize import IGNORE, tokenize_conversation, tokenize_pairs

Q, GOOD, BAD = "What is the capital of France?", "The capital of France is Paris.", "Look it up yourself."
EXPECTED = Pair([("human", Q)], [("bot", GOOD)], [("bot", BAD)])


def pair_of(prompt, chosen=GOOD, rejected=BAD):
    return Pair(prompt, [("bot", chosen)], [("bot", rejected)])


@pytest.mark.parametrize("row", [
    {"prompt": Q, "chosen": GOOD, "rejected": BAD},
    {"prompt": [{"role": "user", "content": Q}], "chosen": GOOD, "rejected": BAD, "source": "oasst"},  # oasst_pairs
    {"prompt": [{"role": "user", "content": Q}], "chosen": [{"role": "assistant", "content": GOOD}],
     "rejected": [{"role": "assistant", "content": BAD}]},  # TRL: answers as assistant messages
    {"prompt": Q, "chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": GOOD}],
     "rejected": [{"role": "user", "content": Q}, {"role": "assistant", "content": BAD}]},  # whole conversations
    {"chosen": f"<human>: {Q}\n<bot>: {GOOD}", "rejected": f"<human>: {Q}\n<bot>: {BAD}"},
    {"chosen": f"\n\nHuman: {Q}\n\nAssistant: {GOOD}", "rejected": f"\n\nHuman: {Q}\n\nAssistant: {BAD}"},  # hh-rlhf
    {"chosen": [{"role": "user", "content": Q}, {"role": "assistant", "content": GOOD}],
     "rejected": [{"role": "user", "content": Q}, {"role": "assistant", "content": BAD}]},  # hh-rlhf as messages
    {"conversations": [{"from": "human", "value": Q}], "chosen": {"from": "gpt", "value": GOOD},
     "rejected": {"from": "gpt", "value": BAD}},  # LLaMA-Factory's ShareGPT-style ranking row
    {"instruction": Q, "chosen": GOOD, "rejected": BAD},  # LLaMA-Factory's alpaca-style ranking row
    {"prompt": [{"role": "prompter", "content": Q}], "chosen": GOOD, "rejected": BAD},  # OpenAssistant's role name
])
def test_every_shape_gives_the_same_pair(row):
    pair = rows.pair(row)
    assert (pair.prompt, pair.chosen, pair.rejected) == (EXPECTED.prompt, EXPECTED.chosen, EXPECTED.rejected)


def test_multi_turn_prompts_keep_their_history():
    history = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: " + Q
    pair = rows.pair({"chosen": history + "\n\nAssistant: " + GOOD, "rejected": history + "\n\nAssistant: " + BAD})
    assert pair.prompt == [("human", "Hi"), ("bot", "Hello! How can I help?"), ("human", Q)]
    assert rows.text_turns("just a question") == [("human", "just a question")]
    ranking = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                                 {"from": "human", "value": Q}],
               "chosen": {"from": "gpt", "value": GOOD}, "rejected": {"from": "gpt", "value": BAD}}
    assert rows.pair(ranking).prompt == [("human", "Hi"), ("bot", "Hello!"), ("human", Q)]


def test_bad_rows_are_counted_by_reason_and_all_bad_is_an_error(tmp_path):
    records = [{"prompt": Q, "chosen": GOOD, "rejected": BAD},
            {"prompt": Q, "chosen": GOOD, "rejected": GOOD},
            {"prompt": Q, "chosen": GOOD},
            {"chosen": f"<human>: a\n<bot>: {GOOD}", "rejected": f"<human>: b\n<bot>: {BAD}"},
            {"prompt": Q, "chosen": [{"role": "user", "content": "other"}, {"role": "assistant", "content": GOOD}],
             "rejected": BAD},
            [1, 2]]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(records))
    pairs, stats = load_pairs(str(path))
    assert len(pairs) == 1 and stats.rows == 6
    assert stats.skipped == {"same_answers": 1, "no_pair": 1, "prompt_mismatch": 2, "not_an_object": 1}
    path.write_text(json.dumps(records[1:]))
    with pytest.raises(DataError, match="no usable preference pairs out of 5.*pairs.json:1: 'chosen' and 'rejected' "
                                        "are the same answer"):
        load_pairs(str(path))


def test_answers_render_like_sft_and_only_the_last_answer_is_labelled(tiny_llama):
    from sftkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    prompt = [("human", "Hello"), ("bot", "Hi there."), ("human", Q)]
    tokenized = tokenize_pairs([pair_of(prompt)], tokenizer, "human_bot", 512, add_eos_token=True,
                               progress=False)
    chosen = tokenized.examples[0].chosen
    sft = tokenize_conversation(prompt + [("bot", GOOD)], tokenizer, "human_bot")
    assert chosen.input_ids == sft.input_ids  # same rendering and tokens as SFT
    learned = [t for t, label in zip(chosen.input_ids, chosen.labels) if label != IGNORE]
    assert tokenizer.decode(learned).strip() == GOOD + tokenizer.eos_token  # not the earlier "Hi there."
    assert chosen.prompt.endswith("<bot>:")


def test_pairs_cut_at_cutoff_len_keep_an_answer_or_are_skipped(tiny_llama):
    from sftkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    long_prompt = [("human", "word " * 200)]
    out = tokenize_pairs([pair_of(long_prompt), EXPECTED], tokenizer, "human_bot", 32, add_eos_token=False,
                         progress=False)
    assert out.stats.skipped_no_answer_in_cutoff == 1 and out.stats.kept == 1
    dropped = tokenize_pairs([pair_of([("human", Q)], GOOD + " more" * 40)], tokenizer, "human_bot", 32,
                             add_eos_token=False, drop_truncations=True, progress=False)
    assert dropped.stats.dropped_truncations == 1 and not dropped.examples


def test_pairs_that_truncation_makes_identical_are_dropped_and_counted(tiny_llama):
    """Issue 22 item 5: two answers that differ only after cutoff_len teach DPO nothing."""
    from sftkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama)
    same_start = "The capital of France is Paris, " + "a city " * 30
    out = tokenize_pairs([pair_of([("human", Q)], same_start + "of light.", same_start + "of rain."), EXPECTED],
                         tokenizer, "human_bot", 32, add_eos_token=True, progress=False)
    assert out.stats.skipped_identical_after_truncation == 1 and out.stats.kept == 1 and out.stats.truncated == 1
    (kept,) = out.examples
    assert kept.chosen.input_ids != kept.rejected.input_ids


def test_bundled_preference_set_reads_whole_and_holds_out_its_demo_questions():
    import importlib.util
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "data"
    spec = importlib.util.spec_from_file_location("build_preferences", data / "build_preferences.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert json.loads((data / "preference_sample.json").read_text()) == builder.pairs()  # file matches its script
    pairs, stats = load_pairs(str(data / "preference_sample.json"))
    assert len(pairs) == 72 and not stats.skipped
    asked = {turn for pair in pairs for _, turn in pair.prompt}
    assert not asked & set(json.loads((data / "preference_heldout.json").read_text()))
