"""What a caller on the event loop holds while the engine generates: an async iterator of text pieces.

The scheduler thread reports through a sink; `call_soon` hands each event to the caller's event loop.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from llm.generate import GenerationResult, GenerationSettings


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        pass


class Stream:
    """One generation seen from the event loop: `async for piece in stream`, then `stream.result`.

    Leaving the loop early (break, an exception, the task cancelled, a client gone) cancels the
    request in the engine, which frees its slot at the next iteration.
    """

    def __init__(self, engine, lm, prompt_ids: list[int], settings: GenerationSettings):
        self.engine, self._loop = engine, asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.result: GenerationResult | None = None
        self._seq = engine.submit(lm, prompt_ids, settings, self._sink)

    def _sink(self, kind: str, value) -> None:  # scheduler thread
        call_soon(self._loop, lambda: self._queue.put_nowait((kind, value)))

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the prompt as the model reads it (after fitting the context)."""
        return len(self._seq.prompt)

    @property
    def queue_position(self) -> int:
        """0 when it runs (or is about to), else its place in the queue for a free slot."""
        return 0 if self.started.is_set() else self.engine.queue_position(self._seq)

    def cancel(self) -> None:
        if self.result is None:
            self.engine.cancel(self._seq)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        try:
            while True:
                kind, value = await self._queue.get()
                if kind == "text":
                    yield value
                elif kind == "started":
                    self.started.set()
                elif kind == "error":
                    raise value
                else:
                    self.result = value
                    return
        finally:
            self.cancel()
