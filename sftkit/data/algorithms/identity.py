"""Identity: answers that call the assistant by another assistant's name or maker get ours, or go.

Only a self-description is rewritten ("I am Open Assistant", "I was trained by LAION"); the
replacement touches the name or maker in that phrase and nothing else. A row is dropped instead when
a rewrite would be wrong: the answer denies being that assistant ("I am not ChatGPT"), mentions it
in the third person ("ChatGPT was made by OpenAI"), or the question names it while the answer is
rewritten (the two would no longer match).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from sftkit.prompts import join_turns, split_turns

# Words that may stand between "I am" and the name: "I am an open-source AI assistant called X".
_FILLER = (r"(?:(?:an?|the|your|friendly|helpful|large|small|open[- ]source|ai|artificial|intelligence|"
           r"language|model|chat|chatbot|assistant|bot|virtual|digital|conversational|based|called|named|"
           r"known|as|name)[\s,]+)*")
_FIRST_PERSON = (r"(?:i am|i'm|i’m|im|i was|i've been|i have been|my name is|my name's|i go by|call me|"
                 r"refer to me as)")
_MAKER_VERB = (r"(?:made|created|trained|developed|built|designed|programmed|fine-tuned|finetuned|funded|"
               r"maintained|released|produced|taught)")
_PEOPLE = r"(?:team|people|researchers|engineers|developers|scientists|volunteers|community|folks)"
# A capitalised word (matched case-sensitively inside the case-insensitive patterns), and a run of them
# joined by the small words of organisation names: "Large Model Systems Organization", "Allen Institute for AI".
_PROPER = r"(?-i:[A-Z][\w.&'’-]*)"
_LONG_NAME = rf"{_PROPER}(?:\s+(?:{_PROPER}|of|for|and|the|&)){{0,7}}"
_SHORT_NAME = r"(?-i:[A-Z][\w.&-]{0,15})"


def _loose(words: str) -> str:
    """A name as a regex: case-insensitive, a space, hyphen or nothing between its words."""
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", words.strip()) if p]
    return r"[\s\-]*".join(parts)


def any_name(names: list[str]) -> str:
    alternatives = sorted({_loose(n) for n in names if n.strip()}, key=len, reverse=True)
    return r"(?<![\w.])(?:" + "|".join(alternatives) + r")(?![\w])" if alternatives else r"(?!x)x"


def maker_form(makers: str) -> str:
    """A maker as written, in full: a known maker, "Long Name (SHORT)" where the short form is known
    ("Large Model Systems Organization (LMSYS)"), or a known name followed by its short form in
    brackets ("Technology Innovation Institute (TII)"); a rewrite replaces the whole of it (with a
    "the" before a bracketed form: "by the Technology Innovation Institute (TII)" -> "by <maker>")."""
    return (rf"(?:(?:the\s+)?{_LONG_NAME}\s*\(\s*(?:{makers})\s*\)|(?:the\s+)?(?:{makers})\s*\(\s*{_SHORT_NAME}\s*\)"
            rf"|(?:{makers}))")


@dataclass(frozen=True)
class Identity:
    name: str
    maker: str
    mention: re.Pattern  # any other assistant name or maker
    negated: re.Pattern
    self_name: re.Pattern  # group "x": the other name inside a self-description
    self_maker: re.Pattern  # group "x": the other maker inside a self-description


def compile_identity(name: str, maker: str, other_assistants: list[str], other_makers: list[str]) -> Identity:
    names, makers = any_name(other_assistants), any_name(other_makers)
    full_maker = maker_form(makers)
    # "by (the researchers at) X"; "the" taken lazily, so a bracketed maker form can take it instead
    by_people = rf"(?:the\s+)??(?:{_PEOPLE}\s+(?:at|of|from)\s+)?"
    flags = re.IGNORECASE
    return Identity(
        name=name, maker=maker,
        mention=re.compile(f"(?:{names})|(?:{makers})", flags),
        negated=re.compile(rf"\b(?:(?:i am|i'm|i’m|im) not|not {_MAKER_VERB} by|nor)\s+{_FILLER}(?:{names}|{makers})",
                           flags),
        self_name=re.compile(
            rf"(?:\b(?:i am|i'm|i’m|im|this is|my name is|my name's|call me|i go by|refer to me as|you are "
            rf"(?:talking|chatting|speaking) (?:to|with))\s+{_FILLER}(?P<x>{names}))"
            rf"|(?:\bas (?P<y>{names})\s*,\s*(?:i|my)\b)", flags),
        self_maker=re.compile(
            rf"(?:\b{_FIRST_PERSON}\b[^.!?\n]{{0,80}}?\b{_MAKER_VERB}\s+(?:by|at)\s+{by_people}(?P<x>{full_maker}))"
            rf"|(?:\b(?:i am|i'm|i’m|im)\s+{_FILLER}(?:from|by|of)\s+(?P<y>{full_maker}))"
            rf"|(?:\bmy (?:creators?|developers?|makers?|team|authors?)\s+(?:(?:are|is|were|was)\s+)?"
            rf"(?:(?:the\s+)?{_PEOPLE}\s+)?(?:(?:at|from|of)\s+)?(?P<z>{full_maker}))"
            rf"|(?:\bas an?\s+(?:[\w-]+\s+){{0,4}}?{_MAKER_VERB}\s+by\s+(?P<w>{full_maker}))"
            rf"|(?:\b{by_people}(?P<v>{full_maker})\s+(?:[\w-]+\s+){{0,2}}?{_MAKER_VERB}\s+me\b)", flags),
    )


def _replace_groups(pattern: re.Pattern, text: str, replacement: str) -> tuple[str, int]:
    """Replace only the named group of each match (the name), keeping the rest of the phrase."""
    count = 0

    def swap(match: re.Match) -> str:
        nonlocal count
        group = next(g for g in match.groupdict() if match.group(g) is not None)
        start, end = match.start(group) - match.start(), match.end(group) - match.start()
        count += 1
        return match.group(0)[:start] + replacement + match.group(0)[end:]

    return pattern.sub(swap, text), count


def apply(text: str, identity: Identity) -> tuple[str | None, Counter]:
    """``(text, events)``: the row with self-descriptions rewritten, or ``None`` and the drop reason.

    Events: ``rewrite_name`` / ``rewrite_maker`` counts, or one of ``identity_negated``,
    ``identity_other_mention``, ``identity_named_in_question`` when the row is dropped.
    """
    events: Counter = Counter()
    if not identity.mention.search(text):
        return text, events
    turns = split_turns(text)
    rewritten = []
    for role, body in turns:
        if role == "bot" and identity.mention.search(body):
            if identity.negated.search(body):
                return None, Counter(identity_negated=1)
            body, names = _replace_groups(identity.self_name, body, identity.name)
            body, makers = _replace_groups(identity.self_maker, body, identity.maker)
            events.update(rewrite_name=names, rewrite_maker=makers)
            if identity.mention.search(body):
                return None, Counter(identity_other_mention=1)
        rewritten.append((role, body))
    events = +events
    if not events:
        return text, events
    if any(role == "human" and identity.mention.search(body) for role, body in turns):
        return None, Counter(identity_named_in_question=1)
    return join_turns(rewritten), events


def apply_to_answer(answer: str, identity: Identity) -> tuple[str | None, Counter]:
    """The same rules for one bare answer (a preference pair's chosen or rejected text)."""
    text, events = apply(f"<human>: -\n<bot>: {answer}", identity)
    return (None if text is None else split_turns(text)[-1][1]), events
