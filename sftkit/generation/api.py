"""OpenAI-compatible HTTP API (``generate.py --api=True``): FastAPI routes served by uvicorn.

``GET /v1/models`` lists the base model and each adapter; ``POST /v1/chat/completions`` renders
``messages`` with the prompt type the model was trained with; ``POST /v1/completions`` continues
raw text. Both stream as server-sent events ending with ``data: [DONE]``, or answer in one JSON.

One worker thread owns the model. Requests wait in a bounded queue (429 with Retry-After when it
is full); the requests waiting when the worker is free, and sharing sampling settings, are
generated together as one left-padded batch, each row with its own adapter, token limit and stop
strings. A client that disconnects cancels its rows at the next token and frees its slot.
Errors use OpenAI's JSON shape: 400 bad body, 401 bad key, 404 unknown model, 413 prompt longer
than the context, 429 queue full.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Literal

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.engine import Answer, BatchStream, Models, Request, context_length
from sftkit.prompts import render_prompt

RETRY_AFTER_SECONDS = 1


# ---------------------------------------------------------------- request bodies

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None


class _Part(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionBody(_Body):
    prompt: str | list[str]


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def chat_prompt(messages: list[Message], config: GenerateConfig, tokenizer) -> str:
    """The prompt text of a chat: system messages become the system prompt (else --system_prompt), the
    user/assistant turns are rendered by the prompt type training used, ending where the answer starts."""
    system = "\n".join(m.text() for m in messages if m.role in ("system", "developer")) or config.system_prompt
    turns = [("human" if m.role == "user" else "bot", m.text()) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "human":
        raise ApiError(400, "messages must end with a user message", param="messages")
    for (role, _), (next_role, _) in zip(turns, turns[1:]):
        if role == next_role:
            raise ApiError(400, "user and assistant messages must alternate", param="messages")
    return render_prompt(turns[:-1], turns[-1][1], config.prompt_type, tokenizer=tokenizer, system=system or None)


# ---------------------------------------------------------------- scheduling

@dataclass(eq=False)
class Job:
    """One HTTP request: its rows (n choices), its settings, and where the worker posts events."""

    requests: list[Request]
    settings: GenerateConfig
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple:
        s = self.settings
        return (s.do_sample, s.temperature, s.top_p, s.top_k, s.seed, s.num_beams, s.repetition_penalty)

    def post(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Scheduler:
    """The one thread that generates: takes waiting jobs, batches those that can share a generate call."""

    def __init__(self, models: Models, config: GenerateConfig):
        self.models = models
        self.limit = max(config.api_queue_size, 1)
        self.batch_rows = max(config.api_batch_size, 1)
        self.waiting: collections.deque[Job] = collections.deque()
        self.admitted = 0  # waiting + running jobs
        self.batches = 0
        self.condition = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="sftkit-api-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full."""
        with self.condition:
            if self.admitted >= self.limit:
                return False
            self.admitted += 1
            self.waiting.append(job)
            self.condition.notify()
        return True

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: a waiting job leaves the queue at once, a running one ends at its next token."""
        job.cancel.set()
        with self.condition:
            if job not in self.waiting:
                return
            self.waiting.remove(job)
            self.admitted -= 1
        job.post("done", None)

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify()
        self.thread.join(timeout=30)

    def _take(self) -> list[Job] | None:
        with self.condition:
            while not self.waiting and not self.stopping:
                self.condition.wait()
            if self.stopping:
                return None
            first = self.waiting.popleft()
            batch, rows = [first], len(first.requests)
            for job in list(self.waiting):
                if job.key() == first.key() and rows + len(job.requests) <= self.batch_rows:
                    self.waiting.remove(job)
                    batch.append(job)
                    rows += len(job.requests)
            return batch

    def _finish(self, job: Job, *event) -> None:
        with self.condition:
            self.admitted -= 1
        job.post(*event)

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            live = []
            for job in jobs:
                if job.cancel.is_set():
                    self._finish(job, "done", None)
                else:
                    live.append(job)
            if not live:
                continue
            requests = [request for job in live for request in job.requests]
            owner = [(job, index) for job in live for index in range(len(job.requests))]
            settings = replace(live[0].settings,
                               max_new_tokens=max(r.max_new_tokens for r in requests))
            stream = BatchStream(self.models.model, self.models.tokenizer, requests, settings)
            self.batches += 1
            try:
                for row, piece in stream:
                    job, index = owner[row]
                    if not job.cancel.is_set():
                        job.post("piece", index, piece)
            except Exception as exc:  # a failed generate call answers its requests with a 500
                for job in live:
                    self._finish(job, "error", f"{type(exc).__name__}: {exc}")
                continue
            answers = stream.answers or []
            for job in live:
                self._finish(job, "done", [answers[n] for n, (owner_job, _) in enumerate(owner) if owner_job is job])


# ---------------------------------------------------------------- the app

def _finish_reason(answer: Answer) -> str:
    return "length" if answer.finish_reason == "max_new_tokens" else "stop"


def _usage(answers: list[Answer]) -> dict:
    prompt = answers[0].prompt_tokens if answers else 0
    completion = sum(a.new_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def build_app(models: Models, config: GenerateConfig):
    """The FastAPI app serving ``models``; its ``state.scheduler`` is the generating thread."""
    scheduler = Scheduler(models, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.stop()

    app = FastAPI(title="sftkit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.scheduler = scheduler
    context = context_length(models.model, config)
    created = int(time.time())
    key = config.api_key.encode() if config.api_key else None

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(ApiError(400, f"invalid request body: {where or 'body'}: {first.get('msg', exc)}",
                                     param=where).body(), status_code=400)

    @app.middleware("http")
    async def authorize(request: HttpRequest, call_next):
        if key is not None and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            given = header[7:].encode() if header.lower().startswith("bearer ") else b""
            if not hmac.compare_digest(given, key):
                error = ApiError(401, "Incorrect API key provided: send 'Authorization: Bearer <api_key>'",
                                 code="invalid_api_key")
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "sftkit"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(name) for name in models.names]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        if name not in models.adapters:
            raise ApiError(404, f"The model {name!r} does not exist; this server has {', '.join(models.names)}",
                           code="model_not_found", param="model")
        return model_card(name)

    def settings_of(body: _Body) -> GenerateConfig:
        settings = config
        if body.temperature is not None:
            settings = replace(settings, do_sample=body.temperature > 0,
                               temperature=body.temperature if body.temperature > 0 else settings.temperature)
        if body.top_p is not None:
            settings = replace(settings, top_p=body.top_p)
        if body.seed is not None:
            settings = replace(settings, seed=body.seed)
        return replace(settings, num_return_sequences=1)

    def make_job(body: _Body, prompts: list[str], max_tokens: int | None) -> tuple[str, Job]:
        name = body.model or models.default
        if name not in models.adapters:
            raise ApiError(404, f"The model {name!r} does not exist; this server has {', '.join(models.names)}",
                           code="model_not_found", param="model")
        adapter = models.adapters[name]
        stops = tuple([body.stop] if isinstance(body.stop, str) else body.stop or ())
        wanted = max_tokens or config.max_new_tokens
        job = Job([], settings_of(body), asyncio.get_running_loop())
        for prompt in prompts:
            tokens = len(models.tokenizer(prompt, add_special_tokens=config.prompt_type != "chat")["input_ids"])
            if tokens >= context:
                raise ApiError(413, f"the prompt is {tokens} tokens; this model's context is {context} tokens "
                                    f"(prompt plus answer): shorten it", code="context_length_exceeded",
                               param="messages" if isinstance(body, ChatBody) else "prompt")
            limit = min(wanted, context - tokens)
            job.requests += [Request(prompt, adapter if adapter is not None else "__base__", limit, stops, job.cancel)
                             for _ in range(body.n)]
        if not scheduler.submit(job):
            raise ApiError(429, f"the server is busy ({scheduler.limit} requests queued); retry in "
                                f"{RETRY_AFTER_SECONDS} s", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return name, job

    async def collect(job: Job, request: HttpRequest) -> list[Answer]:
        """Wait for a job's answers; a client that goes away cancels it."""
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    scheduler.cancel(job)
                continue
            if event[0] == "done":
                return event[1] or []
            if event[0] == "error":
                raise ApiError(500, event[1], code="generation_failed")

    def sse(data: dict | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"

    def stream(job: Job, name: str, kind: str, include_usage: bool):
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        now = int(time.time())

        def chunk(choices, usage=None):
            body = {"id": ident, "object": obj, "created": now, "model": name, "choices": choices}
            if include_usage:
                body["usage"] = usage
            return sse(body)

        def choice(index, text=None, finish=None, role=False):
            if kind == "chat":
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

        async def events():
            try:
                if kind == "chat":
                    yield chunk([choice(i, role=True) for i in range(len(job.requests))])
                while True:
                    event = await job.events.get()
                    if event[0] == "piece":
                        yield chunk([choice(event[1], event[2])])
                    elif event[0] == "error":
                        yield sse({"error": ApiError(500, event[1], code="generation_failed").body()["error"]})
                        break
                    else:
                        answers = event[1] or []
                        yield chunk([choice(i, finish=_finish_reason(a)) for i, a in enumerate(answers)])
                        if include_usage:
                            yield chunk([], _usage(answers))
                        break
                yield sse("[DONE]")
            finally:
                scheduler.cancel(job)  # no-op after the end; a disconnect cancels the generation

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: HttpRequest):
        prompt = chat_prompt(body.messages, config, models.tokenizer)
        name, job = make_job(body, [prompt], body.max_completion_tokens or body.max_tokens)
        if body.stream:
            return stream(job, name, "chat", bool((body.stream_options or {}).get("include_usage")))
        answers = await collect(job, request)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": name, "usage": _usage(answers),
                "choices": [{"index": i, "message": {"role": "assistant", "content": a.text}, "logprobs": None,
                             "finish_reason": _finish_reason(a)} for i, a in enumerate(answers)]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: HttpRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) * body.n > 64:
            raise ApiError(400, "prompt: give 1 to 64 prompts (times n)", param="prompt")
        name, job = make_job(body, prompts, body.max_tokens)
        if body.stream:
            return stream(job, name, "completion", bool((body.stream_options or {}).get("include_usage")))
        answers = await collect(job, request)
        usage = {"prompt_tokens": sum(a.prompt_tokens for a in answers[::body.n]),
                 "completion_tokens": sum(a.new_tokens for a in answers)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": name, "usage": usage,
                "choices": [{"index": i, "text": a.text, "logprobs": None, "finish_reason": _finish_reason(a)}
                            for i, a in enumerate(answers)]}

    return app


class Server:
    """A running API server: ``url``, and ``close()`` to stop it (used by tests and benchmarks)."""

    def __init__(self, models: Models, config: GenerateConfig):
        import uvicorn

        self.app = build_app(models, config)
        self.url = f"http://{config.server_name}:{config.port()}/v1"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=config.server_name, port=config.port(),
                                                    log_level="warning", timeout_graceful_shutdown=2))
        self.thread: threading.Thread | None = None

    def start(self) -> "Server":
        self.thread = threading.Thread(target=self.server.run, name="sftkit-api", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise GenerationError(f"the API server could not start on {self.url} (is the port in use?)")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)


def serve(models: Models, config: GenerateConfig, *, block: bool = True) -> Server:
    """Serve the API on server_name:server_port (127.0.0.1:8000 by default) until Ctrl-C."""
    server = Server(models, config)
    print(f"sftkit API on {server.url} · models: {', '.join(models.names)} (default {models.default})"
          f"{' · API key required' if config.api_key else ''}", file=sys.stderr, flush=True)
    if block:
        server.server.run()
        return server
    return server.start()

