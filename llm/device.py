"""Where and in what precision the model runs: cuda > mps > cpu unless told otherwise."""
from __future__ import annotations

import os

import torch

DEVICE_ENV = "LLM_DEVICE"
DTYPE_ENV = "LLM_DTYPE"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def pick_device(name: str | None = None) -> torch.device:
    name = name or os.environ.get(DEVICE_ENV)
    if name and name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_dtype(name: str | None = None) -> torch.dtype:
    name = (name or os.environ.get(DTYPE_ENV) or "fp32").lower()
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use fp32, bf16 or fp16") from None
