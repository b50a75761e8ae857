"""Serving peers: other engines that serve the same GPT-2 weights, behind one tiny async interface.

    peer = TransformersContinuousBatching("../shared/models/gpt2-mini", threads=2)
    async for token_id in peer.stream(prompt_ids, max_new_tokens=32): ...
    peer.close()

`TransformersContinuousBatching` is transformers' own continuous batching (`ContinuousBatchingManager`,
transformers 5.23) and it works here, on CPU, streaming per request: checked against
`GPT2LMHeadModel.generate(do_sample=False)` token for token. So no static-batch fallback is needed
and there is none in this module.

How it runs (all of this was read in transformers/generation/continuous_batching/, v5.23.0):
  * `model.init_continuous_batching(generation_config, continuous_batching_config)` builds a
    `ContinuousBatchingManager`; `start()` launches its generation thread (a plain Python thread in this
    process: the forward passes run there, with torch's intra-op threads, and release the GIL).
  * Requests go in with `add_request(input_ids, request_id=..., max_new_tokens=..., streaming=True,
    eos_token_id=-1)`. `eos_token_id=-1` disables the EOS stop (negative ids are dropped from the EOS set),
    so every request produces exactly `max_new_tokens` tokens.
  * Results come back through `register_result_handler(request_id, callback)`: the generation thread calls
    `loop.call_soon_threadsafe(callback, output)` on the event loop that registered it, once per
    generated token when `streaming=True`. Each `GenerationOutput` carries the *cumulative*
    `generated_tokens`, so `stream()` yields only the new tail. No executor thread and no polling
    (`request_id_iter` polls a shared queue with requeue: fine for one consumer, not for a server).
  * Greedy: `GenerationConfig(do_sample=False)` makes the model runner take the argmax.
  * Attention: "sdpa" (CB also accepts "paged|eager" and flash; flash is not available on CPU). All requests
    of a step are packed into one sequence with a block-diagonal mask, so one step's attention costs
    (tokens in the step) x (cache tokens of all its requests).

CPU pitfalls:
  * psutil is not installed in this venv. CB then logs an ERROR ("Cannot get memory breakdown on CPU without
    psutil") and sizes "available memory" from the NUMA node size in /sys (here node0, ~7 GiB, with nothing
    counted as used). Left to auto-size, it would reserve a share of that for the KV cache and use
    max_batch_tokens=8192 (the attention mask alone is then gigabytes). So the cache is sized explicitly
    here (`num_blocks`, `max_batch_tokens`, `max_requests_per_batch`). If neither psutil nor /sys NUMA
    info is available, the available memory reads as 0 and creating the cache fails with
    "Memory footprint ... is more than available memory 0".
  * Log noise: the psutil ERROR above and a WARNING that cpu_offload_space_safety_threshold cannot be
    enforced (printed even with offloading off), both on the "ContinuousBatchingLogger" logger, which has
    its own stderr handler and does not propagate. A filter drops exactly those two; real errors of the
    generation loop still print.
  * Set-up: ~3.5 s for gpt2-mini on 2 busy cores (~2 s imports + loading, ~1.5 s KV cache allocation).
    `manager.warmup()` is called before `start()`. On
    CPU it captures nothing (that is for CUDA graphs / torch.compile) but it builds the batch processor and
    allocates the KV cache, which `start()` would otherwise do lazily in the generation thread, landing on
    the first request (~1.5 s with the default 32x1024-token cache of gpt2-mini, ~1.3 GB). The first
    forward passes are still slower than the steady state: warm up with a request or two before timing.
  * threads: `torch.set_num_threads` is process-wide; the generation thread picks it up.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math

_NOISE = ("Cannot get memory breakdown on CPU without psutil",
          "cpu_offload_space_safety_threshold cannot be enforced")


class _DropPsutilNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in _NOISE)


class TransformersContinuousBatching:
    """transformers' own continuous batching (ContinuousBatchingManager) on the same weights, as a serving peer.

    `stream()` yields exactly `max_new_tokens` token ids per request (greedy, EOS stop disabled), one per
    generated token, as soon as the manager's generation thread produces it. Must be used from a single
    running event loop (the result handlers are bound to the loop that calls `stream`).

    Cache sizing: `cache_tokens` is the KV cache capacity in tokens shared by all requests (paged, so a
    request only holds what it has used); default max_batch * n_positions, i.e. never preempting.
    `max_batch_tokens` bounds the tokens of one forward step (longer prompts are prefilled in chunks).
    """

    def __init__(self, model_dir: str, threads: int, max_batch: int = 32, *,
                 cache_tokens: int | None = None, max_batch_tokens: int = 512, page_size: int = 256,
                 device: str = "cpu"):
        import torch
        from transformers import GenerationConfig, GPT2LMHeadModel
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()  # "Loading weights" bar
        cb_logger = logging.getLogger("ContinuousBatchingLogger")
        if not any(isinstance(f, _DropPsutilNoise) for f in cb_logger.filters):
            cb_logger.addFilter(_DropPsutilNoise())

        self.model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32,
                                                     attn_implementation="sdpa").to(device).eval()
        n_positions = self.model.config.n_positions
        if cache_tokens is None:
            cache_tokens = max_batch * n_positions
        gen_config = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0, max_new_tokens=n_positions)
        cb_config = ContinuousBatchingConfig(
            page_size=page_size,
            num_blocks=max(1, math.ceil(cache_tokens / page_size)),
            max_batch_tokens=max_batch_tokens,
            max_requests_per_batch=max_batch,
            auto_switch_to_flash=False,
        )
        self.manager = self.model.init_continuous_batching(generation_config=gen_config,
                                                           continuous_batching_config=cb_config)
        self.manager.warmup()  # on CPU: only builds the batch processor and allocates the KV cache, here not lazily
        self.manager.start()
        self._ids = itertools.count()
        self._closed = False

    async def stream(self, prompt_ids: list[int], max_new_tokens: int):
        """Async generator: yields each generated token id (greedy), exactly `max_new_tokens` of them."""
        if self._closed:
            raise RuntimeError("peer is closed")
        if max_new_tokens <= 0:
            return
        mgr = self.manager
        request_id = f"peer_{next(self._ids)}"
        outputs: asyncio.Queue = asyncio.Queue()
        # Register before adding, so the first token cannot arrive before the handler exists.
        mgr.register_result_handler(request_id, outputs.put_nowait)
        finished = False
        try:
            # Never blocks: the input queue is unbounded (max_queue_size=0).
            added = mgr.add_request(list(prompt_ids), request_id=request_id, max_new_tokens=max_new_tokens,
                                    streaming=True, eos_token_id=-1)
            if added is None:
                raise RuntimeError("ContinuousBatchingManager refused the request (stopping or stopped)")
            emitted = 0
            while True:
                try:
                    out = await asyncio.wait_for(outputs.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if not mgr.is_running():
                        err = mgr.background_thread_status.fatal_error
                        raise RuntimeError(f"generation thread stopped: {err!r}") from None
                    continue
                if out.error is not None:
                    finished = True
                    raise RuntimeError(f"request {request_id} failed: {out.error}")
                tokens = out.generated_tokens
                for tok in tokens[emitted:]:
                    yield int(tok)
                emitted = len(tokens)
                if out.is_finished():
                    finished = True
                    return
        finally:
            if not finished:  # consumer went away (cancelled / aclose) or error: free the slot
                mgr.cancel_request(request_id)
                with mgr.output_router._lock:  # cancelled requests never finish, so no auto-cleanup
                    mgr.output_router.result_handlers.pop(request_id, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.manager.stop(block=True, timeout=10, hard_stop=True)
        self.manager.destroy()
