"""The HTTP API: an OpenAI-compatible chat endpoint and a spam classifier, beside the Chainlit app.

    python -m llm.api --port 8000            # or: uvicorn llm.api:app --port 8000

Routes (JSON in, JSON out; errors are {"error": {"message", "type", "param", "code"}}):
    POST /v1/chat/completions   OpenAI chat completions for the instruction model (stream=true: server-sent events)
    POST /v1/classify           {"texts": [...]} -> [{"label": "spam"|"ham", "p_spam": 0.97}, ...]
    GET  /v1/models             the two models and whether each is loaded
    GET  /health                liveness + per-model readiness (never needs the API key)

The chat app (`chainlit run app.py`) runs side by side as its own process: each process holds one copy
of each model it serves, so the API's concurrency limits and memory are its own and either can restart
alone. Set $LLM_API_KEY to require `Authorization: Bearer <key>` (or `X-API-Key: <key>`) on /v1/*.

Concurrency (one model of each kind per process, shared by every request):
  * classify: a micro-batching queue; one worker thread runs the classifier on the texts of many
    waiting requests at once (at most CLASSIFY_BATCH texts per call), so the model is never used by two
    threads and concurrent clients share forward passes.
  * generation: at most --max-generations run at once (default 1; more only helps with spare cores or
    a GPU), each in its own worker thread feeding the event loop; at most --max-waiting more wait for
    a slot, the rest get 429. A client that disconnects mid-stream sets the generator's stop flag: the
    worker ends after the current token and frees its slot.
  * a request body over MAX_BODY_BYTES is refused (413) before it is parsed.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm.generate import GenerationResult, GenerationSettings

log = logging.getLogger("llm.api")

# ----------------------------------------------------------------------------- limits (edit here)
API_KEY_ENV = "LLM_API_KEY"
SPAM_MODEL_ID = "gpt2-spam"
INSTRUCT_MODEL_ID = "gpt2-instruct"
MAX_BODY_BYTES = 2 * 1024 * 1024  # any request body; larger -> 413 before parsing
MAX_TEXTS = 256  # texts per /v1/classify request
MAX_TEXT_CHARS = 10_000  # characters per text to classify (the model reads at most its context anyway)
CLASSIFY_BATCH = 64  # texts per classifier call, gathered across waiting requests
CLASSIFY_MAX_QUEUED = 4096  # texts waiting for the classifier; more -> 429
MAX_MESSAGES = 64  # messages per chat request
MAX_MESSAGE_CHARS = 8_000  # characters per message (GPT-2's context is 1,024 tokens)
MAX_TOKENS_LIMIT = 1024  # max_tokens upper bound (the whole context)
DEFAULT_MAX_TOKENS = 256
MAX_STOP = 4  # stop sequences, as in OpenAI's API
MAX_GENERATIONS = 1  # generations running at once (flag --max-generations / $LLM_API_MAX_GENERATIONS)
MAX_WAITING = 64  # generations waiting for a slot (flag --max-waiting / $LLM_API_MAX_WAITING); more -> 429


# ----------------------------------------------------------------------------- request/response schemas
class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str = Field(max_length=MAX_MESSAGE_CHARS)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(max_length=MAX_MESSAGE_CHARS)
    name: str | None = Field(default=None, max_length=64)  # accepted, ignored

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that a local GPT-2 can honour; unknown fields -> 400."""
    model_config = ConfigDict(extra="forbid")
    model: str = Field(default=INSTRUCT_MODEL_ID, max_length=200)  # any name is accepted; answered by the instruct model
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)  # 0 = greedy (OpenAI's default is 1; greedy suits GPT-2)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=50_257)  # extension, not in OpenAI's API
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)  # newer name of max_tokens
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)  # accepted, ignored

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s or len(s) > 64 for s in stops):
            raise ValueError("each stop sequence must be 1 to 64 characters")
        return stops

    @field_validator("messages")
    @classmethod
    def _check_last(cls, v: list[ChatMessage]):
        if v[-1].role != "user":
            raise ValueError("the last message must have role 'user': it is the instruction to answer")
        if not v[-1].text.strip():
            raise ValueError("the last user message is empty")
        return v


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    model: str | None = Field(default=None, max_length=200)  # accepted, ignored

    @field_validator("texts")
    @classmethod
    def _check_texts(cls, v: list[str]):
        for i, t in enumerate(v):
            if not t.strip():
                raise ValueError(f"texts[{i}] is empty: there is nothing to classify")
            if len(t) > MAX_TEXT_CHARS:
                raise ValueError(f"texts[{i}] has {len(t):,} characters; at most {MAX_TEXT_CHARS:,} per text")
        return v


def to_instruction(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """OpenAI messages -> (instruction, history) for the Alpaca-style instruction model.

    The last user message is the instruction. Earlier user messages each followed by an assistant
    message become (instruction, response) history pairs; consecutive user messages are joined with a
    newline; an assistant message with no question before it is dropped. System/developer messages are
    ignored: the prompt template (llm/prompt.py) has its own fixed preamble and GPT-2 was not trained
    to follow system prompts.
    """
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for m in messages[:-1]:
        if m.role == "user":
            pending = m.text if pending is None else pending + "\n" + m.text
        elif m.role == "assistant" and pending is not None:
            history.append((pending, m.text))
            pending = None
    last = messages[-1].text
    return (last if pending is None else pending + "\n" + last), history


# ----------------------------------------------------------------------------- errors
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


def _describe_validation(errors) -> tuple[int, str, str | None]:
    """Pydantic errors -> (400 as OpenAI answers, one readable line, param). Never echoes the input (it may be 1 MB)."""
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
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


# ----------------------------------------------------------------------------- models, loaded once per process
class ModelSlot:
    """One model of the process: loaded at startup; a failed load is retried on the next request, so a
    checkpoint trained while the server runs is picked up."""

    def __init__(self, model_id: str, loader: Callable[[], Any], create_hint: str):
        self.model_id, self._loader, self.create_hint = model_id, loader, create_hint
        self.model: Any = None
        self.error: str | None = "not loaded yet"
        self._lock = threading.Lock()

    def load(self) -> Any:
        with self._lock:
            if self.model is None:
                try:
                    self.model = self._loader()
                    self.error = None
                    log.info("%s loaded", self.model_id)
                except Exception as e:  # CheckpointError, TokenizerError, OSError...: report, keep serving
                    self.error = str(e) or type(e).__name__
                    log.warning("%s not available: %s", self.model_id, self.error)
            return self.model

    async def get(self) -> Any:
        model = self.model if self.model is not None else await asyncio.to_thread(self.load)
        if model is None:
            how = "" if self.create_hint in (self.error or "") else f" Create it with: {self.create_hint}."
            raise APIError(503, f"Model {self.model_id} is not available: {(self.error or '').rstrip('.')}.{how} "
                                "Retry once it exists; the server picks it up without a restart.",
                           "model_unavailable", "model_not_ready")
        return model

    def status(self) -> dict:
        return {"ready": self.model is not None, "error": self.error, "create_with": self.create_hint}


# ----------------------------------------------------------------------------- classify: micro-batching queue
class ClassifyBatcher:
    """Requests queue their texts; one worker thread at a time runs `classify` on up to `batch` texts
    gathered across requests, then hands each request its share of the results."""

    def __init__(self, slot: ModelSlot, batch: int = CLASSIFY_BATCH, max_queued: int = CLASSIFY_MAX_QUEUED):
        self.slot, self.batch, self.max_queued = slot, batch, max_queued
        self._pending: list[tuple[list[str], asyncio.Future]] = []
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        model = await self.slot.get()
        if self._queued + len(texts) > self.max_queued:
            raise APIError(429, f"Too many texts waiting to be classified ({self._queued:,}); retry shortly.",
                           "rate_limit", "busy", headers={"Retry-After": "1"})
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(model))
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((texts, fut))
        self._queued += len(texts)
        self._wake.set()
        return await fut

    async def _run(self, model) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, n = [], 0
                while self._pending and (not batch or n + len(self._pending[0][0]) <= self.batch):
                    texts, fut = self._pending.pop(0)
                    self._queued -= len(texts)
                    if not fut.cancelled():  # a client that went away costs nothing
                        batch.append((texts, fut))
                        n += len(texts)
                if not batch:
                    continue
                flat = [t for texts, _ in batch for t in texts]
                try:
                    results = await asyncio.to_thread(model.classify, flat)
                except Exception as e:  # a bug in the model code: fail these requests, keep the worker alive
                    log.exception("classify failed")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                i = 0
                for texts, fut in batch:
                    if not fut.done():
                        fut.set_result(results[i:i + len(texts)])
                    i += len(texts)


# ----------------------------------------------------------------------------- generation: bounded slots, worker threads
class GenerationPool:
    """At most `max_running` generations at once, at most `max_waiting` queued; each runs in a worker
    thread that owns its slot and gives it back when it ends (finished, failed or told to stop)."""

    def __init__(self, max_running: int = MAX_GENERATIONS, max_waiting: int = MAX_WAITING):
        self.max_running, self.max_waiting = max_running, max_waiting
        self._sem: asyncio.Semaphore | None = None
        self.waiting = 0
        self.running = 0  # read by /health and the tests

    def check_capacity(self) -> None:
        if self.waiting >= self.max_waiting:
            raise APIError(429, f"{self.waiting} generations are already waiting; retry shortly.",
                           "rate_limit", "busy", headers={"Retry-After": "2"})

    async def stream(self, make_iterator: Callable[[Callable[[], bool]], Any],
                     stop: threading.Event | None = None) -> AsyncIterator[str]:
        """Run `make_iterator(should_stop)` in a worker thread once a slot is free; yield its pieces.

        Closing or cancelling this generator (client disconnect) sets the stop flag without waiting:
        the worker ends after the current token and then frees the slot.
        """
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_running)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = stop if stop is not None else threading.Event()
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # event loop closed (server shutting down)
                stop.set()

        def release() -> None:
            self.running -= 1
            self._sem.release()

        def work() -> None:
            try:
                for piece in make_iterator(stop.is_set):
                    if stop.is_set():
                        break
                    put(("piece", piece))
                put(("end", None))
            except Exception as e:  # noqa: BLE001 - reported to the client, logged here
                log.exception("generation failed")
                put(("error", e))
            finally:
                try:
                    loop.call_soon_threadsafe(release)
                except RuntimeError:
                    pass

        try:
            threading.Thread(target=work, name="llm-api-generate", daemon=True).start()
        except BaseException:
            release()
            raise
        try:
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            stop.set()  # no await here: a cancelled task may not wait; the worker frees the slot itself


# ----------------------------------------------------------------------------- the app
def _default_spam_loader(checkpoint=None, device=None, precision=None, bpe_dir=None):
    def load():
        from llm.spam import SpamClassifier  # None -> $LLM_SPAM_CHECKPOINT or checkpoints/spam
        return SpamClassifier.load(checkpoint, device=device, precision=precision, bpe_dir=bpe_dir)
    return load


def _default_instruct_loader(checkpoint=None, device=None, precision=None, bpe_dir=None):
    def load():
        from llm.instruct import InstructionModel  # None -> $LLM_INSTRUCT_CHECKPOINT or checkpoints/instruct
        return InstructionModel.load(checkpoint, device=device, precision=precision, bpe_dir=bpe_dir)
    return load


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes (Content-Length or streamed) with 413."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

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
            message = await receive()
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


def create_app(spam_loader: Callable[[], Any] | None = None, instruct_loader: Callable[[], Any] | None = None,
               api_key: str | None = None, max_generations: int | None = None, max_waiting: int | None = None,
               load_at_startup: bool = True) -> FastAPI:
    """The API app. Loaders default to `SpamClassifier.load()` / `InstructionModel.load()` (env-configured);
    `api_key` defaults to $LLM_API_KEY (empty: no auth)."""
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    spam = ModelSlot(SPAM_MODEL_ID, spam_loader or _default_spam_loader(), _create_hint("llm.spam", "finetune.spam"))
    instruct = ModelSlot(INSTRUCT_MODEL_ID, instruct_loader or _default_instruct_loader(),
                         _create_hint("llm.instruct", "finetune.instruct"))
    batcher = ClassifyBatcher(spam)
    pool = GenerationPool(max_generations or int(os.environ.get("LLM_API_MAX_GENERATIONS", MAX_GENERATIONS)),
                          max_waiting or int(os.environ.get("LLM_API_MAX_WAITING", MAX_WAITING)))
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_at_startup:  # in threads, so a slow load does not block /health
            await asyncio.gather(asyncio.to_thread(spam.load), asyncio.to_thread(instruct.load))
        yield

    app = FastAPI(title="GPT-2 from scratch: HTTP API", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat completions and an SMS spam classifier.")
    app.state.spam, app.state.instruct, app.state.pool, app.state.batcher = spam, instruct, pool, batcher

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _error_response(e.status, e.message, e.type, e.code, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        status, message, param = _describe_validation(e.errors())
        return _error_response(status, message, "invalid_request_error",
                               "invalid_json" if param == "json" else "invalid_value", None if param == "json" else param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        # FastAPI's 400 "error parsing the body" (e.g. invalid UTF-8), 404, 405...
        detail = str(e.detail)
        if e.status_code == 400 and "parsing the body" in detail:
            detail = "The request body could not be parsed: send JSON encoded as UTF-8."
        return _error_response(e.status_code, detail, "invalid_request_error", None, None,
                               getattr(e, "headers", None))

    async def require_key(request: Request) -> None:
        if not api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>' "
                                f"(the server's ${API_KEY_ENV}).", "invalid_request_error", "invalid_api_key")

    app.add_middleware(BodyLimit)

    @app.get("/health")
    async def health():
        models = {SPAM_MODEL_ID: spam.status(), INSTRUCT_MODEL_ID: instruct.status()}
        return {"status": "ok" if all(m["ready"] for m in models.values()) else "degraded", "models": models,
                "generations": {"running": pool.running, "waiting": pool.waiting, "max_running": pool.max_running}}

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models():
        return {"object": "list", "data": [
            {"id": slot.model_id, "object": "model", "created": started, "owned_by": "local",
             "ready": slot.model is not None} for slot in (instruct, spam)]}

    @app.post("/v1/classify", dependencies=[Depends(require_key)])
    async def classify(req: ClassifyRequest):
        results = await batcher.classify(req.texts)
        return {"object": "list", "model": SPAM_MODEL_ID,
                "data": [{"index": i, "label": label, "p_spam": round(float(p), 6)}
                         for i, (label, p) in enumerate(results)]}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(req: ChatCompletionRequest):
        model = await instruct.get()
        pool.check_capacity()
        instruction, history = to_instruction(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
        settings = GenerationSettings(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                      top_k=req.top_k, seed=req.seed, stop_strings=tuple(req.stop or ()))
        stop = threading.Event()  # set when the client goes away: the worker ends after its current token
        result = GenerationResult("", [])  # filled by the generator: token ids and why it ended
        pieces = pool.stream(lambda should_stop: model.stream(instruction, settings=settings, history=history,
                                                              should_stop=should_stop, result=result), stop)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def usage() -> dict:
            prompt = len(model.prompt_ids(instruction, "", history, max_tokens)) - result.prompt_tokens_dropped
            return {"prompt_tokens": prompt, "completion_tokens": len(result.ids),
                    "total_tokens": prompt + len(result.ids)}

        def finish_reason() -> str:  # OpenAI's names: "length" when max_tokens (or the context) ran out
            return "length" if result.stopped_by == "length" else "stop"

        if not req.stream:
            text = "".join([piece async for piece in pieces]).strip()  # as InstructionModel.respond
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
                async for piece in pieces:
                    yield chunk({"content": piece})
            except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
                yield _sse(error_body(f"Generation failed: {e}", "server_error"))
                yield "data: [DONE]\n\n"
                return
            finally:
                stop.set()  # also when this generator is closed while suspended at a yield (disconnect)
            yield chunk({}, finish_reason())
            if include_usage:
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created,
                            "model": INSTRUCT_MODEL_ID, "choices": [], "usage": usage()})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _create_hint(module: str, trainer: str) -> str:
    """The command that creates a model's checkpoint, as its module states it (TRAIN_HINT / CREATE_HINT)."""
    import importlib
    try:
        m = importlib.import_module(module)
        hint = getattr(m, "TRAIN_HINT", "") or getattr(m, "CREATE_HINT", "")
    except ImportError:
        hint = ""
    return hint.removeprefix("Create it with: ") or f"python -m {trainer}  (or: make app)"


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def main(argv: list[str] | None = None) -> int:
    from llm.generate import add_runtime_args

    p = argparse.ArgumentParser(prog="python -m llm.api", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Auth: set $LLM_API_KEY to require the key on /v1/*. Models: "
                                       "$LLM_SPAM_CHECKPOINT, $LLM_INSTRUCT_CHECKPOINT (or the flags below).")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--spam-checkpoint", default=None, help="spam classifier checkpoint (default: $LLM_SPAM_CHECKPOINT or checkpoints/spam)")
    p.add_argument("--instruct-checkpoint", default=None, help="instruction model checkpoint (default: $LLM_INSTRUCT_CHECKPOINT or checkpoints/instruct)")
    p.add_argument("--max-generations", type=int, default=None, help=f"generations running at once (default: $LLM_API_MAX_GENERATIONS or {MAX_GENERATIONS})")
    p.add_argument("--max-waiting", type=int, default=None, help=f"generations queued for a slot before 429 (default: $LLM_API_MAX_WAITING or {MAX_WAITING})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_runtime_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    import uvicorn
    app = create_app(_default_spam_loader(args.spam_checkpoint, args.device, args.precision, args.bpe_dir),
                     _default_instruct_loader(args.instruct_checkpoint, args.device, args.precision, args.bpe_dir),
                     max_generations=args.max_generations, max_waiting=args.max_waiting)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def __getattr__(name: str):
    # `uvicorn llm.api:app` builds the app from the environment on first access
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)


if __name__ == "__main__":
    raise SystemExit(main())
