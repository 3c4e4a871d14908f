"""Prompt formats shared by data preparation, training and generation.

:data:`PROMPT_TYPES` is the one table of formats. It holds h2oGPT's fourteen prompt types under
h2oGPT's names and numeric codes (0-13, the order of h2oGPT's ``PromptType`` enum) with the
strings h2oGPT's prompter writes, plus sftkit's ``chat`` (the tokenizer's own chat template).

A conversation is a list of turns ``(role, text)``: ``system``, ``context`` (h2oGPT's raw text
before the prompt), ``human``, ``input`` (a human turn's extra input, alpaca's ``input`` column),
``bot``, ``tool_call`` (the assistant calls a tool; the text is ``{"name": …, "arguments": {…}}``,
see :func:`tool_call_text`) and ``tool`` (a tool's result). A conversation may come with a tool
list (OpenAI function tools). Every prompt type writes it in two ways that agree with each other:

* :func:`render_conversation` for training: the full text plus the character spans to learn;
* :func:`render_prompt` for generation: earlier exchanges, the new message, and the opening of
  the answer, which is exactly the training text up to the last answer.

One exchange is written the way h2oGPT's ``generate_prompt`` writes a row; earlier exchanges of a
chat are written the way h2oGPT's chat UI writes its history (``reduced``), each followed by the
type's separator. ``plain`` adds nothing: text carrying ``<human>:``/``<bot>:`` markers is trained
exactly as written, and those markers still say which parts are answers.

Stops are learned: an answer's span runs on over a stop string that directly follows it (after
whitespace only), so h2oGPT's rows ending ``…<bot>: answer\\n<human>:`` teach the model to write
``<human>:`` when it is done, and :func:`stop_strings` makes generation stop there.

Tool calls are learned like answers, tool results are masked like questions. ``chat`` renders
them through the tokenizer's chat template (``apply_chat_template(messages, tools=…)``, the calls
as OpenAI ``tool_calls``, results as ``tool`` messages). The h2oGPT types write them in one way
(:func:`tools_as_text`): the tool list after the system text as ``<tools>`` … ``</tools>`` (one
JSON schema a line), each call inside the bot answer as ``<tool_call>`` … ``</tool_call>``, each
result as a human turn ``<tool_response>`` … ``</tool_response>``. :func:`parse_tool_calls` reads
calls back out of generated text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from sftkit.errors import PromptError

HUMAN = "<human>:"
BOT = "<bot>:"
ROLES = ("system", "context", "human", "input", "bot", "tool_call", "tool")
ANSWER_ROLES = ("bot", "tool_call")  # the turns a model learns to write
DEFAULT_PROMPT_TYPE = "human_bot"

Turn = tuple[str, str]
Span = tuple[int, int]

_TURN_MARKER = re.compile(r"(<human>:|<bot>:)")
_SPACES = re.compile(" *")
_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class PromptType:
    """How one prompt type writes an exchange (h2oGPT's names in brackets).

    A ``None`` piece is absent, which changes how instruction and input are joined, exactly as in
    h2oGPT: with both an instruction and an input piece they follow their openings; with only one
    the other is joined by a newline; with neither, ``instruction: input``.
    """

    name: str
    code: int | None  # h2oGPT's PromptType enum value; None for sftkit's own types
    description: str
    preamble: str | None = None  # opens every prompt [promptB]
    preamble_with_input: str | None = None  # opens a prompt whose exchange has an input [promptA]
    instruction: str | None = None  # before the human's instruction [PreInstruct]
    input: str | None = None  # before the exchange's input [PreInput]
    response: str | None = None  # opens the answer [PreResponse]
    history_response: str | None = None  # opens an answer in chat history (None: response)
    preamble_in_history: bool = True  # False: chat history leaves the preamble out
    newline_after_prompt: bool = True  # a newline after the instruction/input [inject_newline]
    chat_sep: str = "\n"  # after each exchange of chat history
    dated: bool = False  # a prompt without context opens with the current date and time
    as_written: bool = False  # text with <human>:/<bot>: markers is trained exactly as written
    stop: tuple[str, ...] = ()  # strings that end an answer in generation


_INSTRUCT = dict(instruction="\n### Instruction:\n", input="\n### Input:\n", response="\n### Response:\n",
                 preamble_in_history=False)
_HUMAN_BOT = dict(preamble=HUMAN + " ", instruction="", response=BOT, history_response=BOT + " ",
                  as_written=True, stop=(HUMAN, BOT))

PROMPT_TYPES: dict[str, PromptType] = {t.name: t for t in [
    PromptType("plain", 0, "The text as written: nothing added. Rows carrying `<human>:`/`<bot>:` markers keep them, "
               "and their answers (with the `<human>:` that ends each) are what is learned; a row without "
               "markers is learned whole.",
               preamble="", instruction="", input="", response="", newline_after_prompt=False, chat_sep="",
               as_written=True, stop=(HUMAN,)),
    PromptType("instruct", 1, "Alpaca: a task preamble, `### Instruction:`, `### Input:`, `### Response:`.",
               preamble="Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n",
               preamble_with_input="Below is an instruction that describes a task, paired with an input that "
                                   "provides further context. Write a response that appropriately completes "
                                   "the request.\n",
               stop=("### Instruction:",), **_INSTRUCT),
    PromptType("quality", 2, "Like instruct, with a preamble asking for a detailed ~100-word response.",
               preamble="Write a detailed high-quality, accurate, fair, Response with about 100 words by "
                        "following the Instruction.\n",
               preamble_with_input="Write a detailed high-quality, accurate, fair, Response with about 100 words "
                                   "by following the Instruction as applied on the Input.\n",
               stop=("### Instruction:",), **_INSTRUCT),
    PromptType("human_bot", 3, "OIG / h2oGPT chat: `<human>: question`, then `<bot>:` and the answer.",
               **_HUMAN_BOT),
    PromptType("dai_faq", 4, "Driverless AI FAQ: question and documentation-answer headings; "
               "an answer ends at a blank line.",
               preamble="Answer the following Driverless AI question.\n",
               instruction="\n### Driverless AI frequently asked question:\n",
               response="\n### Driverless AI documentation answer:\n", chat_sep="\n\n", stop=("\n\n",)),
    PromptType("summarize", 5, "`## Main Text`, then `## Summary`.",
               preamble="", instruction="## Main Text\n\n", input="", response="\n\n## Summary\n\n",
               stop=("## Main Text",)),
    PromptType("simple_instruct", 6, "No markers: the instruction (`: input`), then the answer (T5/flan style).",
               newline_after_prompt=False),
    PromptType("instruct_vicuna", 7, "Vicuna: a system sentence, `### Human:` and `### Assistant:`.",
               preamble="A chat between a curious human and an artificial intelligence assistant. The "
                        "assistant gives helpful, detailed, and polite answers to the human's questions.",
               instruction="\n### Human:\n", response="\n### Assistant:\n", preamble_in_history=False,
               stop=("### Human:", "### Assistant:")),
    PromptType("instruct_with_end", 8, "Dolly: like instruct; an answer also ends at `### End`.",
               preamble="Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n",
               preamble_with_input="Below is an instruction that describes a task, paired with an input that "
                                   "provides further context. Write a response that appropriately completes "
                                   "the request.\n",
               stop=("### End", "### Instruction:"), **_INSTRUCT),
    PromptType("human_bot_orig", 9, "human_bot opened by `Current Date:` and `Current Time:` lines "
               "(GPT-NeoXT-Chat-Base) when there is no context.", dated=True, **_HUMAN_BOT),
    PromptType("prompt_answer", 10, "h2oGPT gm models: `<|prompt|>` and `<|answer|>`; history turns end "
               "with `<|endoftext|>`.",
               preamble="<|prompt|>", instruction="", response="<|answer|>", chat_sep="<|endoftext|>",
               stop=("<|prompt|>", "<|answer|>", "<|endoftext|>")),
    PromptType("open_assistant", 11, "OpenAssistant: `<|prompter|>` and `<|assistant|>`; history turns end "
               "with `</s>`.",
               preamble="<|prompter|>", instruction="", response="<|assistant|>", chat_sep="</s>",
               stop=("<|prompter|>", "<|assistant|>", "<|prefix_end|>", "</s>")),
    PromptType("wizard_lm", 12, "WizardLM: the instruction, then `### Response` (no colon) and the answer.",
               preamble="", instruction="", response="\n\n### Response", chat_sep="</s>",
               stop=("### Response", "</s>")),
    PromptType("wizard_mega", 13, "Wizard-Mega: `### Instruction:` and `### Assistant:`.",
               preamble="", instruction="\n### Instruction:\n", response="\n### Assistant:\n",
               stop=("### Assistant:", "### Instruction:")),
    PromptType("chat", None, "The tokenizer's own chat template (messages rows or any other); stops at its "
               "end-of-sequence token."),
]}

_BY_CODE = {str(t.code): t for t in PROMPT_TYPES.values() if t.code is not None}


def prompt_type_names() -> str:
    """Every accepted prompt type, for help texts: ``plain (0), instruct (1), …, chat``."""
    return ", ".join(f"{t.name} ({t.code})" if t.code is not None else t.name for t in PROMPT_TYPES.values())


def get_prompt_type(name: str | int) -> PromptType:
    """The prompt type named ``name``: an h2oGPT name, its numeric code (int or text), or ``chat``."""
    key = str(name).strip()
    found = PROMPT_TYPES.get(key) or _BY_CODE.get(key)
    if found is None:
        raise PromptError(f"unknown prompt_type {name!r}; choose one of {prompt_type_names()}")
    return found


def adds_special_tokens(prompt_type: str | int) -> bool:
    """Whether text of this prompt type gets the tokenizer's own special tokens (a BOS, say) when
    encoded: a chat template writes its own, every other type relies on the tokenizer's."""
    return get_prompt_type(prompt_type).name != "chat"


def encode(tokenizer, text, prompt_type: str | int, **kwargs):
    """Tokenize ``text`` (one string or a list) written in ``prompt_type``; the one place that
    decides the special tokens. ``kwargs`` go to the tokenizer (``return_offsets_mapping``, …)."""
    return tokenizer(text, add_special_tokens=adds_special_tokens(prompt_type), **kwargs)


# ---------------------------------------------------------------- <human>:/<bot>: text

def split_turns(text: str) -> list[Turn]:
    """Parse ``<human>: …\\n<bot>: …`` text into turns; text before the first marker is dropped.

    Turn texts are stripped. A text without markers yields an empty list.
    """
    parts = _TURN_MARKER.split(text)
    turns: list[Turn] = []
    for marker, body in zip(parts[1::2], parts[2::2]):
        turns.append(("human" if marker == HUMAN else "bot", body.strip()))
    return turns


def join_turns(turns: list[Turn]) -> str:
    """The inverse of :func:`split_turns`: ``<human>: a\\n<bot>: b``."""
    lines = []
    for role, text in turns:
        if role not in ("human", "bot"):
            continue
        lines.append(f"{HUMAN if role == 'human' else BOT} {text}")
    return "\n".join(lines)


def has_markers(text: str) -> bool:
    return _TURN_MARKER.search(text) is not None


def check_turns(turns: list[Turn]) -> None:
    """Raise PromptError unless the turns have known roles and at least one answer (a bot turn or a
    tool call)."""
    for role, _ in turns:
        if role not in ROLES:
            raise PromptError(f"unknown role {role!r}; expected one of {ROLES}")
    if not any(role in ANSWER_ROLES for role, _ in turns):
        raise PromptError("conversation has no bot turn, so there is nothing to learn")


# ---------------------------------------------------------------- tool calls

TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_CALL_BLOCK = re.compile(rf"{CALL_OPEN}\s*(.*?)\s*{CALL_CLOSE}", re.DOTALL)


def tool_call_text(call) -> str | None:
    """A tool call as a ``tool_call`` turn's text, ``{"name": …, "arguments": {…}}`` (None: not a call).

    Takes OpenAI's ``{"type": "function", "function": {"name", "arguments": "<JSON text>"}}``, its
    legacy ``function_call`` object, ShareGPT's ``{"name", "arguments"}`` (as JSON text or an
    object) or Llama 3.1's ``{"name", "parameters"}``.
    """
    if isinstance(call, str):
        try:
            call = json.loads(call)
        except (ValueError, RecursionError):
            return None
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return json.dumps({"name": call["name"].strip(), "arguments": arguments}, ensure_ascii=False)


def tools_as_text(turns: list[Turn], tools: list[dict] | None = None) -> list[Turn]:
    """A tool conversation in the five plain roles, as the h2oGPT prompt types write it (module docstring)."""
    out: list[Turn] = []
    for role, text in turns:
        if role == "tool_call":
            block = f"{CALL_OPEN}\n{text}\n{CALL_CLOSE}"
            out.append(("bot", f"{out.pop()[1]}\n{block}" if out and out[-1][0] == "bot" else block))
        elif role == "tool":
            out.append(("human", f"{RESPONSE_OPEN}\n{text}\n{RESPONSE_CLOSE}"))
        else:
            out.append((role, text))
    if tools:
        listing = "\n".join(json.dumps(tool.get("function", tool), ensure_ascii=False) for tool in tools)
        lead = next((i for i, (role, _) in enumerate(out) if role != "system"), len(out))
        out.insert(lead, ("system", f"{TOOLS_OPEN}\n{listing}\n{TOOLS_CLOSE}"))
    return out


def parse_tool_calls(text: str, prompt_type: str | int) -> tuple[str, list[dict]]:
    """(the text without its calls, the calls ``{"name", "arguments"}``) in a generated answer.

    Calls are ``<tool_call>`` blocks (how the h2oGPT types write them, and most chat templates); under
    ``chat`` an answer that is only a call as bare JSON (Llama 3.1's way) is one too. A block that is
    not a call stays in the text.
    """
    calls, kept = [], []
    last = 0
    for block in _CALL_BLOCK.finditer(text):
        call = tool_call_text(block.group(1))
        if call is not None:
            kept.append(text[last:block.start()])
            last = block.end()
            calls.append(json.loads(call))
    kept.append(text[last:])
    if not calls and get_prompt_type(prompt_type).name == "chat" and text.strip().startswith("{"):
        call = tool_call_text(text.strip())
        if call is not None:
            return "", [json.loads(call)]
    return "".join(kept).strip(), calls


def tool_call_problem(text: str, calls: list[dict], tools: list[dict] | None) -> str | None:
    """Why the calls :func:`parse_tool_calls` read from an answer (``text``: what it left) are not valid
    calls of ``tools``, or None: a ``<tool_call>`` block left unparsed (its JSON broken or cut short),
    a function not in the list, or a required parameter missing. The one rule of the API (an invalid
    call is answered as text) and of the evaluation report (valid calls counted)."""
    if CALL_OPEN in text:
        return "bad_call_json"
    schemas = {tool.get("function", tool).get("name"): tool.get("function", tool) for tool in tools or []}
    for call in calls:
        schema = schemas.get(call["name"])
        if schema is None:
            return "unknown_function"
        parameters = schema.get("parameters")
        required = parameters.get("required") if isinstance(parameters, dict) else None
        if isinstance(required, list) and any(name not in call["arguments"] for name in required):
            return "missing_argument"
    return None


# ---------------------------------------------------------------- h2oGPT-style exchanges

@dataclass
class _Exchange:
    instruction: str = ""
    input: str = ""
    answer: str | None = None


def _exchanges(turns: list[Turn]) -> tuple[str, list[_Exchange]]:
    """Group turns into (instruction, input, answer) exchanges; system and context become the lead text.

    Consecutive human turns are joined by newlines; a bot turn closes the exchange it answers.
    """
    lead, exchanges, current = "", [], _Exchange()
    for role, text in turns:
        if role == "system":
            lead += f"{text}\n" if text else ""
        elif role == "context":
            lead += text
        elif role == "human":
            current.instruction = f"{current.instruction}\n{text}" if current.instruction else text
        elif role == "input":
            current.input = f"{current.input}\n{text}" if current.input else text
        elif role == "bot":
            current.answer = text
            exchanges.append(current)
            current = _Exchange()
        else:
            raise PromptError(f"unknown role {role!r}; expected one of {ROLES}")
    if current.instruction or current.input:
        exchanges.append(current)
    return lead, exchanges


def _stamp() -> tuple[str, str]:
    """Date and time for ``dated`` prompt types, in h2oGPT's format from the clock transformers gives
    chat templates (``strftime_now``: local time without a zone, so ``%Z`` is empty), so a saved
    model's template writes the same lines (a function, so tests can fix the clock)."""
    now = datetime.now()
    return now.strftime("%Y-%m-%d"), now.strftime("%H:%M:%S %p %Z")


def _opening(spec: PromptType, ex: _Exchange, *, history: bool, context: str) -> str:
    """One exchange up to where its answer starts, as h2oGPT's ``generate_prompt`` writes it."""
    text = ""
    if spec.dated and not history and not context:
        date, clock = _stamp()
        text += f"Current Date: {date}\nCurrent Time: {clock}\n\n"
    if not (history and not spec.preamble_in_history):
        text += (spec.preamble_with_input if ex.input and spec.preamble_with_input else spec.preamble) or ""
    ins, inp, before_ins, before_inp = ex.instruction, ex.input, spec.instruction, spec.input
    body = None
    if ins and inp:
        if before_ins is not None and before_inp is not None:
            body = f"{before_ins}{ins}{before_inp}{inp}"
        elif before_ins is not None or before_inp is not None:
            body = f"{before_ins if before_ins is not None else before_inp}{ins}\n{inp}"
        else:
            body = f"{ins}: {inp}"
    elif ins:
        body = (before_ins or "") + ins
    elif inp:
        body = (before_inp or "") + inp
    if body is not None:
        text += body + ("\n" if spec.newline_after_prompt else "")
    response = spec.history_response if history and spec.history_response is not None else spec.response
    return text + (response or "")


def _render_exchanges(spec: PromptType, turns: list[Turn]) -> tuple[str, list[Span], bool]:
    """Text and raw answer spans; the last exchange is written in full, earlier ones as history.

    The flag says whether the last exchange has an answer (False: the text ends where one starts).
    """
    lead, exchanges = _exchanges(turns)
    text, spans = lead, []
    for i, ex in enumerate(exchanges):
        last = i == len(exchanges) - 1
        text += _opening(spec, ex, history=not last, context=text)
        if ex.answer is not None:
            spans.append((len(text), len(text) + len(ex.answer)))
            text += ex.answer
        if not last and not text.endswith(spec.chat_sep):
            text += spec.chat_sep
    return text, spans, bool(exchanges) and exchanges[-1].answer is not None


# ---------------------------------------------------------------- learned spans

def _with_stop(text: str, span: Span, stops: tuple[str, ...]) -> Span:
    """``span`` run on over the first stop string that follows it after whitespace only."""
    start, end = span
    best = None
    for stop in stops:
        at = text.find(stop, end)
        if at >= 0 and not text[end:at].strip() and (best is None or at < best[0]):
            best = (at, at + len(stop))
    return (start, best[1]) if best else span


def _marker_spans(text: str) -> list[Span]:
    """Answers of ``<human>:``/``<bot>:`` text: after each ``<bot>:`` (and its spaces) to the next marker."""
    markers = list(_TURN_MARKER.finditer(text))
    spans = []
    for here, after in zip(markers, markers[1:] + [None]):
        if here.group() != BOT:
            continue
        end = after.start() if after else len(text)
        start = _SPACES.match(text, here.end(), end).end()
        if _NON_SPACE.search(text, start, end):  # no slices: rows are long and this runs per row
            spans.append((start, end))
    return spans


def render_text(text: str, prompt_type: str | int) -> tuple[str, list[Span]]:
    """Text trained exactly as written (``plain``, and the human_bot types on marker text).

    The learned spans are the answers its markers delimit, each with the stop after it; text
    without markers is learned whole under ``plain``.
    """
    spec = get_prompt_type(prompt_type)
    if not spec.as_written:
        raise PromptError(f"prompt_type {spec.name!r} rewrites turns; it cannot train text as written")
    if not has_markers(text):
        if spec.name != "plain":
            raise PromptError("text has no <human>:/<bot>: markers, so there is no answer to learn")
        return text, [(0, len(text))] if text.strip() else []
    spans = [_with_stop(text, span, spec.stop) for span in _marker_spans(text)]
    if not spans:
        raise PromptError("conversation has no bot turn, so there is nothing to learn")
    return text, spans


def render_conversation(turns: list[Turn], prompt_type: str | int, tokenizer=None,
                        text: str | None = None, tools: list[dict] | None = None) -> tuple[str, list[Span]]:
    """The training text of a conversation and the ``[start, end)`` character spans to learn.

    Spans cover each answer (bot turns and tool calls) and a stop string directly after it.
    ``text``, when the row was ``<human>:``/``<bot>:`` text, is kept as written by the types that
    write those markers themselves (plain, human_bot, human_bot_orig); other types rewrite its
    turns, leaving out human turns after the last answer (the answer's stop is then the EOS).
    """
    spec = get_prompt_type(prompt_type)
    if text is not None and spec.as_written and (spec.name == "plain" or has_markers(text)):
        return render_text(text, spec.name)
    check_turns(turns)
    last_answer = max(i for i, (role, _) in enumerate(turns) if role in ANSWER_ROLES)
    turns = turns[:last_answer + 1]  # an unanswered question after it teaches nothing here
    if spec.name == "chat":
        return _render_chat_template(turns, tokenizer, tools)
    rendered, spans, _ = _render_exchanges(spec, tools_as_text(turns, tools))
    return rendered, [_with_stop(rendered, span, spec.stop) for span in spans]


def render_prompt(history: list[Turn], message: str, prompt_type: str | int, tokenizer=None,
                  system: str | None = None, input: str | None = None) -> str:
    """The text to generate from: earlier turns, the new human message, then the answer's opening.

    It equals the training text of the same conversation up to where the answer starts (for
    ``human_bot``: ``…<human>: message\\n<bot>:``). ``input`` is an alpaca-style input that goes
    with the message (``### Input:`` for instruct).
    """
    turns: list[Turn] = ([("system", system)] if system else []) + list(history) + [("human", message)]
    if input:
        turns.append(("input", input))
    return render_open(turns, prompt_type, tokenizer)


def render_open(turns: list[Turn], prompt_type: str | int, tokenizer=None, tools: list[dict] | None = None) -> str:
    """The text of a conversation that awaits an answer (its last turn a question or a tool result),
    up to where the answer starts: the training text of the answered conversation up to its answer."""
    spec = get_prompt_type(prompt_type)
    if spec.name == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PromptError("prompt_type 'chat' needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(chat_messages(turns), tools=tools, tokenize=False,
                                             add_generation_prompt=True)
    text, _, _ = _render_exchanges(spec, tools_as_text(turns, tools))
    return text


def stop_strings(prompt_type: str | int, tokenizer=None) -> list[str]:
    """Strings that end a bot answer for this prompt type (never shown to the user).

    They are what training taught the model to write after an answer (see :func:`_with_stop`),
    besides the end-of-sequence token, which generation always stops at.
    """
    spec = get_prompt_type(prompt_type)
    stops = list(spec.stop)
    if spec.name == "chat" and tokenizer is not None and tokenizer.eos_token:
        stops.append(tokenizer.eos_token)
    return stops


def example_rendering(prompt_type: str | int) -> tuple[str, str]:
    """(training text, generation prompt) of one example exchange, for ``--help`` and the README."""
    turns = [("human", "Who are you?"), ("bot", "I am sftkit's assistant.")]
    text, _ = render_conversation(turns, prompt_type)
    prompt = render_prompt([], "Who are you?", prompt_type)
    # Dated types show the shape of the clock lines, so the README does not change every run.
    return tuple(re.sub(r"Current Date: .*\nCurrent Time: .*\n", "Current Date: YYYY-MM-DD\n"
                        "Current Time: HH:MM:SS AM TZ\n", t) for t in (text, prompt))


# ---------------------------------------------------------------- the tokenizer's chat template

def chat_messages(turns: list[Turn]) -> list[dict]:
    """Turns as chat-template messages; an assistant's text and its tool calls are one message."""
    role_names = {"system": "system", "context": "system", "human": "user", "bot": "assistant", "tool": "tool"}
    messages: list[dict] = []
    for role, text in turns:
        if role == "input":  # an exchange's input joins its instruction
            messages[-1] = {**messages[-1], "content": f"{messages[-1]['content']}\n\n{text}"}
        elif role == "tool_call":
            add_tool_call(messages, text)
        else:
            messages.append({"role": role_names[role], "content": text})
    return messages


def add_tool_call(messages: list[dict], call_text: str) -> None:
    """Append a ``tool_call`` turn to chat messages: one of the ``tool_calls`` of the assistant message
    it follows (a new one when the last message is not the assistant's), ``arguments`` as an object
    (what chat templates take)."""
    if not (messages and messages[-1]["role"] == "assistant"):
        messages.append({"role": "assistant", "content": ""})
    messages[-1].setdefault("tool_calls", []).append({"type": "function", "function": json.loads(call_text)})


def _render_chat_template(turns: list[Turn], tokenizer, tools: list[dict] | None = None) -> tuple[str, list[Span]]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise PromptError("prompt_type 'chat' needs a tokenizer with a chat template")
    messages = chat_messages(turns)

    def render(upto: list[dict], opening: bool = False) -> str:
        return tokenizer.apply_chat_template(upto, tools=tools, tokenize=False, add_generation_prompt=opening)

    full = render(messages)
    calls = [m["function"]["name"] for message in messages for m in message.get("tool_calls", [])]
    if any(name not in full for name in calls + [t.get("function", t)["name"] for t in tools or []]):
        raise PromptError("the tokenizer's chat template leaves out this conversation's tools or tool calls; use a "
                          "template that supports tools, or an h2oGPT prompt type (they write tools as text)")
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:i], opening=True)
        through = render(messages[: i + 1])
        if not full.startswith(before) or not full.startswith(through):
            raise PromptError("the tokenizer's chat template does not render turns as prefixes; "
                              "use another prompt_type")
        start = through.index(message["content"], len(before)) if message["content"] else len(before)
        spans.append((start, len(through)))
    return full, spans
