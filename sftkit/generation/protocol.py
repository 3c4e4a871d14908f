"""OpenAI's wire format for the API: every request checked in one place, every answer shaped here.

:func:`prepare` turns a request body (raw bytes) into the engine's requests or an :class:`ApiError`
in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status: a body that
is not UTF-8 or not JSON (or nested past what a parser may take), a field of the wrong type or out of
range, a lone surrogate in any text, too many or too long stop strings, an empty last message, an
unknown model, a prompt longer than the context, and any field this server does not implement
(refused by name, never ignored). So a 500 from this server is a bug. :func:`prepare` does CPU work
(parsing, rendering, tokenizing): the server runs it off its event loop.

Tool calling: a chat's ``messages`` become turns through :func:`sftkit.rows.message_turns` (the
reader of training's ``messages`` rows, so assistant ``tool_calls`` and ``tool`` messages are read
as training read them), its ``tools`` are rendered as training rendered them, and :class:`ToolUse`
reads the calls back out of each answer (:func:`sftkit.prompts.parse_tool_calls`), returning them
in OpenAI's shape when they are valid calls of the listed tools, else the answer as text.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftkit import rows
from sftkit.errors import GenerationError
from sftkit.generation.config import SEED_RANGE, GenerateConfig
from sftkit.generation.engine import Answer, Request
from sftkit.generation.loading import Models
from sftkit.generation.prompting import context_length, count_tokens, most_chars_per_token
from sftkit.prompts import CALL_OPEN, get_prompt_type, parse_tool_calls, render_open, tool_call_problem

MAX_STOPS = 4  # OpenAI's own limit
MAX_STOP_CHARS = 1000
MAX_CHOICES = 16  # n
MAX_ROWS = 64  # prompts times n in one completions request


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error"}

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": _printable(self.message), "type": kind,
                          "param": None if self.param is None else _printable(self.param), "code": self.code}}


def _printable(text: str) -> str:
    """``text`` with any lone surrogate written as its escape, so the error itself can be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_text(data) -> str | None:
    """Where ``data`` (parsed JSON) holds a string that is not text — a lone surrogate, half of a UTF-16
    pair, which JSON can escape (\\ud800) but no tokenizer can take — as a param path; else None."""
    stack = [((), data)]
    while stack:  # iterative: JSON may nest as deep as its parser allowed
        path, value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            for text in (key, item):
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        return ".".join(map(str, (*path, key)))
            if isinstance(item, (dict, list)):
                stack.append(((*path, key), item))
    return None


class _Part(BaseModel):
    type: Literal["text"]
    text: str


class _CalledFunction(BaseModel):
    name: str = Field(min_length=1)
    arguments: str


class _ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: _CalledFunction


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None  # None: an assistant message that only calls tools
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _Function(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class _Tool(BaseModel):
    type: Literal["function"]
    function: _Function


class _ChosenFunction(BaseModel):
    name: str


class _NamedChoice(BaseModel):
    type: Literal["function"]
    function: _ChosenFunction


class _StreamOptions(BaseModel):
    include_usage: bool = False


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: _StreamOptions | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop: at most {MAX_STOPS} stop sequences, got {len(stops)}", param="stop")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ApiError(400, f"stop: a stop sequence may hold at most {MAX_STOP_CHARS} characters",
                           param="stop")
        return tuple(stop for stop in stops if stop)


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionBody(_Body):
    prompt: str | list[str]


# Fields of OpenAI's API this server does not implement, and the values that ask for nothing: any other
# value is refused with a 400 naming the field, never ignored. The legacy ``functions``/``function_call``
# are refused: ``tools``/``tool_choice`` replace them.
_COMMON: dict[str, tuple] = {"logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0)}
_NOT_IMPLEMENTED: dict[str, dict[str, tuple]] = {
    "chat": {**_COMMON, "functions": (None, []),
             "function_call": (None, "none"), "logprobs": (None, False), "top_logprobs": (None, 0),
             "response_format": (None, {"type": "text"}), "audio": (None,), "prediction": (None,),
             "modalities": (None, ["text"]), "web_search_options": (None,)},
    "completion": {**_COMMON, "logprobs": (None,), "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1)},
}


def _same(value, default) -> bool:
    """Equal and of the same kind (``0`` is not ``False``; ``0.0`` is ``0``)."""
    if isinstance(value, bool) or isinstance(default, bool) or value is None or default is None:
        return value is default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default
    return type(value) is type(default) and value == default


def _refuse_unimplemented(data: dict, kind: str) -> None:
    for name, defaults in _NOT_IMPLEMENTED[kind].items():
        if not any(_same(data.get(name), default) for default in defaults):
            raise ApiError(400, f"{name}: not supported by this server (it answers with plain text; the README "
                                f"lists the fields it implements)", code="unsupported_parameter", param=name)


def read_json(raw: bytes) -> dict:
    """The JSON object of a request body, or a 400 saying why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 (byte {exc.start})", code="invalid_body") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ApiError(400, "the request body nests JSON too deeply", code="invalid_body") from None
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_body") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                       code="invalid_body")
    return data


# Parts of a pydantic error location that name a union member or a type, not a field.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none)$|[\[(]")


def _validated(cls, data: dict):
    where = _not_text(data)
    if where is not None:
        raise ApiError(400, f"invalid request body: {where}: holds a lone surrogate (\\ud800-\\udfff, half of a "
                            f"UTF-16 pair), which is not text", param=where)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        # Of a union's failed members, the one that got deepest into the value says most.
        first = max(exc.errors(include_input=False, include_url=False), key=lambda error: len(error["loc"]))
        loc = [str(part) for part in first["loc"] if isinstance(part, int) or not _TYPE_TAG.search(part)]
        where = ".".join(loc) or None
        raise ApiError(400, f"invalid request body: {where or 'body'}: {first['msg']}",
                       param=where) from None
    except RecursionError:
        raise ApiError(400, "the request body nests JSON too deeply", code="invalid_body") from None


@dataclass(frozen=True)
class ToolUse:
    """How a chat request uses tools: the tools rendered into its prompt, the opening its answers are
    given (``tool_choice`` ``required`` or a named function: the start of a call), and whether an
    answer may make several calls (``parallel_tool_calls``)."""

    tools: list[dict]
    prompt_type: str
    opening: str = ""
    parallel: bool = True

    def read(self, generated: str) -> tuple[str, list[dict]]:
        """(content, calls in OpenAI's shape) of an answer; no calls (the whole answer as content) when it
        made none or an invalid one (:func:`sftkit.prompts.tool_call_problem`)."""
        text = self.opening + generated if self.opening else generated
        content, calls = parse_tool_calls(text, self.prompt_type)
        if not calls or tool_call_problem(content, calls, self.tools):
            return text, []
        calls = calls if self.parallel else calls[:1]
        return content, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": call["name"],
                                       "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
                         for call in calls]


def tool_use(body: "ChatBody", tools_value, config: GenerateConfig) -> ToolUse | None:
    """The request's :class:`ToolUse` (``tools_value``: its ``tools`` as sent, so each schema is rendered
    with its keys in the client's order, as a training file's are), or None: no tools, or
    ``tool_choice="none"`` (nothing rendered, nothing parsed)."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise ApiError(400, "tool_choice: needs tools", param="tool_choice")
        return None
    if choice == "none":
        return None
    tools = rows.tool_list(tools_value)
    names = [tool["function"]["name"] for tool in tools]
    opening = ""
    if choice == "required":
        opening = f"{CALL_OPEN}\n"
    elif isinstance(choice, _NamedChoice):
        if choice.function.name not in names:
            raise ApiError(400, f"tool_choice: no tool named {choice.function.name[:64]!r} in tools",
                           param="tool_choice")
        opening = f"{CALL_OPEN}\n{{\"name\": {json.dumps(choice.function.name, ensure_ascii=False)}, \"arguments\":"
    return ToolUse(tools, get_prompt_type(config.prompt_type).name, opening, body.parallel_tool_calls is not False)


def _check_order(messages: list[Message]) -> None:
    """OpenAI's rules of a conversation: it ends with a user message or tool results, users and assistants
    take turns, and tool results answer an assistant message's ``tool_calls``."""
    spoken = [(at, m) for at, m in enumerate(messages) if m.role not in ("system", "developer")]
    if not spoken or spoken[-1][1].role not in ("user", "tool"):
        raise ApiError(400, "messages must end with a user message (or the results of tool calls)", param="messages")
    for i, (at, message) in enumerate(spoken):
        before = spoken[i - 1][1] if i else None
        if message.role == "tool":
            if before is None or not (before.role == "tool" or (before.role == "assistant" and before.tool_calls)):
                raise ApiError(400, f"messages.{at}: a tool message must answer an assistant message's tool_calls",
                               param="messages")
        elif message.tool_calls and message.role != "assistant":
            raise ApiError(400, "only assistant messages may hold tool_calls", param="messages")
        elif before is not None and before.role == message.role:
            raise ApiError(400, "user and assistant messages must alternate", param="messages")


def chat_prompt(messages: list[Message], raw_messages: list, config: GenerateConfig, tokenizer,
                tools: ToolUse | None = None) -> str:
    """The prompt text of a chat: system messages become the system prompt (else --system_prompt), the
    other messages are read as training reads a ``messages`` row (``raw_messages``, as sent) and
    rendered with the tools by the prompt type training used, ending where the answer starts (plus the
    opening of a call ``tool_choice`` asks for)."""
    _check_order(messages)
    turns = rows.message_turns(raw_messages)
    if isinstance(turns, str):
        raise ApiError(400, f"messages: {rows.describe(turns)}", param="messages")
    system = "\n".join(text for role, text in turns if role == "system") or config.system_prompt
    turns = [turn for turn in turns if turn[0] != "system"]
    if turns[-1][0] == "human" and not turns[-1][1].strip():
        raise ApiError(400, "the last user message is empty: there is nothing to answer", param="messages")
    lead = [("system", system)] if system else []
    prompt = render_open(lead + turns, config.prompt_type, tokenizer, tools.tools if tools else None)
    return prompt + (tools.opening if tools else "")


@dataclass(frozen=True)
class Limits:
    """What a request must fit: the model's context (prompt plus answer, in tokens) and the most
    characters one token stands for (None: unknown), which refuses a prompt far too long for the
    context without the cost of tokenizing it."""

    context: int
    chars_per_token: int | None

    @classmethod
    def of(cls, models: Models, config: GenerateConfig) -> "Limits":
        return cls(context_length(models.model, config), most_chars_per_token(models.tokenizer))


@dataclass
class Prepared:
    """A checked request: the model that answers, the engine's requests (``n`` per prompt), its settings."""

    kind: str  # "chat" or "completion"
    model: str
    prompts: list[str]
    requests: list[Request]
    settings: GenerateConfig
    n: int
    stream: bool
    include_usage: bool
    tools: ToolUse | None = None


def _settings(body: _Body, config: GenerateConfig) -> GenerateConfig:
    """The server's settings with the request's sampling ones: temperature 0 is greedy."""
    settings = replace(config, num_return_sequences=1)
    if body.temperature is not None:
        settings = replace(settings, do_sample=body.temperature > 0,
                           temperature=body.temperature if body.temperature > 0 else settings.temperature)
    if body.top_p is not None:
        settings = replace(settings, top_p=body.top_p)
    if body.seed is not None:
        settings = replace(settings, seed=body.seed)
    return settings


def _prompt_tokens(models: Models, config: GenerateConfig, limits: Limits, prompt: str, param: str) -> int:
    """Tokens of ``prompt``; a 413 when it leaves no room for an answer (known from its length alone when
    it is longer than the context could be in characters)."""
    context = limits.context
    if limits.chars_per_token and len(prompt) > context * limits.chars_per_token:
        raise ApiError(413, f"the prompt is {len(prompt)} characters, more than {context} tokens of this model can "
                            f"hold (its context, prompt plus answer): shorten it", code="context_length_exceeded",
                       param=param)
    tokens = count_tokens(models.tokenizer, prompt, config.prompt_type)
    if tokens >= context:
        raise ApiError(413, f"the prompt is {tokens} tokens; this model's context is {context} tokens "
                            f"(prompt plus answer): shorten it", code="context_length_exceeded", param=param)
    return tokens


def resolve_model(models: Models, name: str | None) -> str:
    """The model a request names, or a 404 in OpenAI's shape."""
    try:
        return models.resolve(name)
    except GenerationError:
        raise ApiError(404, f"The model {str(name)[:100]!r} does not exist; this server has "
                            f"{', '.join(models.names)}", code="model_not_found", param="model") from None


def prepare(models: Models, config: GenerateConfig, limits: Limits, kind: str, raw: bytes) -> Prepared:
    """Check a ``chat`` or ``completion`` request body and turn it into the engine's requests."""
    data = read_json(raw)
    _refuse_unimplemented(data, kind)
    body = _validated(ChatBody if kind == "chat" else CompletionBody, data)
    name = resolve_model(models, body.model)
    tools = None
    if isinstance(body, ChatBody):
        tools = tool_use(body, data.get("tools"), config)
        prompts, param = [chat_prompt(body.messages, data["messages"], config, models.tokenizer, tools)], "messages"
        asked = body.max_completion_tokens or body.max_tokens
    else:
        prompts, param = ([body.prompt] if isinstance(body.prompt, str) else body.prompt), "prompt"
        asked = body.max_tokens
        if not prompts or len(prompts) * body.n > MAX_ROWS:
            raise ApiError(400, f"prompt: give 1 to {MAX_ROWS} prompts (times n)", param="prompt")
        if not all(prompts):
            raise ApiError(400, "prompt: an empty prompt leaves nothing to continue", param="prompt")
    stops = body.stops()
    try:
        settings = _settings(body, config)
    except GenerationError as exc:
        raise ApiError(400, str(exc)) from None
    requests = []
    for prompt in prompts:
        tokens = _prompt_tokens(models, config, limits, prompt, param)
        limit = min(asked or config.max_new_tokens, limits.context - tokens)
        requests += [Request(prompt, name, limit, stops) for _ in range(body.n)]
    options = body.stream_options or _StreamOptions()
    return Prepared(kind, name, prompts, requests, settings, body.n, body.stream, options.include_usage, tools)


# ---------------------------------------------------------------- answers in OpenAI's shape

def finish_reason(answer: Answer) -> str:
    return "length" if answer.finish_reason == "max_new_tokens" else "stop"


def usage(answers: list[Answer], n: int) -> dict:
    """Token counts: each prompt once (its ``n`` answers share it), every answer's tokens."""
    prompt = sum(a.prompt_tokens for a in answers[::n]) if answers else 0
    completion = sum(a.new_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response(request: Prepared, answers: list[Answer]) -> dict:
    """The whole (non-streamed) response."""
    if request.kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": a.text}, "logprobs": None,
                    "finish_reason": finish_reason(a)} for i, a in enumerate(answers)]
        for choice, answer in zip(choices, answers) if request.tools else ():
            content, calls = request.tools.read(answer.text)
            choice["message"]["content"] = (content or None) if calls else content
            if calls:
                choice["message"]["tool_calls"], choice["finish_reason"] = calls, "tool_calls"
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": request.model, "usage": usage(answers, request.n), "choices": choices}
    choices = [{"index": i, "text": a.text, "logprobs": None, "finish_reason": finish_reason(a)}
               for i, a in enumerate(answers)]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": request.model, "usage": usage(answers, request.n), "choices": choices}


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _call_may_start(text: str) -> int:
    """Where a tool call may start in ``text``: its ``<tool_call>``, or a tail that may grow into one."""
    found = text.find(CALL_OPEN)
    if found >= 0:
        return found
    for size in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-size:]):
            return len(text) - size
    return len(text)


class _HeldText:
    """One streamed answer of a request with tools: its text is sent up to where a call may start (and
    without the whitespace at its ends, as the whole answer's content is), the rest held back until
    the answer is complete and its calls are known."""

    def __init__(self, tools: ToolUse):
        self.tools, self.text, self.sent = tools, tools.opening, ""

    def add(self, piece: str) -> str:
        self.text += piece
        body = self.text.lstrip()
        if self.tools.prompt_type == "chat" and body.startswith("{"):  # maybe a bare JSON call
            return ""
        safe = body[:_call_may_start(body)].rstrip()
        if not safe.startswith(self.sent):
            return ""
        new, self.sent = safe[len(self.sent):], safe
        return new

    def rest(self, answer: Answer) -> tuple[str, list[dict]]:
        """The content not sent yet, and the calls, once the answer is complete."""
        content, calls = self.tools.read(answer.text)
        return (content[len(self.sent):] if content.startswith(self.sent) else ""), calls


class Chunks:
    """The server-sent events of one streamed response, in OpenAI's chunk shape. With tools, each
    answer's text is held back from where a call may start; the calls are sent when it is complete,
    as ``delta.tool_calls`` (one chunk a call, with its ``index``), then ``finish_reason`` ``tool_calls``."""

    def __init__(self, request: Prepared):
        self.request = request
        self.chat = request.kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self.created = int(time.time())
        self.held = [_HeldText(request.tools) for _ in request.requests] if request.tools else None

    def _event(self, choices: list[dict], usage_counts: dict | None = None) -> str:
        body = {"id": self.id, "object": self.object, "created": self.created, "model": self.request.model,
                "choices": choices}
        if self.request.include_usage:
            body["usage"] = usage_counts
        return sse(body)

    def _choice(self, index: int, text: str | None = None, finish: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

    def opening(self) -> list[str]:
        """What goes first: a chat's role announcement."""
        return [self._event([self._choice(i, role=True) for i in range(len(self.request.requests))])] \
            if self.chat else []

    def piece(self, index: int, text: str) -> str | None:
        """The event of a piece of an answer's text, or None while it is held back."""
        if self.held is not None:
            text = self.held[index].add(text)
            if not text:
                return None
        return self._event([self._choice(index, text)])

    def ending(self, answers: list[Answer]) -> list[str]:
        events, finishes = [], [finish_reason(a) for a in answers]
        for i, answer in enumerate(answers if self.held is not None else ()):
            rest, calls = self.held[i].rest(answer)
            if rest:
                events.append(self._event([self._choice(i, rest)]))
            for n, call in enumerate(calls):
                events.append(self._event([{"index": i, "delta": {"tool_calls": [{"index": n, **call}]},
                                            "logprobs": None, "finish_reason": None}]))
            finishes[i] = "tool_calls" if calls else finishes[i]
        events.append(self._event([self._choice(i, finish=finish) for i, finish in enumerate(finishes)]))
        if self.request.include_usage:
            events.append(self._event([], usage(answers, self.request.n)))
        return [*events, sse("[DONE]")]

    @staticmethod
    def error(message: str) -> list[str]:
        return [sse({"error": ApiError(500, message, code="generation_failed").body()["error"]}), sse("[DONE]")]
