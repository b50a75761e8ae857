"""Where and in what precision the model runs: cuda > mps > cpu unless told otherwise."""
from __future__ import annotations

import os

import torch

DEVICE_ENV = "LLM_DEVICE"
PRECISION_ENV = "LLM_PRECISION"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
# int8 = int8 weights with fp32 activations (llm.quantize): fastest on CPU, where decoding is memory-bound.
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def pick_device(name: str | None = None) -> torch.device:
    name = name or os.environ.get(DEVICE_ENV)
    if name and name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"unknown device {name!r}: use cuda, mps or cpu (flag --device or ${DEVICE_ENV})") from None
        available = {"cuda": torch.cuda.is_available,
                     "mps": lambda: bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
        if device.type in available and not available[device.type]():
            raise ValueError(f"device {name!r} is not available on this machine: use --device cpu (or unset ${DEVICE_ENV})")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(name: str | None = None) -> str:
    """The inference precision asked for: the flag, else $LLM_PRECISION, else fp32."""
    name = (name or os.environ.get(PRECISION_ENV) or "fp32").lower()
    if name not in DTYPES and name != "int8":
        raise ValueError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)} (flag --precision or ${PRECISION_ENV})")
    return name


def parse_dtype(name: str | None = None) -> torch.dtype:
    """The dtype activations (and the KV cache) run in; int8 keeps fp32 activations."""
    name = resolve_precision(name)
    return torch.float32 if name == "int8" else DTYPES[name]
