"""The project's checkpoint format: a directory with `config.json` and `model.safetensors`.

config.json:
    {"format": "llm-checkpoint/1", "task": "lm" | "classification",
     "model": {GPTConfig fields}, "num_classes": 2 (classification only), "metadata": {...}}
`metadata` carries what the task needs at inference (labels, max length, prompt template, ...).
No pickle anywhere: tensors are safetensors, the rest is JSON.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llm.config import GPTConfig
from llm.model import GPT, GPTClassifier

FORMAT = "llm-checkpoint/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(RuntimeError):
    pass


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(model: GPT, out_dir: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` (a GPT or GPTClassifier) to `out_dir`; each file lands atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"format": FORMAT, "task": "lm", "model": model.config.to_dict()}
    if isinstance(model, GPTClassifier):
        config.update(task="classification", num_classes=model.num_classes)
    config["metadata"] = metadata or {}
    # The LM head is tied to the token embedding: store it once.
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    _atomic_write(out / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    _atomic_write(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return out


def read_config(ckpt_dir: str | os.PathLike, hint: str = "") -> dict[str, Any]:
    d = Path(ckpt_dir).expanduser()
    if not d.is_dir():
        raise CheckpointError(f"Checkpoint directory {d} does not exist.{(' ' + hint) if hint else ''}")
    cfg_path = d / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{d} has no {CONFIG_FILE}; it is not a checkpoint directory.{(' ' + hint) if hint else ''}")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e}); the checkpoint is corrupt. {hint}".rstrip()) from e


def read_tensors(ckpt_dir: str | os.PathLike, hint: str = "") -> dict[str, torch.Tensor]:
    path = Path(ckpt_dir).expanduser() / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing.{(' ' + hint) if hint else ''}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({e}). Delete the directory and download or train it again. {hint}".rstrip()
        ) from e


def build_model(config: dict[str, Any]) -> GPT:
    """An untrained model of the shape and task a project config.json describes."""
    shape = GPTConfig.from_dict(config["model"])
    if config.get("task") == "classification":
        return GPTClassifier(shape, int(config["num_classes"]))
    return GPT(shape)


def load_state(model: GPT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors strictly (the tied LM head aside), naming what is missing or unexpected."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{source} does not fit the model described by its config.json: {e}") from e
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit the model described by its config.json: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
