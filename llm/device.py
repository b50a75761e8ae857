"""Where and in what precision the model runs: cuda > mps > cpu unless told otherwise."""
from __future__ import annotations

import os

import torch

DEVICE_ENV = "LLM_DEVICE"
PRECISION_ENV = "LLM_PRECISION"
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


def resolve_precision(name: str | None = None) -> str:
    """The inference precision asked for: the flag, else $LLM_PRECISION, else fp32."""
    name = (name or os.environ.get(PRECISION_ENV) or "fp32").lower()
    if name not in DTYPES:
        raise ValueError(f"unknown precision {name!r}; use fp32, bf16 or fp16")
    return name


def parse_dtype(name: str | None = None) -> torch.dtype:
    return DTYPES[resolve_precision(name)]
