"""The FastAPI app: routes, the API key, body limits, errors as OpenAI JSON, the web page.

    app = create_app(qwenvl.load("qwenvl-tiny"), ServerOptions(api_key="k"))
    uvicorn.run(app, host="127.0.0.1", port=8000)            # or: qwenvl serve qwenvl-tiny --api-key k

Routes: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics (Prometheus text),
GET / (the web page) and /static/*. Every client error is {"error": {message, type, param, code}}
with a 4xx status; anything else is a 500 with a generic message (the traceback goes to the log only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwenvl.server import chat
from qwenvl.server.errors import APIError, error_body
from qwenvl.server.images import ImagePolicy
from qwenvl.server.metrics import Metrics
from qwenvl.server.protocol import parse_chat_request
from qwenvl.server.runner import EngineRunner

log = logging.getLogger("qwenvl.server")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServerOptions:
    model_name: str = "qwenvl-tiny"
    api_key: str | None = None
    max_body_bytes: int = 64 * 2**20  # a request body (base64 images included)
    max_images: int = 16  # image parts per request
    max_video_frames: int = 64  # frames over all video parts of a request
    max_pending: int = 64  # requests waiting beyond the engine's slots before 429
    default_max_tokens: int = 512  # when the client sets neither max_tokens nor max_completion_tokens
    image_policy: ImagePolicy = field(default_factory=ImagePolicy)


class State:
    def __init__(self, pipe, options: ServerOptions) -> None:
        self.pipe, self.options = pipe, options
        self.runner = EngineRunner(pipe.engine)
        self.metrics = Metrics(self.runner)
        self.max_len = pipe.engine.pool.max_len
        self.started = int(time.time())
        self.inflight = 0  # chat requests anywhere between their first byte and their last (event loop only)

    def enter(self) -> None:
        """Admit one chat request before its body is read or its images fetched: past the engine's
        slots + max_pending, 429 at once (so a flood cannot pile bodies and decodes up in memory)."""
        if self.inflight >= self.runner.engine.pool.n_slots + self.options.max_pending:
            raise APIError(429, f"the server is busy: {self.inflight} requests in flight; try again later",
                           code="server_busy")
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1

    def token_bytes(self, tid: int) -> bytes:
        """A token's bytes for logprobs (b"" for the padding rows past the tokenizer's vocabulary)."""
        vocab = self.pipe.vocab.token_bytes
        return vocab[tid] if 0 <= tid < len(vocab) else b""


def _error(status: int, body: dict) -> JSONResponse:
    return JSONResponse(body, status_code=status)


async def _read_body(request: Request, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise APIError(413, f"the request body is {length} bytes; this server takes at most {limit}",
                       code="request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise APIError(413, f"the request body is over {limit} bytes", code="request_too_large")
        chunks.append(part)
    raw = b"".join(chunks)
    if not raw:
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply", code="invalid_json") from None


def create_app(pipe, options: ServerOptions | None = None) -> FastAPI:
    options = options or ServerOptions()
    state = State(pipe, options)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        state.runner.close()

    app = FastAPI(title="qwenvl", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.qwenvl = state

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        state.metrics.requests.labels("chat", str(exc.status)).inc()
        return _error(exc.status, exc.body())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, error_body(str(exc.detail), "invalid_request_error", None,
                                                  f"http_{exc.status_code}"))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, error_body(f"invalid request: {exc.errors()[:3]}", code="invalid_request"))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(500, error_body("internal server error (see the server log)", "server_error", None,
                                      "internal_error"))

    def _auth(request: Request) -> None:
        if options.api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        _auth(request)
        state.enter()
        streaming = False
        try:
            req = parse_chat_request(await _read_body(request, options.max_body_bytes))
            job = await chat.prepare(state, req)
            if not req.stream:
                async def gone() -> None:  # resolves when the client has hung up
                    while not await request.is_disconnected():
                        await asyncio.sleep(0.25)

                return JSONResponse(await chat.complete(state, job, gone))
            stream = await chat.submit(state, job)  # before the 200: a refusal is still a status
            streaming = True
            return StreamingResponse(_released(chat.stream_sse(state, job, stream)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        finally:
            if not streaming:
                state.leave()

    async def _released(lines):
        """The SSE lines; the request leaves the in-flight count when the stream ends or is dropped."""
        try:
            async for line in lines:
                yield line
        finally:
            await lines.aclose()
            state.leave()

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _auth(request)
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": state.started,
                                            "owned_by": "qwenvl", "max_model_len": state.max_len,
                                            "family": pipe.family}]}

    @app.get("/health")
    async def health() -> dict:
        eng = state.runner.engine
        return {"status": "ok", "model": options.model_name, "slots_total": eng.pool.n_slots,
                "slots_free": len(eng.pool.free), "running": len(eng.scheduler.running),
                "waiting": len(eng.scheduler.waiting), "active": state.runner.active, "in_flight": state.inflight}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app
