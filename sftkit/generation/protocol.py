"""OpenAI's wire format for the API: every request checked in one place, every answer shaped here.

:func:`prepare` turns a request body (raw bytes) into the engine's requests or an :class:`ApiError`
in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status: a body that
is not UTF-8 or not JSON (or nested past what a parser may take), a field of the wrong type or out of
range, a lone surrogate in any text, too many or too long stop strings, an empty last message, an
unknown model, a prompt longer than the context, and any field this server does not implement
(refused by name, never ignored). So a 500 from this server is a bug. :func:`prepare` does CPU work
(parsing, rendering, tokenizing): the server runs it off its event loop.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftkit.errors import GenerationError
from sftkit.generation.config import SEED_RANGE, GenerateConfig
from sftkit.generation.engine import Answer, Request
from sftkit.generation.loading import Models
from sftkit.generation.prompting import context_length, count_tokens, most_chars_per_token
from sftkit.prompts import render_prompt

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


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


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


class CompletionBody(_Body):
    prompt: str | list[str]


# Fields of OpenAI's API this server does not implement, and the values that ask for nothing: any other
# value is refused with a 400 naming the field, never ignored. Tool calling goes here until it lands.
_COMMON: dict[str, tuple] = {"logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0)}
_NOT_IMPLEMENTED: dict[str, dict[str, tuple]] = {
    "chat": {**_COMMON, "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
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


def chat_prompt(messages: list[Message], config: GenerateConfig, tokenizer) -> str:
    """The prompt text of a chat: system messages become the system prompt (else --system_prompt), the
    user/assistant turns are rendered by the prompt type training used, ending where the answer starts."""
    system = "\n".join(m.text() for m in messages if m.role in ("system", "developer")) or config.system_prompt
    turns = [("human" if m.role == "user" else "bot", m.text()) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "human":
        raise ApiError(400, "messages must end with a user message", param="messages")
    if not turns[-1][1].strip():
        raise ApiError(400, "the last user message is empty: there is nothing to answer", param="messages")
    for (role, _), (next_role, _) in zip(turns, turns[1:]):
        if role == next_role:
            raise ApiError(400, "user and assistant messages must alternate", param="messages")
    return render_prompt(turns[:-1], turns[-1][1], config.prompt_type, tokenizer=tokenizer, system=system or None)


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


def prepare(models: Models, config: GenerateConfig, limits: Limits, kind: str, raw: bytes) -> Prepared:
    """Check a ``chat`` or ``completion`` request body and turn it into the engine's requests."""
    data = read_json(raw)
    _refuse_unimplemented(data, kind)
    body = _validated(ChatBody if kind == "chat" else CompletionBody, data)
    try:
        name = models.resolve(body.model)
    except GenerationError:
        raise ApiError(404, f"The model {body.model[:100]!r} does not exist; this server has "
                            f"{', '.join(models.names)}", code="model_not_found", param="model") from None
    if isinstance(body, ChatBody):
        prompts, param = [chat_prompt(body.messages, config, models.tokenizer)], "messages"
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
    return Prepared(kind, name, prompts, requests, settings, body.n, body.stream, options.include_usage)


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
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": request.model, "usage": usage(answers, request.n), "choices": choices}
    choices = [{"index": i, "text": a.text, "logprobs": None, "finish_reason": finish_reason(a)}
               for i, a in enumerate(answers)]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": request.model, "usage": usage(answers, request.n), "choices": choices}


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Chunks:
    """The server-sent events of one streamed response, in OpenAI's chunk shape."""

    def __init__(self, request: Prepared):
        self.request = request
        self.chat = request.kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self.created = int(time.time())

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

    def piece(self, index: int, text: str) -> str:
        return self._event([self._choice(index, text)])

    def ending(self, answers: list[Answer]) -> list[str]:
        events = [self._event([self._choice(i, finish=finish_reason(a)) for i, a in enumerate(answers)])]
        if self.request.include_usage:
            events.append(self._event([], usage(answers, self.request.n)))
        return [*events, sse("[DONE]")]

    @staticmethod
    def error(message: str) -> list[str]:
        return [sse({"error": ApiError(500, message, code="generation_failed").body()["error"]}), sse("[DONE]")]
