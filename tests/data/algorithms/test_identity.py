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
