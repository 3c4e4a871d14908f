"""Conversations to token ids and labels: loss masking and truncation at cutoff_len.

Masking follows the character spans :func:`sftkit.prompts.render_conversation` gives for bot
answers and the stop string right after each, so every prompt type (and the tokenizer's chat
template) masks the same way: a token is learned only if it overlaps an answer, unless
``train_on_inputs``. The appended EOS is learned when the text ends with an answer (its stop
included): h2oGPT's rows ending ``…<bot>: a\\n<human>:`` learn both the ``<human>:`` and the EOS.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from sftkit.prompts import DEFAULT_PROMPT_TYPE, PromptError, get_prompt_type, render_conversation
from sftkit.train.data import Conversation

IGNORE = -100


@dataclass
class Example:
    """One training row. ``labels[0]`` is always IGNORE: no token predicts it, packed or not."""

    input_ids: list[int]
    labels: list[int]
    prompt: str  # the text up to the last bot answer, for generation-based validation
    reference: str  # the last bot answer
    prompt_type: str = "human_bot"  # how the row was written (for its stop strings)


@dataclass
class TokenizeStats:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_truncations: int = 0
    skipped_no_answer_in_cutoff: int = 0
    skipped_render: int = 0
    tokens: int = 0
    learned_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Tokenized:
    examples: list[Example] = field(default_factory=list)
    stats: TokenizeStats = field(default_factory=TokenizeStats)


def tokenize_conversation(turns, tokenizer, prompt_type: str, *, train_on_inputs: bool = False,
                          add_eos_token: bool = True, text: str | None = None) -> Example:
    """Token ids and labels of a whole conversation, before truncation.

    ``text`` is the row's own ``<human>:``/``<bot>:`` text, which plain and human_bot train as written.
    """
    spec = get_prompt_type(prompt_type)
    rendered, spans = render_conversation(turns, spec.name, tokenizer, text=text)
    if not spans:
        raise PromptError("nothing to learn in this row")
    # A chat template writes its own special tokens; the other prompt types get the tokenizer's (e.g. BOS).
    encoded = tokenizer(rendered, add_special_tokens=spec.name != "chat", return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = []
    for token_id, (start, end) in zip(ids, encoded["offset_mapping"]):
        learned = train_on_inputs or (end > start and any(start < b and end > a for a, b in spans))
        labels.append(token_id if learned else IGNORE)
    ends_with_answer = spans[-1][1] >= len(rendered.rstrip())
    eos = tokenizer.eos_token_id
    if add_eos_token and eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos if (train_on_inputs or ends_with_answer) else IGNORE)
    elif ids and ids[-1] == eos and ends_with_answer:
        labels[-1] = eos  # a template's own EOS after the last answer is part of answering
    if labels:
        labels[0] = IGNORE
    start, end = spans[-1]
    if start == 0:  # a text learned whole: its first token (never learned) is the prompt
        start = next((stop for _, stop in encoded["offset_mapping"] if stop > 0), 0)
    answers = [body for role, body in turns if role == "bot"]
    return Example(ids, labels, prompt=rendered[:start].rstrip(" "),
                   reference=answers[-1] if answers else rendered[start:end].strip(), prompt_type=spec.name)


def check_prompt_types(names, tokenizer) -> None:
    """Fail before tokenizing when a prompt type in use cannot be rendered with this tokenizer."""
    if "chat" in {get_prompt_type(n).name for n in names} and not getattr(tokenizer, "chat_template", None):
        raise PromptError("--prompt_type=chat (or rows with prompt_type chat) needs a tokenizer with a chat "
                          "template; this one has none")


def tokenize_all(conversations: list[Conversation], tokenizer, prompt_type: str, cutoff_len: int, *,
                 train_on_inputs: bool = False, add_eos_token: bool = True, drop_truncations: bool = False,
                 desc: str = "tokenize", progress: bool = True) -> Tokenized:
    """Tokenize, mask and truncate every conversation, counting what was truncated, dropped or skipped.

    Each conversation is written in its own prompt type; ``prompt_type`` is for those without one.

    A row that still has no learned token after truncation (its prompt fills cutoff_len) is skipped.
    """
    out = Tokenized()
    out.stats.rows = len(conversations)
    for conv in tqdm(conversations, desc=desc, disable=not progress, mininterval=2):
        try:
            example = tokenize_conversation(conv.turns, tokenizer, conv.prompt_type or prompt_type or DEFAULT_PROMPT_TYPE,
                                            train_on_inputs=train_on_inputs, add_eos_token=add_eos_token,
                                            text=conv.text)
        except ValueError:
            out.stats.skipped_render += 1
            continue
        if len(example.input_ids) > cutoff_len:
            if drop_truncations:
                out.stats.dropped_truncations += 1
                continue
            out.stats.truncated += 1
            example.input_ids = example.input_ids[:cutoff_len]
            example.labels = example.labels[:cutoff_len]
        learned = sum(label != IGNORE for label in example.labels)
        if learned == 0:
            out.stats.skipped_no_answer_in_cutoff += 1
            continue
        out.examples.append(example)
        out.stats.kept += 1
        out.stats.tokens += len(example.input_ids)
        out.stats.learned_tokens += learned
    return out
