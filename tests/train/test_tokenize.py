import json

import pytest

from sftkit.models import load_tokenizer
from sftkit.rows import Conversation
from sftkit.train.data import load_conversations
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
    for prompt_word in ("capital of France?", "Who are you", "<human>: Who", "### Instruction", "user"):
        assert prompt_word not in text
    assert ex.labels[0] == IGNORE and ex.input_ids[-1] == tokenizer.eos_token_id and ex.labels[-1] != IGNORE
    assert ex.reference == "I am a helpful assistant."
    assert "Who are you?" in ex.prompt and "helpful" not in ex.prompt


def test_human_bot_mask_positions_exactly(tokenizer):
    ex = tokenize_conversation(TURNS, tokenizer, "human_bot")
    pieces = [tokenizer.decode([t]) for t in ex.input_ids]
    learned = [l != IGNORE for l in ex.labels]
    # every learned stretch decodes to exactly one bot answer with its stop: <human>: or the closing EOS
    runs, current = [], []
    for piece, on in zip(pieces, learned):
        if on:
            current.append(piece)
        elif current:
            runs.append("".join(current))
            current = []
    runs.append("".join(current))
    assert [r.strip() for r in runs] == ["The capital of France is Paris.\n<human>:", "I am a helpful assistant.</s>"]


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


def token_labels(tokenizer, example):
    """(token text, learned?) for every token, the way the loss sees them."""
    return [(tokenizer.decode([t]), label != IGNORE) for t, label in zip(example.input_ids, example.labels)]


def test_h2ogpt_plain_rows_learn_their_stop_token_by_token(tokenizer, tmp_path):
    """h2oGPT's exact row shape: markers in the text, a trailing <human>:, prompt_type plain."""
    row = {"input": "<human>: Who are you?\n<bot>: I am a helpful assistant.\n<human>:", "prompt_type": "plain"}
    (tmp_path / "rows.json").write_text(json.dumps([row]))
    convs, stats = load_conversations(str(tmp_path / "rows.json"))
    assert stats.prompt_types == {"plain": 1}
    (example,) = tokenize_all(convs, tokenizer, "human_bot", 64, progress=False).examples
    text = row["input"]
    encoded = tokenizer(text, return_offsets_mapping=True)
    assert example.input_ids == encoded["input_ids"] + [tokenizer.eos_token_id]  # the text exactly as written
    answer_at = text.index(" I am")
    stop_at = text.rindex("<human>:")
    for (start, end), token, label in zip(encoded["offset_mapping"], example.input_ids, example.labels):
        if end <= answer_at:
            assert label == IGNORE, f"prompt token {text[start:end]!r} is learned"
        else:
            assert label == token, f"answer or stop token {text[start:end]!r} is not learned"
    assert any(start >= stop_at for start, _ in encoded["offset_mapping"])  # the stop has tokens of its own
    assert example.labels[-1] == tokenizer.eos_token_id
    learned = "".join(piece for piece, on in token_labels(tokenizer, example) if on)
    assert learned.strip() == "I am a helpful assistant.\n<human>:</s>"
    assert example.reference == "I am a helpful assistant." and example.prompt.endswith("<bot>:")


def test_plain_and_human_bot_train_h2ogpt_rows_the_same(tokenizer):
    text = "<human>: Who are you?\n<bot>: I am a helpful assistant.\n<human>:"
    turns = [("human", "Who are you?"), ("bot", "I am a helpful assistant."), ("human", "")]
    plain = tokenize_conversation(turns, tokenizer, "plain", text=text)
    human_bot = tokenize_conversation(turns, tokenizer, "human_bot", text=text)
    assert (plain.input_ids, plain.labels) == (human_bot.input_ids, human_bot.labels)


def test_a_trailing_human_question_keeps_the_answers_stop_learned(tokenizer):
    text = "<human>: Who are you?\n<bot>: I am a helpful assistant.\n<human>: What is the capital of France?"
    turns = [("human", "Who are you?"), ("bot", "I am a helpful assistant."),
             ("human", "What is the capital of France?")]
    ex = tokenize_conversation(turns, tokenizer, "plain", text=text)
    learned = "".join(piece for piece, on in token_labels(tokenizer, ex) if on)
    assert learned.strip() == "I am a helpful assistant.\n<human>:"  # not the question, not the EOS after it
    assert ex.labels[-1] == IGNORE
    # A type that rewrites turns leaves the unanswered question out; the answer learns the EOS.
    rewritten = tokenize_conversation(turns, tokenizer, "instruct", text=text)
    assert "capital" not in tokenizer.decode(rewritten.input_ids)
    assert rewritten.labels[-1] == tokenizer.eos_token_id


def test_plain_text_without_markers_is_learned_whole(tokenizer):
    ex = tokenize_conversation([], tokenizer, "plain", text="The quick brown fox jumps over the lazy dog.")
    assert ex.labels[0] == IGNORE and ex.labels[1:] == ex.input_ids[1:]
    assert ex.prompt and (ex.prompt + ex.reference).replace(" ", "") == "Thequickbrownfoxjumpsoverthelazydog."


@pytest.mark.parametrize("code", ["0", 3, "1"])
def test_numeric_codes_tokenize_like_their_names(tokenizer, code):
    from sftkit.prompts import get_prompt_type

    by_code = tokenize_conversation(TURNS, tokenizer, code)
    by_name = tokenize_conversation(TURNS, tokenizer, get_prompt_type(code).name)
    assert (by_code.input_ids, by_code.labels, by_code.prompt_type) == (
        by_name.input_ids, by_name.labels, by_name.prompt_type)


# ---------------------------------------------------------------- every prompt type, token by token

from sftkit.prompts import PROMPT_TYPES, get_prompt_type  # noqa: E402

ANSWERS = ("The capital of France is Paris.", "I am a helpful assistant.")
QUESTIONS = ("What is the capital of France?", "Who are you?")


def answer_regions(text: str, prompt_type: str, answers) -> list[tuple[int, int]]:
    """Where each answer lies in the rendered text, run on over the stop that follows it (README: stops are
    learned): the type's stop strings after whitespace only, or for chat the rest of the template's turn."""
    regions, at = [], 0
    for answer in answers:
        start = text.index(answer, at)
        end = start + len(answer)
        if prompt_type == "chat":
            nxt = text.find("<|im_start|>", end)
            end = len(text) if nxt < 0 else nxt
        else:
            follows = [(text.find(stop, end), stop) for stop in get_prompt_type(prompt_type).stop]
            follows = [(i, s) for i, s in follows if i >= 0 and not text[end:i].strip()]
            if follows:
                i, stop = min(follows)
                end = i + len(stop)
        regions.append((start, end))
        at = end
    return regions


@pytest.mark.parametrize("prompt_type", sorted(PROMPT_TYPES))
def test_every_prompt_type_masks_questions_and_learns_answers_stops_and_eos(tokenizer, prompt_type, monkeypatch):
    from sftkit import prompts

    monkeypatch.setattr(prompts, "_stamp", lambda: ("2023-05-25", "20:30:33 PM UTC"))
    ex = tokenize_conversation(TURNS, tokenizer, prompt_type)
    text, _ = prompts.render_conversation(TURNS, prompt_type, tokenizer)
    encoded = prompts.encode(tokenizer, text, prompt_type, return_offsets_mapping=True)
    assert ex.input_ids[:len(encoded["input_ids"])] == encoded["input_ids"]
    regions = answer_regions(text, prompt_type, ANSWERS)
    questions = [(text.index(q), text.index(q) + len(q)) for q in QUESTIONS]
    inside = lambda s, e, spans: any(a <= s and e <= b for a, b in spans)  # noqa: E731
    overlaps = lambda s, e, spans: any(s < b and e > a for a, b in spans)  # noqa: E731
    for (s, e), token, label in zip(encoded["offset_mapping"], ex.input_ids, ex.labels):
        if e > s and inside(s, e, regions):
            assert label == token, f"{prompt_type}: answer/stop token {text[s:e]!r} is not learned"
        elif not overlaps(s, e, regions):
            assert label == IGNORE, f"{prompt_type}: prompt token {text[s:e]!r} is learned"
        if inside(s, e, questions):
            assert label == IGNORE
    assert ex.labels[0] == IGNORE
    # The text ends with an answer, so the EOS after it is learned (a template's own EOS, or the appended one).
    assert ex.input_ids[-1] == tokenizer.eos_token_id and ex.labels[-1] == tokenizer.eos_token_id
    for (start, end), answer in zip(regions, ANSWERS):  # every answer and its stop, and nothing of the questions
        learned = tokenizer.decode([t for (s, e), t, lab in zip(encoded["offset_mapping"], ex.input_ids, ex.labels)
                                    if lab != IGNORE and s < end and e > start])
        assert answer in learned and not any(q in learned for q in QUESTIONS)


TOOL_CALL = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
TOOL_CONVERSATION = [("human", "What is the weather in Oslo?"), ("tool_call", TOOL_CALL), ("tool", '{"temp_c": 3}'),
                     ("bot", "It is 3 degrees in Oslo.")]
WEATHER_TOOL = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize("prompt_type", sorted(PROMPT_TYPES))
def test_tool_calls_are_learned_and_tool_results_masked_token_by_token(tokenizer, prompt_type):
    from tests.tiny_models import TOOL_CHAT_TEMPLATE

    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    ex = tokenize_conversation(TOOL_CONVERSATION, tokenizer, prompt_type, tools=WEATHER_TOOL)
    learned = learned_text(tokenizer, ex)
    assert "get_weather" in learned and '"city": "Oslo"' in learned and "It is 3 degrees in Oslo." in learned
    assert "temp_c" not in learned and "What is the weather" not in learned and '"parameters"' not in learned


# ---------------------------------------------------------------- token positions: byte table or offsets
HARD_TEXTS = [("human", "Ça va? 🙂 日本語で答えて  please"),
              ("bot", "  Oui 🙂🙂 très bien — 日本語も OK.\n    indented"),
              ("human", "e\u0301 combining, tabs\tand <|im_end|> written by a user"), ("bot", "Noted <|im_end|> 👍")]


def _variants(tiny_llama):
    """The test tokenizer as built (byte-level BPE), with a BOS added by its post-processor, with an
    added token that swallows the spaces before it, and with a normalizer (no byte table)."""
    from tokenizers import AddedToken, normalizers, processors

    plain = load_tokenizer(tiny_llama)
    with_bos = load_tokenizer(tiny_llama)
    bos = with_bos.convert_tokens_to_ids("<s>")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                                               special_tokens=[("<s>", bos)])
    stripping = load_tokenizer(tiny_llama)
    stripping.backend_tokenizer.add_special_tokens([AddedToken("<|im_end|>", lstrip=True, special=True)])
    normalized = load_tokenizer(tiny_llama)
    normalized.backend_tokenizer.normalizer = normalizers.NFKC()
    return {"byte-level": plain, "bos": with_bos, "lstrip": stripping, "normalizer": normalized}


@pytest.mark.parametrize("prompt_type", ["human_bot", "chat", "plain", "instruct"])
def test_byte_table_positions_equal_the_tokenizers_offsets(tiny_llama, monkeypatch, prompt_type):
    """Labels from token byte lengths (no offsets out of Rust) are the labels the offsets give, for
    multi-byte, split and combining characters, special tokens in the text, a BOS the tokenizer adds;
    a tokenizer whose tokens do not spell the text bytes falls back to its offsets."""
    from sftkit.train import tokenize

    items = [tokenize.Item(HARD_TEXTS[:n], prompt_type, n) for n in (2, 4)]
    items.append(tokenize.Item([("human", "🙂 hi"), ("bot", "日本 ok")], prompt_type, 5,
                               text="<human>: 🙂 hi\n<bot>: 日本 ok\n<human>:"))
    if prompt_type == "plain":  # learned whole: the prompt is its first token, here part of a character
        items.append(tokenize.Item([("human", "x"), ("bot", "y")], prompt_type, 6, text="🙂🙂 learned whole"))
    for name, tok in _variants(tiny_llama).items():
        texts = [tokenize._render(item, tok, False)[0] for item in items]
        prompt_types = [prompt_type] * len(texts)
        assert tokenize._encode(tok, texts, prompt_types).in_bytes == (name in ("byte-level", "bos")), name
        fast, _ = tokenize.encode_batch(items, tok)
        with monkeypatch.context() as m:
            m.setattr(tokenize, "_byte_lengths", lambda tokenizer: None)
            assert not tokenize._encode(tok, texts, prompt_types).in_bytes
            slow, _ = tokenize.encode_batch(items, tok)
        assert fast.input_ids.tolist() == slow.input_ids.tolist(), name
        assert fast.labels.tolist() == slow.labels.tolist(), name
        assert (fast.prompts, fast.references) == (slow.prompts, slow.references), name
        assert (fast.labels != IGNORE).sum() > 10


# ---------------------------------------------------------------- long texts tokenized in pieces
LONG_TEXT = ("Hello world, it's   a test:\n\n  indented  lines\tand tabs. We'll see 12345 numbers, "
             "naïve café é x résumé 日本語 words 🙂 emoji. <|im_end|> special. Don't stop;  double  spaces "
             "end.\r\nWindows lines\n\n\nmany breaks  ") * 6


def _pre_tokenizers():
    """Every pre-tokenizer the pieces are cut for: GPT-2's byte-level regex (the test tokenizer's), the
    same after digit splitting (SmolLM's), and a Split by each pattern transformers' GGUF reader names."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    yield "gpt-2", pre_tokenizers.ByteLevel(add_prefix_space=False)
    yield "gpt-2 with a prefix space", pre_tokenizers.ByteLevel(add_prefix_space=True)
    yield "smollm", pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items():
        yield name, pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _trained(pre):
    """A byte-level BPE tokenizer with this pre-tokenizer, trained on the long text: it merges runs of
    spaces and breaks, and whole words, so a cut in the wrong place changes its tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([LONG_TEXT] * 4, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=["</s>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def test_pieces_cut_at_word_gaps_give_the_whole_texts_tokens():
    """A text tokenized in pieces cut at word gaps has the whole text's first tokens, for every
    pre-tokenizer the cut is used with: spaces, breaks, digits, contractions, accents, emoji and a
    special token around the cuts."""
    from sftkit.train import tokenize

    texts = [LONG_TEXT[k:] for k in range(0, 40, 3)] + ["short", ""]
    for name, pre in _pre_tokenizers():
        tok = _trained(pre)
        table = tokenize._byte_lengths(tok)
        assert table.cuttable, name
        whole = [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
        for keep in (1, 5, 40, 10_000):
            ids, heads = tokenize._encode_pieces(tok.backend_tokenizer, texts, [False] * len(texts), keep, table)
            for text, full, got, head in zip(texts, whole, ids, heads):
                assert got == full[:len(got)], (name, keep, head[-30:])
                assert len(got) > keep or head == text
                assert text.startswith(head)
            if keep == 5:
                assert sum(map(len, heads)) < sum(map(len, texts)) / 10  # the pieces left most text out


def test_pieces_are_only_cut_where_the_tokens_stay_the_same(tiny_llama):
    """No cutting for an unknown Split pattern, an added token with a space in it or one that strips
    the spaces after it, or a tokenizer that appends a token of its own after the text."""
    from tokenizers import AddedToken, Regex, pre_tokenizers, processors
    from sftkit.train import tokenize

    assert tokenize._byte_lengths(load_tokenizer(tiny_llama)).cuttable
    unknown = load_tokenizer(tiny_llama)
    unknown.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+ \w+|\s+"), "isolated"), pre_tokenizers.ByteLevel(use_regex=False)])
    spaced = load_tokenizer(tiny_llama)
    spaced.backend_tokenizer.add_special_tokens([AddedToken("<end of turn>", special=True)])
    stripping = load_tokenizer(tiny_llama)
    stripping.backend_tokenizer.add_tokens([AddedToken("Hello", rstrip=True)])
    appending = load_tokenizer(tiny_llama)
    eos = appending.convert_tokens_to_ids("</s>")
    appending.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                                               special_tokens=[("</s>", eos)])
    for tok in (unknown, spaced, stripping, appending):
        table = tokenize._byte_lengths(tok)
        assert table is None or not table.cuttable


@pytest.mark.parametrize("prompt_type", ["human_bot", "chat", "plain"])
def test_cut_long_rows_tokenize_as_if_tokenized_whole(tiny_llama, monkeypatch, prompt_type):
    """tokenize_units with pieces (the cutoff far below the rows' lengths) gives the ids, labels,
    lengths, truncation outcomes, prompts and references of tokenizing every row whole."""
    from sftkit.train import tokenize

    tok = load_tokenizer(tiny_llama)
    items = [tokenize.Item([("human", LONG_TEXT[:n]), ("bot", LONG_TEXT[n:2 * n])], prompt_type, n)
             for n in (7, 60, 200, 400)]
    items.append(tokenize.Item(TURNS, prompt_type, 1000))
    for cutoff in (8, 64, 300):
        cut = tokenize.tokenize_units(items, tok, cutoff)
        with monkeypatch.context() as m:
            m.setattr(tokenize, "HEAD_CHARS_PER_TOKEN", 10**9)  # every text in one piece
            whole = tokenize.tokenize_units(items, tok, cutoff)
        assert cut[0].input_ids.tolist() == whole[0].input_ids.tolist(), cutoff
        assert cut[0].labels.tolist() == whole[0].labels.tolist(), cutoff
        assert cut[0].lengths.tolist() == whole[0].lengths.tolist()
        assert (cut[0].prompts, cut[0].references) == (whole[0].prompts, whole[0].references)
        assert cut[1].tolist() == whole[1].tolist()
        assert cut[2].over.tolist() == whole[2].over.tolist() and cut[2].status.tolist() == whole[2].status.tolist()
        assert cut[2].over.any()
