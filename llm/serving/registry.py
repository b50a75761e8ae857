"""One model registry per process: what the app, the API, /ready, /health and `make app` agree on.

Each model is loaded once, in the background when the process starts, on the chosen device and
precision. A failed load (checkpoint missing, corrupt, wrong kind) is remembered with its message and
retried on the next request, so a checkpoint trained while the server runs is picked up without a
restart. `status()` is the one readiness report; `create_hint` the one command that creates a model.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("llm.serving")

SPAM_MODEL_ID = "gpt2-spam"
INSTRUCT_MODEL_ID = "gpt2-instruct"


class ModelUnavailable(RuntimeError):
    """A model could not be loaded; the message says why and which command creates it."""


@dataclass
class ModelSpec:
    model_id: str
    title: str  # what users call it: "spam classifier", "assistant"
    checkpoint: Callable[[], Path]  # where its checkpoint is expected (flag / env var / default)
    create_hint: str  # the command that creates the checkpoint
    loader: Callable[[], Any]


def checkpoint_ready(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def default_specs(spam_checkpoint=None, instruct_checkpoint=None, device=None, precision=None,
                  bpe_dir=None) -> list[ModelSpec]:
    """The two models of the product, configured by flags (None: their env vars, then the defaults)."""
    from llm import instruct, spam

    def load_spam():
        return spam.SpamClassifier.load(spam_checkpoint, device=device, precision=precision, bpe_dir=bpe_dir)

    def load_instruct():
        return instruct.InstructionModel.load(instruct_checkpoint, device=device, precision=precision, bpe_dir=bpe_dir)

    return [
        ModelSpec(SPAM_MODEL_ID, "spam classifier", lambda: spam.checkpoint_path(spam_checkpoint),
                  spam.CREATE_HINT, load_spam),
        ModelSpec(INSTRUCT_MODEL_ID, "assistant", lambda: instruct.checkpoint_path(instruct_checkpoint),
                  instruct.CREATE_HINT, load_instruct),
    ]


class _Slot:
    def __init__(self, spec: ModelSpec):
        self.spec, self.model, self.error = spec, None, "not loaded yet"
        self.attempt: threading.Event | None = None  # set when the load in progress ends
        self.lock = threading.Lock()  # guards `attempt` only; loading happens outside it

    @property
    def loading(self) -> bool:
        return self.attempt is not None


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec]):
        self._slots = {s.model_id: _Slot(s) for s in specs}

    @property
    def specs(self) -> list[ModelSpec]:
        return [slot.spec for slot in self._slots.values()]

    def start(self) -> None:
        """Load every model in a background thread (the process answers /health meanwhile)."""
        owned = [(name, self._begin(slot)) for name, slot in self._slots.items()]
        threading.Thread(target=lambda: [self._attempt(self._slots[name], ev) for name, ev in owned if ev],
                         name="llm-load", daemon=True).start()

    def load(self, model_id: str) -> Any:
        """The model, loading it now if it is not loaded (blocking); None if it cannot be loaded.

        A caller that arrives while a load is in progress waits for that attempt and takes its outcome, so a
        broken checkpoint is not loaded once more per waiting request; the next request after it tries again."""
        slot = self._slots[model_id]
        if slot.model is not None:
            return slot.model
        mine = self._begin(slot)
        if mine is None:
            with slot.lock:
                running = slot.attempt
            if running is not None:
                running.wait()
            return slot.model
        return self._attempt(slot, mine)

    @staticmethod
    def _begin(slot: _Slot) -> threading.Event | None:
        """A new attempt's event if none is running (the caller then loads), else None."""
        with slot.lock:
            if slot.attempt is not None or slot.model is not None:
                return None
            slot.attempt = threading.Event()
            return slot.attempt

    @staticmethod
    def _attempt(slot: _Slot, done: threading.Event) -> Any:
        try:
            slot.model, slot.error = slot.spec.loader(), None
            log.info("%s loaded", slot.spec.model_id)
        except Exception as e:  # CheckpointError, TokenizerError, OSError...: report, keep serving
            slot.error = str(e) or type(e).__name__
            log.warning("%s not available: %s", slot.spec.model_id, slot.error)
        finally:
            with slot.lock:
                slot.attempt = None
            done.set()
        return slot.model

    def loaded(self, model_id: str) -> Any:
        """The model if it is loaded, else None (never blocks)."""
        return self._slots[model_id].model

    async def get(self, model_id: str) -> Any:
        """The model; waits for a load in progress, retries a failed one; ModelUnavailable if it cannot load."""
        slot = self._slots[model_id]
        model = slot.model if slot.model is not None else await in_own_thread(self.load, model_id)
        if model is None:
            raise ModelUnavailable(self.unavailable_message(model_id))
        return model

    def unavailable_message(self, model_id: str) -> str:
        slot = self._slots[model_id]
        error = (slot.error or "").rstrip(".")
        how = "" if slot.spec.create_hint in error else f" {slot.spec.create_hint}."
        return f"The {slot.spec.title} ({model_id}) is not available: {error}.{how}"

    def status(self) -> dict[str, dict]:
        out = {}
        for model_id, slot in self._slots.items():
            path = slot.spec.checkpoint()
            out[model_id] = {"ready": slot.model is not None, "loading": slot.loading,
                             "error": None if slot.model is not None or slot.loading else slot.error,
                             "checkpoint": str(path), "checkpoint_found": checkpoint_ready(path),
                             "create_with": slot.spec.create_hint.removeprefix("Create it with: ")}
        return out


async def in_own_thread(fn: Callable[..., Any], *args) -> Any:
    """`fn(*args)` in a new thread that ends when it returns, awaited from the event loop.

    Not `asyncio.to_thread`: its executor thread stays alive after a load, holding the OpenMP thread team that
    the load's torch ops created, and libgomp lets its workers spin between parallel ops only while it manages
    no more threads than there are CPUs. With one such idle team beside the engine's, every parallel op of the
    engine waits for a futex wake-up (on the 2-core CPU, with the model loaded by a thread that stayed alive, one
    int8 stream decoded at 103 tok/s instead of 183: `benchmarks/engine_profile.py`)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if not future.done():  # the awaiting request may have been cancelled meanwhile
            (future.set_exception if failed else future.set_result)(outcome)

    def run() -> None:
        try:
            outcome, failed = fn(*args), False
        except BaseException as e:  # handed to the awaiting coroutine
            outcome, failed = e, True
        try:
            loop.call_soon_threadsafe(settle, outcome, failed)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=run, name="llm-load", daemon=True).start()
    return await future
