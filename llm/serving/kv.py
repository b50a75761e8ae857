"""The engine's KV cache: one slot per running sequence, allocated once, bounded in memory.

Slot i holds sequence i of the running batch (the engine keeps its running list compact, so the
batch is always slots 0..n-1 and attention reads a view, never a gathered copy). Each slot spans the
whole context, so a slot's memory is 2 (k, v) x layers x width x context x bytes per value:
gpt2-mini (10 x 512, context 1,024, fp32) 40 MiB, gpt2 124M (12 x 768) 72 MiB.
"""
from __future__ import annotations

import torch

from llm.config import GPTConfig


def slot_bytes(config: GPTConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values that one sequence of the whole context needs."""
    return 2 * config.n_layer * config.n_embd * config.n_positions * torch.empty(0, dtype=dtype).element_size()


def slots_for(config: GPTConfig, dtype: torch.dtype, max_running: int, budget_mb: int) -> int:
    """Slots that fit `budget_mb` MiB, at most `max_running`, at least 1."""
    return max(1, min(max_running, budget_mb * 2**20 // slot_bytes(config, dtype)))


class SlotCache:
    def __init__(self, config: GPTConfig, slots: int, device, dtype: torch.dtype):
        shape = (slots, config.n_head, config.n_positions, config.head_dim)
        # zeros, not empty: a masked position still multiplies its value by 0, and garbage could be NaN
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.slots, self.context = slots, config.n_positions

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction)."""
        for t in self.keys + self.values:
            t[dst, :, :length] = t[src, :, :length]

    def prefill_view(self, slot: int, start: int) -> "_PrefillView":
        return _PrefillView(self, slot, start)

    def decode_view(self, positions: torch.Tensor, span: int, aligned: bool) -> "_DecodeView":
        """`aligned`: every row's position is span - 1 (one stream, or rows of one length)."""
        return _DecodeView(self, positions, span, aligned)


class _PrefillView:
    """A chunk of one sequence's prompt: written at [start, start + T) of its slot."""

    def __init__(self, cache: SlotCache, slot: int, start: int):
        self.cache, self.slot, self.start = cache, slot, start

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end, s = self.start + k.size(2), self.slot
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[s, :, self.start:end] = k[0]
        values[s, :, self.start:end] = v[0]
        return keys[s:s + 1, :, :end], values[s:s + 1, :, :end]


class _DecodeView:
    """One new token for each of the first B slots, written at that row's own position."""

    def __init__(self, cache: SlotCache, positions: torch.Tensor, span: int, aligned: bool):
        self.cache, self.positions, self.span = cache, positions, span
        # rows at one position take a plain slice copy; otherwise an indexed write (a costlier kernel)
        self.where = (slice(None, len(positions)), slice(None), span - 1) if aligned else \
            (torch.arange(len(positions), device=positions.device), slice(None), positions)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        n = len(self.positions)
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[self.where] = k[:, :, 0]
        values[self.where] = v[:, :, 0]
        return keys[:n, :, :self.span], values[:n, :, :self.span]
