"""OpenAI-compatible HTTP API (``generate.py --api=True``): FastAPI routes served by uvicorn.

``GET /v1/models`` lists the base model and each adapter; ``POST /v1/chat/completions`` renders
``messages`` with the prompt type the model was trained with; ``POST /v1/completions`` continues
raw text. Both stream as server-sent events ending with ``data: [DONE]``, or answer in one JSON.

The routes are module-level functions of the server's :class:`Api` (models, config, scheduler) and
the HTTP request. A body is read up to ``--api_max_body_mb`` (413 past it, before it is read
whole), then checked and tokenized by :func:`sftkit.generation.protocol.prepare` in a worker thread,
so a large body never stalls the event loop; every error is OpenAI's shape with a 4xx, under
``stream=true`` too (the check happens before the 200 starts). The scheduler
(:mod:`sftkit.generation.scheduler`) generates; a client that disconnects, streaming or not,
queued or running, cancels its job at once: it leaves the queue, or its rows end at the next token.
Errors: 400 bad body or unsupported field, 401 bad key, 404 unknown model, 413 body too large or
prompt longer than the context, 429 queue full (with Retry-After).
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import uvicorn
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.engine import Answer
from sftkit.generation.loading import Models
from sftkit.generation.protocol import ApiError, Chunks, Limits, Prepared, prepare, resolve_model, response
from sftkit.generation.scheduler import Job, Scheduler

RETRY_AFTER_SECONDS = 1


@dataclass
class Api:
    """What the routes serve: the models, the server's settings, and the scheduler that generates.

    Requests are checked with ``checking``: the same models with a tokenizer of their own, as a fast
    tokenizer must not be used by two threads while one of them changes its padding (the generating
    thread pads every batch).
    """

    models: Models
    config: GenerateConfig
    scheduler: Scheduler
    checking: Models
    limits: Limits
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def start(cls, models: Models, config: GenerateConfig) -> "Api":
        checking = replace(models, tokenizer=copy.deepcopy(models.tokenizer))
        return cls(models, config, Scheduler(models, config), checking, Limits.of(models, config))


# ---------------------------------------------------------------- reading and checking a request

def authorize(api: Api, request: HttpRequest) -> None:
    """With ``--api_key``, every request needs it as a bearer token (compared in constant time)."""
    if not api.config.api_key:
        return
    header = request.headers.get("authorization", "")
    given = header[7:].encode() if header.lower().startswith("bearer ") else b""
    if not hmac.compare_digest(given, api.config.api_key.encode()):
        raise ApiError(401, "Incorrect API key provided: send 'Authorization: Bearer <api_key>'",
                       code="invalid_api_key")


async def read_body(request: HttpRequest, limit_mb: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to pass the limit (by its
    Content-Length, else while it streams in)."""
    limit = int(limit_mb * 1024 * 1024)
    too_large = ApiError(413, f"the request body is larger than --api_max_body_mb={limit_mb:g} MB",
                         code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


async def submit(api: Api, prepared: Prepared) -> tuple[Job, asyncio.Queue]:
    """Queue a checked request; its events arrive on the returned asyncio queue."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(prepared.requests, prepared.settings, lambda *event: loop.call_soon_threadsafe(events.put_nowait, event))
    if not api.scheduler.submit(job):
        raise ApiError(429, f"the server is busy ({api.scheduler.limit} requests queued); retry in "
                            f"{RETRY_AFTER_SECONDS} s", code="queue_full",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return job, events


async def _until_disconnect(request: HttpRequest) -> None:
    """Returns once the client has gone (its body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect(api: Api, job: Job, events: asyncio.Queue, request: HttpRequest) -> list[Answer]:
    """Wait for a job's answers; a client that goes away meanwhile cancels it."""
    def gone(task: asyncio.Task) -> None:
        if not task.cancelled():
            task.exception()  # a failed receive counts as a disconnect too
            api.scheduler.cancel(job)

    watcher = asyncio.create_task(_until_disconnect(request))
    watcher.add_done_callback(gone)
    try:
        while True:
            event = await events.get()
            if event[0] == "done":
                return event[1] or []
            if event[0] == "error":
                raise ApiError(500, event[1], code="generation_failed")
    finally:
        watcher.cancel()


def stream(api: Api, prepared: Prepared, job: Job, events: asyncio.Queue) -> StreamingResponse:
    """Server-sent events as the answers grow; a disconnect (Starlette cancels the stream) cancels the job."""
    chunks = Chunks(prepared)

    async def body():
        try:
            for event in chunks.opening():
                yield event
            while True:
                event = await events.get()
                if event[0] == "piece":
                    line = chunks.piece(event[1], event[2])
                    if line is not None:
                        yield line
                elif event[0] == "error":
                    for line in chunks.error(event[1]):
                        yield line
                    return
                else:
                    for line in chunks.ending(event[1] or []):
                        yield line
                    return
        finally:
            api.scheduler.cancel(job)  # no-op after the end; a disconnect cancels the generation

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------- routes

def _model_card(api: Api, name: str) -> dict:
    return {"id": name, "object": "model", "created": api.created, "owned_by": "sftkit"}


async def list_models(api: Api, request: HttpRequest) -> dict:
    authorize(api, request)
    return {"object": "list", "data": [_model_card(api, name) for name in api.models.names]}


async def get_model(api: Api, request: HttpRequest, name: str) -> dict:
    authorize(api, request)
    return _model_card(api, resolve_model(api.models, name))


async def completions(api: Api, request: HttpRequest, kind: str):
    """``POST /v1/chat/completions`` (``kind`` "chat") and ``POST /v1/completions`` ("completion")."""
    authorize(api, request)
    raw = await read_body(request, api.config.api_max_body_mb)
    prepared = await asyncio.to_thread(prepare, api.checking, api.config, api.limits, kind, raw)
    job, events = await submit(api, prepared)
    if prepared.stream:
        return stream(api, prepared, job, events)
    return response(prepared, await collect(api, job, events, request))


# ---------------------------------------------------------------- the app

async def _api_error(request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request, exc: HTTPException):
    error = ApiError(exc.status_code, str(exc.detail))
    return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _bug(request, exc: Exception):
    return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}").body(), status_code=500)


def build_app(models: Models, config: GenerateConfig) -> FastAPI:
    """The FastAPI app serving ``models``; its ``state.api`` holds the scheduler (the generating thread)."""
    api = Api.start(models, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        api.scheduler.stop()

    app = FastAPI(title="sftkit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.api = api
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)

    @app.get("/v1/models")
    async def models_route(request: HttpRequest):
        return await list_models(api, request)

    @app.get("/v1/models/{name}")
    async def model_route(request: HttpRequest, name: str):
        return await get_model(api, request, name)

    @app.post("/v1/chat/completions")
    async def chat_route(request: HttpRequest):
        return await completions(api, request, "chat")

    @app.post("/v1/completions")
    async def completion_route(request: HttpRequest):
        return await completions(api, request, "completion")

    return app


class Server:
    """A running API server: ``url``, and ``close()`` to stop it (used by tests and benchmarks)."""

    def __init__(self, models: Models, config: GenerateConfig):
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
