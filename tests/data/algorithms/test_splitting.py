from sftkit.data.algorithms import splitting
from sftkit.data.algorithms.splitting import exchanges, split_conversation, split_sentences
from sftkit.prompts import split_turns

LONG_ANSWER = " ".join(f"Sentence number {i} explains one more detail of the topic." for i in range(60))


def test_split_sentences_offline_and_lossless():
    text = "Dr. Smith arrived at 5 p.m. on Monday. He left! Why? Because e.g. it rained."
    sentences = split_sentences(text)
    assert sentences == ["Dr. Smith arrived at 5 p.m. on Monday. ", "He left! ", "Why? ", "Because e.g. it rained."]
    assert "".join(sentences) == text


def test_exchanges_group_runs_and_drop_orphans():
    turns = split_turns("<bot>: orphan\n<human>: a\n<human>: b\n<bot>: c\n<bot>: d\n<human>: e\n<bot>: f\n<human>: g")
    assert exchanges(turns) == [[("human", "a"), ("human", "b"), ("bot", "c"), ("bot", "d")],
                                [("human", "e"), ("bot", "f")]]


def test_short_conversation_is_one_row():
    text = "<human>: What is water?\n<bot>: Water is H2O.\n<human>: Thanks\n<bot>: You're welcome."
    rows, events = split_conversation(text, 1024, 2048)
    assert rows == [text] and not events


def test_long_conversation_packs_exchanges_into_valid_rows():
    exchange = "<human>: Question {i}?\n<bot>: " + "This answer is long enough to matter. " * 8
    text = "\n".join(exchange.format(i=i).strip() for i in range(12))
    rows, events = split_conversation(text, 1024, 2048)
    assert len(rows) > 1 and not events
    for row in rows:
        assert len(row) <= 2048
        turns = split_turns(row)
        assert turns[0][0] == "human" and turns[-1][0] == "bot"
    assert [t for row in rows for t in split_turns(row)] == split_turns(text)
    for row, following in zip(rows, rows[1:]):  # greedy: the next exchange would not have fitted
        assert len(row) <= 1024 or len(exchanges(split_turns(row))) == 1
        next_exchange = following.split("\n<human>:")[0]
        assert len(row + "\n" + next_exchange) > 1024


def test_overlong_answer_is_cut_at_a_sentence_boundary():
    rows, events = split_conversation(f"<human>: Tell me everything.\n<bot>: {LONG_ANSWER}", 1024, 600)
    assert events == {"answer_cut_at_sentence": 1}
    (row,) = rows
    assert len(row) <= 600
    answer = split_turns(row)[1][1]
    assert LONG_ANSWER.startswith(answer) and answer.endswith("topic.")


def test_overlong_question_is_left_out():
    text = f"<human>: {LONG_ANSWER}\n<bot>: ok.\n<human>: Short?\n<bot>: Yes, short."
    rows, events = split_conversation(text, 1024, 300)
    assert rows == ["<human>: Short?\n<bot>: Yes, short."]
    assert events == {"exchange_too_long": 1}


def test_a_huge_answer_is_cut_from_a_bounded_window(monkeypatch):
    """Only the start of an answer can be kept, so only a window past the budget is segmented: pysbd's
    time grows faster than the text, and a megabyte answer (one hostile line) would stall detox."""
    seen, real = [], splitting.split_sentences
    monkeypatch.setattr(splitting, "split_sentences",
                        lambda text: seen.append(len(text)) or (real(text) if len(text) < 100_000 else [text]))
    rows, events = split_conversation("<human>: Say a lot.\n<bot>: " + "Word. " * 1_000_000, 1024, 2048)
    assert max(seen) <= 2048 + splitting.SENTENCE_LOOKAHEAD
    assert events == {"answer_cut_at_sentence": 1} and len(rows) == 1 and len(rows[0]) <= 2048
    assert rows[0].endswith("Word.")
