"""What the training CLIs share: the optimizer, the learning-rate schedule, the weight average,
mixed precision and length-grouped batches."""
from __future__ import annotations

import contextlib
import copy
import math
import random
from typing import Sequence

import torch

# --dtype choices -> the autocast dtype (None: plain fp32). Weights and optimizer state stay fp32 either way.
TRAIN_DTYPES = {"bf16": torch.bfloat16, "fp32": None}


def adamw(params, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has a fused kernel (CPU and CUDA): on the 2-core CPU the fused
    step over gpt2-mini's 58M parameters takes ~75 ms instead of ~370 ms, a third of a spam step."""
    return torch.optim.AdamW(params, fused=device.type in ("cpu", "cuda"), **kwargs)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """The learning-rate multiplier at `step`: a linear warmup over `warmup_steps`, times a cosine
    from 1 down to `min_ratio` over `total_steps` (held at `min_ratio` after them)."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    progress = min(step / max(total_steps, 1), 1.0)
    return warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def warmup_cosine_schedule(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                           min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total_steps, warmup_steps, min_ratio))


class WeightAverage:
    """An exponential moving average of a model's trainable weights (Polyak averaging).

    `model` is the averaged copy: evaluate and save it instead of the last step's weights. It moves
    less from one step to the next, so validation picks a checkpoint by its quality rather than by
    where the last few noisy batches happened to leave it. The decay ramps up as (1+n)/(10+n) until
    it reaches `decay`, so early in training the average follows the weights closely."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must be between 0 and 1 (e.g. 0.99), not {decay}")
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        pairs = [(a, p) for a, p in zip(self.model.parameters(), model.parameters()) if p.requires_grad]
        self._averaged, self._live = [a for a, _ in pairs], [p for _, p in pairs]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._averaged, self._live, 1 - decay)


def autocast_dtype(choice: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--dtype` (default: bf16 on CUDA, fp32 elsewhere). bf16 on a CPU
    pays off where it has bf16 matrix units (AVX512-BF16, AMX): 1.7x per training step on
    the project's 2-core Zen 5 machine; without them it can be slower than fp32."""
    return TRAIN_DTYPES[choice or ("bf16" if device.type == "cuda" else "fp32")]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` to `dtype` on `device`'s type, or nothing when dtype is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, group: int = 50) -> list[list[int]]:
    """Batches of indices in random order whose members have similar lengths: shuffle, sort within
    windows of `group` batches, cut into batches, shuffle the batches. A batch padded to its own
    longest member then wastes little work on padding (about half the CPU time on SMS lengths)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * group
    order = [j for w in range(0, len(order), window) for j in sorted(order[w:w + window], key=lambda j: lengths[j])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
