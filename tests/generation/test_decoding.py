"""Stop strings: found exactly where a plain search finds them, at a cost per generated token that grows
neither with the stop strings' length nor with the answer's (issue 22: a 120k-character stop stalled
the server, as the old filter sliced every stop at every prefix length on every token)."""
import random
import sys

import torch

from sftkit.generation import AnswerStream, Models, StopTextFilter, generate_answers
from sftkit.generation.decoding import cut_at_stop
from tests.generation.conftest import tiny_config


def test_stop_filter_holds_back_a_stop_string_split_across_pieces():
    shown = StopTextFilter(["<human>:", "<bot>:"])
    pieces = [" Paris", " is", " nice.", "\n<hu", "man", ">: and more"]
    outputs = [shown.feed(p) for p in pieces]
    assert outputs == ["Paris", " is", " nice.", "", "", ""]
    assert shown.stopped and shown.flush() == ""
    assert shown.shown == "Paris is nice."


def test_stop_filter_releases_text_that_only_looked_like_a_stop_string():
    shown = StopTextFilter(["<human>:"])
    assert shown.feed("a <hu") == "a"
    assert shown.feed("go> b") == " <hugo> b"
    assert shown.feed(" <") == ""
    assert shown.flush() == " <"
    assert not shown.stopped and shown.shown == "a <hugo> b <"


def naive_cut(text, stops):
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


def test_the_matcher_cuts_where_a_plain_search_does():
    rng = random.Random(0)
    for _ in range(2000):
        alphabet = "ab<>:"
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert cut_at_stop(text, stops) == naive_cut(text, stops), (text, stops)


def test_streamed_pieces_never_show_a_stop_and_add_up_to_the_cut_answer():
    rng = random.Random(1)
    for _ in range(1000):
        alphabet = "ab :\n"
        stops = ["".join(rng.choice("ab:") for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        shown = StopTextFilter(stops)
        pieces, start = [], 0
        while start < len(text):
            end = start + rng.randint(1, 4)
            pieces.append(shown.feed(text[start:end]))
            start = end
        pieces.append(shown.flush())
        want, found = naive_cut(text, stops)
        assert "".join(pieces) == want.strip() == shown.shown, (text, stops, pieces)
        assert shown.stopped == found
        assert all(stop not in "".join(pieces) for stop in stops)


def profile_events(run) -> int:
    """Python and C function calls made by ``run()``: work, counted exactly (no clock involved)."""
    count = 0

    def profiler(frame, event, arg):
        nonlocal count
        count += 1

    sys.setprofile(profiler)
    try:
        run()
    finally:
        sys.setprofile(None)
    return count


def test_filtering_costs_the_same_whatever_the_stop_strings_length():
    text = ("Some answer, then " + "x" * 150 + " and more.\n") * 4  # runs of x start the long stop again and again

    def feed(stop_length):
        stops = ["<human>:", "x" * stop_length + "!"]
        shown = StopTextFilter(stops)
        return profile_events(lambda: [shown.feed(char) for char in text])

    short, long = feed(10), feed(100_000)
    assert long <= short * 1.2, f"{long} calls with a 100,000-character stop against {short} with a 10-character one"


class ScriptedModel:
    """Emits a fixed token script through generate()'s streamer and stopping-criteria contract."""

    def __init__(self, script_ids, eos_id):
        self.script = script_ids
        self.device = torch.device("cpu")
        self.generation_config = type("GenerationConfig", (), {"eos_token_id": eos_id})()

    def generate(self, input_ids, attention_mask, streamer=None, stopping_criteria=(), **kwargs):
        ids = input_ids
        for token in self.script[: kwargs["max_new_tokens"]]:
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if any(bool(c(ids, None).all()) for c in stopping_criteria):
                break
        return ids


class CountingTokenizer:
    """The real tokenizer, counting the token ids it is asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoded = 0

    def decode(self, ids, **kwargs):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)

    def batch_decode(self, rows, **kwargs):
        self.decoded += sum(len(row) for row in rows)
        return self.tokenizer.batch_decode(rows, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_per_token_work_grows_neither_with_the_stop_nor_with_the_answer(tiny_llama):
    """Decoding while generating looks at a few tokens per step, however long the stop strings are."""
    from sftkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama, padding_side="left")
    words = tokenizer(" the quick brown fox", add_special_tokens=False)["input_ids"]
    tokens = 300
    script = (words * tokens)[:tokens]
    prompt = "<human>: Say something\n<bot>:"

    def decoded(stop, stream):
        counting = CountingTokenizer(tokenizer)
        models = Models.around(ScriptedModel(script, tokenizer.eos_token_id), counting)
        config = tiny_config(tiny_llama, max_new_tokens=tokens, stop=[stop])
        if stream:
            answer = AnswerStream(models, prompt, config)
            list(answer)
            answer = answer.answer
        else:
            answer = generate_answers(models, [prompt], config)[0]
        assert answer.new_tokens == tokens and answer.finish_reason == "max_new_tokens"
        return counting.decoded - tokens  # the final decode of the whole answer reads each token once

    for stream in (False, True):
        short, long = decoded("!!", stream), decoded("q" * 20_000 + "!", stream)
        assert long <= short * 1.2 + 50, f"stream={stream}: {long} ids decoded with a long stop, {short} with a short"
        assert short <= 8 * tokens, f"stream={stream}: {short} ids decoded for {tokens} tokens: not a few per token"
