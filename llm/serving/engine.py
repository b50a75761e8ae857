"""The generation engine: one scheduler thread per process owns the model and the batch.

Continuous batching (iteration-level scheduling, Orca OSDI'22): requests enter a bounded queue;
every iteration of the scheduler thread

  1. drops cancelled requests and admits waiting ones into free KV slots;
  2. prefills at most `prefill_chunk` prompt tokens (a long prompt is cut into chunks, so running
     streams never wait for more than one chunk); a prompt's last chunk samples its first token;
  3. runs ONE batched decode step over every running sequence (the weights are read once per step
     whatever the batch, which is why many streams cost little more than one on a memory-bound CPU);
     each row is sampled with its own settings and seeded generator, and its text goes through its
     own `TextStream` (stop strings held back, UTF-8 never split);
  4. runs one classification pass (`llm.serving.classify`: at most `classify_batch` texts and `classify_tokens`
     padded tokens of the spam checks and explanations of the app and the API), so a 20,000-row upload or a long
     message's explanation interleaves with everyone's chat instead of blocking it.

A finished or cancelled sequence leaves at once and frees its slot; waiting requests join the batch
at the next iteration. Callers hold a `Stream` (an async iterator of text pieces) or await
`classify`; both hand results from the scheduler thread to the event loop thread-safely.

Keep other torch work off long-lived threads: a thread that has run torch ops keeps an OpenMP team while it
lives, and libgomp then stops spinning this thread's workers between ops (see `registry.in_own_thread`).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

from llm.generate import GenerationResult, GenerationSettings, TextStream, fit_prompt, is_greedy, sample_next
from llm.serving.classify import ClassifyJob, ClassifyQueue
from llm.serving.kv import SlotCache, slots_for
from llm.serving.limits import EngineLimits
from llm.serving.stream import Stream, call_soon

log = logging.getLogger("llm.serving")

Sink = Callable[[str, Any], None]  # ("text", str) | ("started", None) | ("done", GenerationResult) | ("error", Exception)


class EngineBusy(RuntimeError):
    """The bounded queue is full; the caller should retry shortly."""

    def __init__(self, what: str, waiting: int):
        super().__init__(f"{waiting:,} {what} are already waiting; try again in a moment.")
        self.waiting = waiting


@dataclass(eq=False)
class _Sequence:
    """One generation request while the engine holds it."""
    lm: Any  # has .model (GPT) and .tokenizer
    prompt: list[int]
    settings: GenerationSettings
    sink: Sink
    result: GenerationResult
    text: TextStream
    generator: torch.Generator | None
    cancelled: bool = False
    state: str = "prefill"  # -> "decode" once its prompt is in the cache -> "done"
    prefilled: int = 0  # prompt tokens already in the cache

    @property
    def length(self) -> int:
        """Positions filled in the cache: the prompt, then every sampled token but the newest (fed next step)."""
        return self.prefilled + max(0, len(self.result.ids) - 1)


class GenerationEngine:
    def __init__(self, limits: EngineLimits | None = None):
        self.limits = limits or EngineLimits()
        self._lock = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # running[i] lives in KV slot i
        self._classify = ClassifyQueue(self.limits, self._lock)  # shares the lock: a new job wakes the scheduler
        self._lm: Any = None
        self._cache: SlotCache | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0  # decode steps run (for tests and /health)

    # ------------------------------------------------------------------ callers (any thread)
    def submit(self, lm, prompt_ids: list[int], settings: GenerationSettings, sink: Sink) -> _Sequence:
        """Queue a generation; raises EngineBusy when max_waiting requests already wait for a slot."""
        ids, max_new, dropped = fit_prompt(prompt_ids, settings.max_new_tokens, lm.model.config.n_positions,
                                           lm.tokenizer.eot_id)
        s = GenerationSettings(**{**settings.__dict__, "max_new_tokens": max_new})
        device = lm.model.wte.weight.device
        seq = _Sequence(lm, ids, s, sink, GenerationResult("", [], dropped), TextStream(lm.tokenizer, s.stop_strings),
                        None if s.seed is None else torch.Generator(device=device).manual_seed(s.seed))
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if len(self._waiting) >= self.limits.max_waiting:
                raise EngineBusy("requests", len(self._waiting))
            self._waiting.append(seq)
            self._start()
            self._lock.notify()
        return seq

    def submit_classify(self, classifier, texts: list, sink: Sink) -> ClassifyJob:
        job = ClassifyJob(classifier, list(texts), sink)
        if not job.texts:  # nothing to do: done now, never queued
            sink("done", [])
            return job
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if not self._classify.add(job):
                raise EngineBusy("texts to classify", self._classify.queued)
            self._start()
            self._lock.notify()
        return job

    def cancel(self, item: _Sequence | ClassifyJob) -> None:
        """Stop a request: it leaves at the next iteration (its slot is freed); others are untouched."""
        with self._lock:
            item.cancelled = True
            if isinstance(item, ClassifyJob):  # give its queue space back now, not when it reaches the head
                self._classify.drop(item)
            self._lock.notify()

    def queue_position(self, seq: _Sequence) -> int:
        """0 if `seq` runs now or at the next iteration (a slot is free for it), else its place in line (1, 2, ...)."""
        with self._lock:
            place = next((i + 1 for i, s in enumerate(self._waiting) if s is seq), 0)
            free = (self._cache.slots if self._cache is not None else self.limits.max_running) - len(self._running)
            return max(0, place - free)

    def stats(self) -> dict:
        cache = self._cache  # one read: a model switch may replace it meanwhile
        return {"running": len(self._running), "waiting": len(self._waiting),
                "slots": cache.slots if cache is not None else None,
                "max_running": self.limits.max_running, "max_waiting": self.limits.max_waiting,
                "kv_cache_bytes": cache.nbytes if cache is not None else 0, "texts_to_classify": self._classify.queued}

    def close(self) -> None:
        """Stop the scheduler; whatever is still queued or running gets an error instead of waiting forever."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        closed = RuntimeError("the server is shutting down")
        with self._lock:
            for item in [*self._waiting, *self._running, *self._classify.jobs]:
                item.sink("error", closed)
            self._waiting.clear(), self._running.clear(), self._classify.jobs.clear()

    # ------------------------------------------------------------------ async conveniences
    def stream(self, lm, prompt_ids: list[int], settings: GenerationSettings) -> Stream:
        """Submit from the event loop; iterate the returned Stream for the text pieces."""
        return Stream(self, lm, prompt_ids, settings)

    async def classify(self, classifier, texts: list) -> list:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def sink(kind, value):
            def deliver():
                if not future.done():
                    future.set_exception(value) if kind == "error" else future.set_result(value)
            call_soon(loop, deliver)

        job = self.submit_classify(classifier, texts, sink)
        try:
            return await future
        finally:
            if not future.done() or future.cancelled():
                self.cancel(job)

    def generate(self, lm, prompt_ids: list[int], settings: GenerationSettings,
                 timeout: float | None = None) -> GenerationResult:
        """Blocking: the whole result (for scripts and tests; callers on an event loop use `stream`)."""
        done = threading.Event()
        box: dict = {}

        def sink(kind, value):
            if kind in ("done", "error"):
                box[kind] = value
                done.set()

        seq = self.submit(lm, prompt_ids, settings, sink)
        if not done.wait(timeout):
            self.cancel(seq)
            raise TimeoutError(f"no answer from the engine in {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["done"]

    # ------------------------------------------------------------------ the scheduler thread
    def _start(self) -> None:  # called with the lock held
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._closed or self._waiting or self._running or self._classify.jobs):
                        self._lock.wait()
                    if self._closed:
                        return
                    try:
                        self._admit()
                    except Exception as e:  # the KV cache could not be allocated (memory, device): tell them
                        log.exception("engine could not admit requests")
                        while self._waiting:
                            self._waiting.popleft().sink("error", e)
                        self._lm = self._cache = None
                        continue
                try:
                    self._iteration()
                except Exception as e:  # a bug or an out-of-memory: fail what was in flight, keep serving
                    log.exception("engine iteration failed")
                    for seq in self._running:
                        seq.sink("error", e)
                    self._running.clear()

    def _admit(self) -> None:
        """Drop cancelled requests; move waiting ones into free slots (lock held)."""
        for seq in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(seq)
            self._finish_event(seq, "cancelled")
        for i in reversed([i for i, s in enumerate(self._running) if s.cancelled]):
            self._release(i, "cancelled")
        while self._waiting:
            lm = self._waiting[0].lm
            if lm is not self._lm:
                if self._running:  # one model at a time: a new one waits until the batch drains
                    break
                self._bind(lm)
            if len(self._running) >= self._cache.slots:
                break
            seq = self._waiting.popleft()
            self._running.append(seq)
            seq.sink("started", None)

    def _bind(self, lm) -> None:
        config, dtype = lm.model.config, lm.model.wte.weight.dtype
        slots = slots_for(config, dtype, self.limits.max_running, self.limits.kv_cache_mb)
        self._cache = None  # free the old one first
        self._cache = SlotCache(config, slots, lm.model.wte.weight.device, dtype)
        self._lm = lm
        log.info("engine: %d KV slots x %d positions (%.0f MiB)", slots, config.n_positions, self._cache.nbytes / 2**20)

    def _iteration(self) -> None:
        self._prefill()
        self._decode()
        self._classify.one_pass()
        finished = [i for i, s in enumerate(self._running) if s.state == "done"]
        if finished:
            with self._lock:
                for i in reversed(finished):
                    self._release(i, None)

    def _prefill(self) -> None:
        budget = self.limits.prefill_chunk
        model = self._lm.model if self._lm is not None else None
        for slot, seq in enumerate(self._running):
            if budget <= 0:
                break
            if seq.state != "prefill":
                continue
            n = min(len(seq.prompt) - seq.prefilled, budget)
            start, end = seq.prefilled, seq.prefilled + n
            idx = torch.tensor([seq.prompt[start:end]], device=self._cache.keys[0].device)
            positions = torch.arange(start, end, device=idx.device).unsqueeze(0)
            if start == 0:
                mask, causal = None, n > 1
            else:  # the chunk sees everything before it and itself causally
                mask = torch.arange(end, device=idx.device)[None, :] <= positions[0, :, None]
                causal = False
            h = model.transform(idx, positions, self._cache.prefill_view(slot, start), mask, causal)
            seq.prefilled, budget = end, budget - n
            if end == len(seq.prompt):
                seq.state = "decode"
                self._accept(seq, model.lm_head(h[:, -1]))

    def _decode(self) -> None:
        """One token for every sequence past its prompt; rows still prefilling ride along harmlessly."""
        rows = self._running
        live = [i for i, s in enumerate(rows) if s.state == "decode"]
        if not live:
            return
        model, device = self._lm.model, self._cache.keys[0].device
        # The batch is every slot 0..n-1, so attention reads cache views, never gathered copies. A row
        # that is not decoding (still prefilling, or done) feeds a dummy token at its next free position,
        # which its next prefill chunk overwrites (or nobody reads); its output is ignored.
        tokens = torch.tensor([[s.result.ids[-1] if s.state == "decode" else 0] for s in rows], device=device)
        # (a done row may sit at the context's end: clamp its throw-away position into the cache)
        where = [min(s.length, self._cache.context - 1) for s in rows]
        positions = torch.tensor(where, device=device)
        span = max(where) + 1  # from the Python list: no tensor reduction (a device sync on a GPU) per step
        aligned = all(p == span - 1 for p in where)  # every row sees the whole span
        mask = None if aligned else _decode_mask(positions, span, self._cache.keys[0].dtype)
        h = model.transform(tokens, positions[:, None], self._cache.decode_view(positions, span, aligned), mask, False)
        logits = model.lm_head(h[live, -1])
        greedy = logits.argmax(dim=-1).tolist()  # one op for every greedy row; sampled rows draw their own
        self.steps += 1
        for j, i in enumerate(live):
            self._accept(rows[i], logits[j:j + 1], greedy[j])

    def _accept(self, seq: _Sequence, logits: torch.Tensor, argmax: int | None = None) -> None:
        """Sample the next token of `seq` from its logits (1, vocab), stream its text, decide if it ends."""
        if seq.settings.max_new_tokens == 0:
            self._end(seq, "length")
            return
        if is_greedy(seq.settings) and argmax is not None:
            token = argmax
        else:
            try:
                token = int(sample_next(logits, seq.settings, seq.generator)[0])
            except RuntimeError as e:  # this row's settings broke the sampler: end this row, not the batch
                log.exception("sampling failed")
                seq.sink("error", e)
                seq.state = "done"
                return
        if token == seq.lm.tokenizer.eot_id:
            self._end(seq, "eot")
            return
        seq.result.ids.append(token)
        piece = seq.text.push(token)
        if piece:
            seq.sink("text", piece)
        if seq.text.stopped:
            self._end(seq, "stop_string")
        elif len(seq.result.ids) >= seq.settings.max_new_tokens:
            self._end(seq, "length")

    def _end(self, seq: _Sequence, reason: str) -> None:
        if reason != "stop_string":
            piece = seq.text.finish()
            if piece:
                seq.sink("text", piece)
        seq.result.stopped_by, seq.state = reason, "done"

    def _release(self, i: int, reason: str | None) -> None:
        """Remove running[i], keeping the batch compact (the last sequence moves into its slot). Lock held."""
        seq = self._running[i]
        last = len(self._running) - 1
        if i != last:
            self._cache.move(last, i, self._running[last].length + 1)
            self._running[i] = self._running[last]
        self._running.pop()
        self._finish_event(seq, reason or seq.result.stopped_by)

    @staticmethod
    def _finish_event(seq: _Sequence, reason: str) -> None:
        seq.result.stopped_by = reason
        seq.result.text = seq.text.text
        seq.sink("done", seq.result)


def _decode_mask(positions: torch.Tensor, span: int, dtype: torch.dtype) -> torch.Tensor:
    """The attention mask of a decode step whose rows have different lengths: row i sees positions
    0..positions[i]. An additive mask, built once per step rather than converted from a boolean one in
    each layer's attention. (When every row sees the whole span, the step passes no mask at all: the
    mask-free call a lone `generate` makes.)"""
    visible = torch.arange(span, device=positions.device)[None, :] <= positions[:, None]
    mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill_(~visible, float("-inf"))[:, None, None, :]
