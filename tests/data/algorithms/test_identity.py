"""Identity: self-descriptions rewritten to the configured bot, other mentions dropped, never a blind replace."""
import pytest

from sftkit.data.algorithms.identity import apply, apply_to_answer, compile_identity
from sftkit.data.config import DEFAULT_OTHER_ASSISTANTS, DEFAULT_OTHER_MAKERS

KESTREL = compile_identity("Kestrel", "sftkit", DEFAULT_OTHER_ASSISTANTS, DEFAULT_OTHER_MAKERS)


@pytest.mark.parametrize("answer, expected, events", [
    ("I am Open Assistant, a chat assistant created by LAION. How can I help?",
     "I am Kestrel, a chat assistant created by sftkit. How can I help?", {"rewrite_name": 1, "rewrite_maker": 1}),
    ("Hi! I'm an open-source AI assistant called Open Assistent.", "Hi! I'm an open-source AI assistant called Kestrel.",
     {"rewrite_name": 1}),
    ("My name is open-assistant. My creators at LAION-AI trained me on volunteer data.",
     "My name is Kestrel. My creators at sftkit trained me on volunteer data.",
     {"rewrite_name": 1, "rewrite_maker": 1}),
    ("As OpenAssistant, I try to be accurate.", "As Kestrel, I try to be accurate.", {"rewrite_name": 1}),
    ("I was developed by the team at LMSYS.", "I was developed by the team at sftkit.", {"rewrite_maker": 1}),
    ("I was created by the LAION team.", "I was created by the sftkit team.", {"rewrite_maker": 1}),
    # the word "assistant" alone is not a name: untouched
    ("I am your assistant. An assistant helps.", "I am your assistant. An assistant helps.", {}),
])
def test_self_descriptions_are_rewritten_only_where_they_name_the_assistant(answer, expected, events):
    text, found = apply(f"<human>: Who are you?\n<bot>: {answer}", KESTREL)
    assert text == f"<human>: Who are you?\n<bot>: {expected}"
    assert dict(found) == events


@pytest.mark.parametrize("row, reason", [
    ("<human>: Hi\n<bot>: I am not ChatGPT, I am a different model.", "identity_negated"),
    ("<human>: What is ChatGPT?\n<bot>: ChatGPT is a chatbot released by OpenAI.", "identity_other_mention"),
    ("<human>: Compare yourself\n<bot>: I am Open Assistant, and I am more open than ChatGPT.",
     "identity_other_mention"),
    ("<human>: I'm happy\n<bot>: I'm happy to explain how Vicuna was trained.", "identity_other_mention"),
    ("<human>: Are you Open Assistant?\n<bot>: Yes, I am Open Assistant.", "identity_named_in_question"),
])
def test_rows_where_a_rewrite_would_be_wrong_are_dropped_with_a_reason(row, reason):
    assert apply(row, KESTREL) == (None, {reason: 1})


def test_rows_without_other_names_are_returned_unchanged():
    row = "Preamble.\n<human>:  spaced   question\n<bot>: A plain answer about falcons."
    assert apply(row, KESTREL) == (row, {})
    # a question naming another assistant is fine when the answer does not take that identity
    row = "<human>: What does OpenAI do?\n<bot>: It is a research company that builds language models."
    assert apply(row, KESTREL) == (row, {})


def test_the_names_are_a_setting():
    mine = compile_identity("Falco", "Birdworks", ["Kestrel"], ["sftkit"])
    text, events = apply("<human>: Who?\n<bot>: I'm Kestrel, fine-tuned by sftkit.", mine)
    assert text == "<human>: Who?\n<bot>: I'm Falco, fine-tuned by Birdworks." and sum(events.values()) == 2
    assert apply("<human>: Who?\n<bot>: I am Open Assistant.", mine)[0].endswith("I am Open Assistant.")


def test_bare_answers_for_preference_pairs():
    assert apply_to_answer("I am ChatGPT, made by OpenAI.", KESTREL)[0] == "I am Kestrel, made by sftkit."
    assert apply_to_answer("I am not ChatGPT.", KESTREL)[0] is None


# Self-descriptions in the shapes of the public identity sets (FastChat's Vicuna / LMSYS set and the ones
# after it), written here: the maker's long name with its short form in brackets, and the phrasings they use.
LMSYS_LONG = "Large Model Systems Organization (LMSYS)"


@pytest.mark.parametrize("answer, expected", [
    (f"I'm Vicuna, a chat model built by researchers at {LMSYS_LONG}.",
     "I'm Kestrel, a chat model built by researchers at sftkit."),
    (f"My name is Vicuna, and I'm an assistant released by {LMSYS_LONG}.",
     "My name is Kestrel, and I'm an assistant released by sftkit."),
    (f"Call me Vicuna; I was fine-tuned by {LMSYS_LONG} engineers to chat.",
     "Call me Kestrel; I was fine-tuned by sftkit engineers to chat."),
    (f"As a chat model, I go by the name Vicuna and was taught by the researchers of {LMSYS_LONG}.",
     "As a chat model, I go by the name Kestrel and was taught by the researchers of sftkit."),
    (f"You may refer to me as Vicuna, a model carefully built by the team at {LMSYS_LONG}.",
     "You may refer to me as Kestrel, a model carefully built by the team at sftkit."),
    (f"Engineers from {LMSYS_LONG} trained me.", "Engineers from sftkit trained me."),
    (f"{LMSYS_LONG} built me.", "sftkit built me."),
    (f"My makers are scientists from {LMSYS_LONG}.", "My makers are scientists from sftkit."),
    ("I'm Qwen, a large language model created by Alibaba Cloud.",
     "I'm Kestrel, a large language model created by sftkit."),
    ("I am DeepSeek-R1, an assistant developed by DeepSeek.", "I am Kestrel, an assistant developed by sftkit."),
])
def test_the_public_identity_sets_are_rewritten_not_dropped(answer, expected):
    text, events = apply(f"<human>: Tell me who you are.\n<bot>: {answer}", KESTREL)
    assert text == f"<human>: Tell me who you are.\n<bot>: {expected}", events


def test_a_long_maker_name_with_its_short_form_is_replaced_whole():
    by_short = compile_identity("Falco", "Birdworks", ["Falcon"], ["TII"])
    by_long = compile_identity("Falco", "Birdworks", ["Falcon"], ["Technology Innovation Institute"])
    for identity in (by_short, by_long):
        text, events = apply("<human>: Who?\n<bot>: I am Falcon, trained by the Technology Innovation Institute "
                             "(TII) in Abu Dhabi.", identity)
        assert text == "<human>: Who?\n<bot>: I am Falco, trained by Birdworks in Abu Dhabi."
        assert dict(events) == {"rewrite_name": 1, "rewrite_maker": 1}
    # the long form alone is not a maker: a sentence merely near one keeps its words
    text, _ = apply("<human>: Who?\n<bot>: I was trained by Birdworks (TII) staff.", by_short)
    assert text is None or "Birdworks" in text
