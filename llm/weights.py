"""Loading any GPT-2: a preset name (downloaded from the Hugging Face hub), a Hugging Face
checkpoint directory, or one of this project's checkpoints.

Hugging Face's GPT-2 stores its linear layers as `Conv1D` with weights shaped (in, out); we use
nn.Linear (out, in), so those four matrices are transposed on load. Everything else maps 1:1.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from llm.checkpoint import (CONFIG_FILE, FORMAT, WEIGHTS_FILE, CheckpointError, build_model, check_fits, load_state,
                            read_config, read_tensors, require_task)
from llm.config import PRESETS
from llm.device import parse_dtype, resolve_precision
from llm.download import download
from llm.model import GPT

BASE_ENV = "LLM_BASE"  # a local base-model directory (offline) or a preset name
CACHE_ENV = "LLM_CACHE_DIR"  # where presets are downloaded to
DEFAULT_BASE = "gpt2"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
HF_URL = "https://huggingface.co/openai-community/{name}/resolve/main/{file}"
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older transformers versions


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or PROJECT_ROOT / "checkpoints" / "base")


def resolve_base(base: str | None) -> str:
    """The base the user asked for: the flag, else $LLM_BASE, else `gpt2`."""
    return base or os.environ.get(BASE_ENV) or DEFAULT_BASE


def download_preset(name: str) -> Path:
    """Download `openai-community/<name>` (config.json + model.safetensors) into the cache."""
    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or pass a checkpoint directory")
    target = cache_dir() / name
    hint = f"pass its directory with --base PATH or set {BASE_ENV}=PATH (config.json + model.safetensors)."
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        download(HF_URL.format(name=name, file=file), target / file, offline_hint=hint)
    return target


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face GPT2Model / GPT2LMHeadModel state dict onto our names and layouts."""
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("transformer.")
        if key.endswith(HF_BUFFERS) or key == "lm_head.weight":  # masks are rebuilt; the head is tied
            continue
        out[key] = tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor
    return out


def is_project_checkpoint(config: dict[str, Any]) -> bool:
    return config.get("format") == FORMAT


def load_model(source: str | os.PathLike, device: torch.device | str = "cpu", precision: str | None = "fp32",
               hint: str = "", task: str | None = None) -> tuple[GPT, dict[str, Any]]:
    """Load a model from a preset name or a checkpoint directory (ours or Hugging Face's).

    Returns the model in eval mode on `device` in `precision` (fp32, bf16, fp16, or int8 weights
    via `llm.quantize`; None means $LLM_PRECISION or fp32), and the checkpoint's config.json. Training passes "fp32".
    `task` ("lm" or "classification") refuses a checkpoint of the other kind. Anything wrong with the
    checkpoint raises CheckpointError, one paragraph ending in `hint` (the command that makes a good one).
    """
    source = str(source)
    path = Path(source).expanduser()
    if not path.exists() and source in PRESETS:
        path = download_preset(source)
    elif not path.exists():
        raise CheckpointError(
            f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor an existing directory. "
            + (hint or "Pass a checkpoint directory with config.json + model.safetensors.")
        )
    config = read_config(path, hint)  # validated: structure, types, sizes
    if task is not None:  # before the weights are read: the wrong kind is refused at once
        require_task(config, task, path, hint)
    state = read_tensors(path, hint)
    if not is_project_checkpoint(config):  # a Hugging Face GPT-2 directory
        state = from_hf_state_dict(state)
    check_fits(config, state, str(path), hint)  # before a full-size model is allocated
    model = build_model(config)
    load_state(model, state, str(path), hint)
    model = model.to(device=device, dtype=parse_dtype(precision)).eval()
    if torch.device(device).type == "cuda":
        # PyTorch sends bf16/fp16 attention to cuDNN, which builds a graph per new input shape; decoding meets a new
        # key length every step, so a bf16 decode step took ~52 ms instead of ~2 ms on an H200
        # (benchmarks/results/serving_gpu.md). The flash/efficient kernels need no per-shape build.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if resolve_precision(precision) == "int8":
        from llm.quantize import quantize_int8
        model = quantize_int8(model)
    else:  # fp32 on a CPU: oneDNN's matmul for inference (training keeps F.linear; see llm/onednn.py)
        from llm.onednn import use_onednn
        model = use_onednn(model)
    return model, config


def describe(model: GPT) -> str:
    c = model.config
    return f"{model.num_parameters() / 1e6:.1f}M parameters, {c.n_layer} layers, {c.n_head} heads, width {c.n_embd}"


if __name__ == "__main__":  # python -m llm.weights gpt2  -> download a preset
    for name in sys.argv[1:] or [DEFAULT_BASE]:
        print(download_preset(name))
