"""The HTTP API: an OpenAI-compatible chat endpoint and a spam classifier, on the serving runtime.

    python -m llm.serving.http --port 8000     # or: uvicorn llm.serving.http.app:app --port 8000

Routes (JSON in, JSON out; errors are {"error": {"message", "type", "param", "code"}}):
    POST /v1/chat/completions   OpenAI chat completions for the instruction model (stream=true: server-sent events)
    POST /v1/classify           {"texts": [...], "threshold"?: 0.7, "explain"?: true} -> {"threshold": 0.5, "data":
                                [{"index": 0, "label": "spam"|"ham", "p_spam": 0.97, "band": "spam",
                                  "explanation"?: {"towards_spam": [{"word", "effect"}], "towards_ham": [...]}}]}
    GET  /v1/models             the two models and whether each is loaded
    GET  /health                liveness + per-model readiness + the engine's load (never needs the API key)
    GET  /ready                 200 once both models are loaded, else 503 (for load balancers)

Every request goes through `llm.serving.runtime.Runtime`, the same registry and continuous-batching
engine as the chat app: chat completions join the engine's running batch (beyond its waiting queue:
429 with Retry-After), classify requests share forward passes with every other caller's texts. A client
that disconnects, mid-stream or while waiting for a whole answer, cancels only its own request. Set $LLM_API_KEY to require
`Authorization: Bearer <key>` (or `X-API-Key: <key>`) on /v1/*. Bodies over MAX_BODY_BYTES get 413
before they are parsed.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm.generate import GenerationSettings
from llm.serving.engine import EngineBusy
from llm.serving.http.schemas import (ChatCompletion, ChatCompletionRequest, ClassifyRequest, ClassifyResponse,
                                      ModelList, error_responses, to_instruction)
from llm.serving.limits import BODY_READ_TIMEOUT_S, CLIENT_CHECK_S, DEFAULT_MAX_NEW_TOKENS, MAX_BODY_BYTES
from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID
from llm.serving.runtime import ContextOverflow, ModelUnavailable, Runtime

log = logging.getLogger("llm.api")

API_KEY_ENV = "LLM_API_KEY"


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.headers = status, message, type_, code, param, headers


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error_response(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def _describe_validation(errors) -> tuple[int, str, str | None]:
    """Pydantic errors -> (400 as OpenAI answers, one readable line, param). Never echoes the input (it may be 1 MB)."""
    parts, param = [], None
    for e in errors[:5]:
        loc = [_short(str(x)) for x in e.get("loc", ()) if x != "body"]  # a field name can be 100,000 characters
        if e.get("type") in ("json_invalid", "json_type"):
            return 400, f"The request body is not valid JSON: {e.get('msg', '')}".rstrip(": "), "json"
        where = ".".join(loc) or "body"
        param = param or where
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field (see the API section of the README for the fields supported)"
        if e.get("type") == "missing":
            msg = "required field missing"
        if where == "body" and e.get("type") == "model_attributes_type":
            msg = "the body must be a JSON object, sent with 'Content-Type: application/json'"
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 400, "; ".join(parts) + more, param


class RequireKey:
    """ASGI middleware: with a key configured, /v1/* answers 401 unless the request carries it, checked from the
    headers alone, before the body is read or parsed."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if self.key and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), self.key.encode()):
                denied = _error_response(401, "Missing or wrong API key: send 'Authorization: Bearer <key>' or "
                                              f"'X-API-Key: <key>' (the server's ${API_KEY_ENV}).",
                                         "invalid_request_error", "invalid_api_key",
                                         headers={"WWW-Authenticate": 'Bearer realm="llm"'})
                return await denied(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes (Content-Length or streamed) with 413, and bodies
    whose next piece takes over `timeout` seconds to arrive with 408."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, timeout: float | None = None):
        self.app, self.limit = app, limit
        self.timeout = BODY_READ_TIMEOUT_S if timeout is None else timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = JSONResponse(error_body(f"Request body over {self.limit:,} bytes.", "invalid_request_error",
                                          "body_too_large"), status_code=413)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        chunks, size = [], 0
        while True:  # read (at most limit bytes) up front, then replay
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                slow = JSONResponse(error_body(f"The request body stopped arriving (nothing for {self.timeout:g} s); "
                                               "send the whole body, as its Content-Length says.",
                                               "invalid_request_error", "body_timeout"), status_code=408)
                return await slow(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_big(scope, receive, send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ClientGone(Exception):
    """The client of a non-streamed request disconnected before its answer was ready."""


async def unless_client_leaves(request: Request, work):
    """Await `work`, checking every CLIENT_CHECK_S that the client is still there; if it left, cancel `work` (its
    engine request leaves at the next iteration, so an abandoned request stops holding a slot) and raise ClientGone.
    (Streamed answers notice a gone client when a write fails.)"""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_CHECK_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        task.cancel()


def as_text(word: str) -> str:
    """A word cut from the client's text, safe to send back: an unpaired surrogate (valid in a JSON string, not in
    UTF-8) becomes U+FFFD."""
    return word.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def runtime_threshold(runtime) -> float:
    """The loaded spam classifier's operating point (SPAM_THRESHOLD for a stand-in without one)."""
    from llm.spam import SPAM_THRESHOLD
    return float(getattr(runtime.registry.loaded(SPAM_MODEL_ID), "threshold", SPAM_THRESHOLD))


def create_app(runtime: Runtime | None = None, api_key: str | None = None) -> FastAPI:
    """The API app over `runtime` (default: one built from the $LLM_* environment, models loading now);
    `api_key` defaults to $LLM_API_KEY (empty: no auth)."""
    runtime = runtime or Runtime.from_env()
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    started = int(time.time())
    app = FastAPI(title="GPT-2 from scratch: HTTP API", version="1",
                  description="OpenAI-compatible chat completions and an SMS spam classifier.")
    app.state.runtime = runtime

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _error_response(e.status, e.message, e.type, e.code, e.param, e.headers)

    @app.exception_handler(ModelUnavailable)
    async def _unavailable(request: Request, e: ModelUnavailable):
        return _error_response(503, f"{e} Retry once it exists; the server picks it up without a restart.",
                               "model_unavailable", "model_not_ready")

    @app.exception_handler(ContextOverflow)
    async def _overflow(request: Request, e: ContextOverflow):
        return _error_response(400, str(e), "invalid_request_error", "context_length_exceeded", "messages")

    @app.exception_handler(EngineBusy)
    async def _busy(request: Request, e: EngineBusy):
        return _error_response(429, f"The server is busy: {e}", "rate_limit", "busy", headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):  # a bug: still an OpenAI-style JSON body, logged here
        log.error("request failed: %s", e, exc_info=e)
        return _error_response(500, f"The server failed on this request ({type(e).__name__}); it keeps serving.",
                               "server_error", "internal_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        status, message, param = _describe_validation(e.errors())
        return _error_response(status, message, "invalid_request_error",
                               "invalid_json" if param == "json" else "invalid_value", None if param == "json" else param)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, e: ClientGone):  # nobody reads it; 499 is nginx's "client closed"
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        # FastAPI's 400 "error parsing the body" (e.g. invalid UTF-8), 404, 405...
        detail = str(e.detail)
        if e.status_code == 400 and "parsing the body" in detail:
            detail = ("The request body could not be parsed: send uncompressed JSON encoded as UTF-8 (nesting over "
                      "1,000 levels deep and integers of over 4,300 digits are refused too).")
        return _error_response(e.status_code, detail, "invalid_request_error", None, None,
                               getattr(e, "headers", None))

    app.add_middleware(BodyLimit)
    app.add_middleware(RequireKey, key=api_key)  # added last = runs first: no key, no body read

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return runtime.health()

    @app.api_route("/ready", methods=["GET", "HEAD"],
                   responses={503: {"description": "a model is not loaded (yet); the body says which and why"}})
    async def ready():
        h = runtime.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.get("/v1/models", response_model=ModelList, responses=error_responses(401))
    async def models():
        return {"object": "list", "data": [
            {"id": model_id, "object": "model", "created": started, "owned_by": "local", "ready": s["ready"]}
            for model_id, s in runtime.registry.status().items()]}

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              responses=error_responses(400, 401, 413, 429, 503))
    async def classify(req: ClassifyRequest, request: Request):
        async def work():
            results = await runtime.verdicts(req.texts, req.threshold)
            # p_spam unrounded: a rounded 0.045791 could read as over a 0.0457906 threshold its label fell short of
            data = [{"index": i, "label": v.label, "p_spam": float(v.p_spam), "band": v.band}
                    for i, v in enumerate(results)]
            if req.explain:
                for d, e in zip(data, await runtime.explain(req.texts)):
                    d["explanation"] = {side: [{"word": as_text(w), "effect": round(float(x), 6)} for w, x in words]
                                        for side, words in (("towards_spam", e.towards_spam()),
                                                            ("towards_ham", e.towards_ham()))}
            return data

        data = await unless_client_leaves(request, work())
        threshold = req.threshold if req.threshold is not None else runtime_threshold(runtime)  # the model is loaded now
        return {"object": "list", "model": SPAM_MODEL_ID, "threshold": threshold, "data": data}

    @app.post("/v1/chat/completions", response_model=None, responses={
        200: {"model": ChatCompletion, "content": {"text/event-stream": {"schema": {"type": "string"}}},
              "description": "a chat.completion, or with stream=true server-sent chat.completion.chunk events"},
        **error_responses(400, 401, 413, 429, 503)})
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        instruction, history = to_instruction(req.messages)
        settings = GenerationSettings(max_new_tokens=req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_NEW_TOKENS,
                                      temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, seed=req.seed,
                                      stop_strings=tuple(req.stop or ()))
        # max_tokens not given: as much as fits, up to the default; given: refused if it cannot fit (as OpenAI does)
        clamp = req.max_tokens is None and req.max_completion_tokens is None
        stream = await runtime.answer(instruction, history, settings=settings, clamp=clamp)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def usage() -> dict:
            done = len(stream.result.ids) if stream.result else 0
            return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": done,
                    "total_tokens": stream.prompt_tokens + done}

        def finish_reason() -> str:  # OpenAI's names: "length" when max_tokens (or the context) ran out
            return "length" if stream.result and stream.result.stopped_by == "length" else "stop"

        if not req.stream:
            async def collect() -> str:
                try:
                    return "".join([piece async for piece in stream]).strip()  # as InstructionModel.respond
                finally:
                    stream.cancel()  # the client left (this task was cancelled): free the slot; else a no-op
            text = await unless_client_leaves(request, collect())
            return {"id": cid, "object": "chat.completion", "created": created, "model": INSTRUCT_MODEL_ID,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish_reason(), "logprobs": None}],
                    "usage": usage()}

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None = None) -> str:
            return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": INSTRUCT_MODEL_ID,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for piece in stream:
                    yield chunk({"content": piece})
            except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
                log.exception("generation failed")
                yield _sse(error_body(f"Generation failed: {type(e).__name__}", "server_error"))
                yield "data: [DONE]\n\n"
                return
            finally:
                stream.cancel()  # the client went away mid-stream (this generator was closed): free the slot
            yield chunk({}, finish_reason())
            if include_usage:
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                            "model": INSTRUCT_MODEL_ID, "choices": [], "usage": usage()})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def __getattr__(name: str):
    # `uvicorn llm.serving.http.app:app` builds the app from the environment on first access
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
