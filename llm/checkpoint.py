"""The project's checkpoint format: a directory with `config.json` and `model.safetensors`.

config.json:
    {"format": "llm-checkpoint/1", "task": "lm" | "classification",
     "model": {GPTConfig fields}, "num_classes": 2 (classification only), "metadata": {...}}
`metadata` carries what the task needs at inference (labels, max length, prompt template, ...).
No pickle anywhere: tensors are safetensors, the rest is JSON.

Every way a checkpoint can be wrong (no config, bad JSON, ill-typed fields, truncated or pickled
weights, tensors that do not fit the config, the wrong task) raises `CheckpointError` with one short
paragraph: what is wrong and what to do. Loaders, the CLIs and the serving registry show it as is.
"""
from __future__ import annotations

import json
import math
import os
import struct
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
TASKS = {"lm": "a language model", "classification": "a classifier"}  # config.json's "task" -> what it is
REDO = "Delete the directory and train or download it again."  # the fix when no caller hint says better
# Shape fields a project config.json always has (save_checkpoint writes them all); Hugging Face's
# config.json may leave any out and mean GPT-2's defaults.
REQUIRED_SHAPE = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
INT_FIELDS = ("n_layer", "n_head", "n_embd", "n_positions", "n_ctx", "vocab_size")  # n_ctx: Hugging Face's alias
FLOAT_FIELDS = ("layer_norm_epsilon", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")
# No GPT-2 has a dimension anywhere near this; the bound keeps a bogus config from describing
# tensors whose element count overflows before it is compared with the file.
MAX_DIM = 1 << 24
# What a torch.save / pickle file starts with: a zip archive (torch >= 1.6) or a pickle PROTO opcode.
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


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


def update_metadata(ckpt_dir: str | os.PathLike, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge `updates` into a checkpoint's config.json metadata, atomically (the weights are untouched).
    Returns the new metadata."""
    path = Path(ckpt_dir) / CONFIG_FILE
    config = read_config(ckpt_dir)
    config["metadata"] = {**config.get("metadata", {}), **updates}
    _atomic_write(path, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return config["metadata"]


# ----------------------------------------------------------------------------- messages

def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line, whatever the source
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(value: Any, limit: int = 40) -> str:
    """A value from a file, quoted and cut, so a hostile or huge config cannot flood the message."""
    return _clip(repr(value), limit)


def _fail(problem: str, hint: str = "", fix: str = REDO) -> CheckpointError:
    """One paragraph: the problem, then what to do (the caller's hint, which knows the command, else `fix`)."""
    return CheckpointError(f"{problem.rstrip('.')}. {hint or fix}".rstrip())


# ----------------------------------------------------------------------------- config.json

def read_config(ckpt_dir: str | os.PathLike, hint: str = "") -> dict[str, Any]:
    """config.json of a checkpoint directory, validated (see `validate_config`)."""
    d = Path(ckpt_dir).expanduser()
    if d.is_file():  # a weights file passed where its directory belongs
        refuse_pickle(d, hint)
        raise _fail(f"{d} is a file; pass the checkpoint directory that holds {CONFIG_FILE} and {WEIGHTS_FILE}",
                    hint, fix="")
    if not d.is_dir():
        raise _fail(f"Checkpoint directory {d} does not exist", hint, fix="")
    cfg_path = d / CONFIG_FILE
    if not cfg_path.is_file():
        for pickled in _pickle_files(d):
            refuse_pickle(pickled, hint)
        raise _fail(f"{d} has no {CONFIG_FILE}; it is not a checkpoint directory", hint, fix="")
    try:
        config = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _fail(f"{cfg_path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                    "the checkpoint is corrupt", hint) from None
    except json.JSONDecodeError as e:
        raise _fail(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                    "the checkpoint is corrupt", hint) from None
    except RecursionError:
        raise _fail(f"{cfg_path} is not a checkpoint config (JSON nested too deeply)", hint) from None
    except OSError as e:
        raise _fail(f"cannot read {cfg_path} ({e.strerror or e})", hint, fix="") from None
    validate_config(config, cfg_path, hint)
    return config


def validate_config(config: Any, source: str | os.PathLike, hint: str = "") -> None:
    """Refuse a config.json whose structure or types could not describe a model we can build.

    Ours has "format" (see the module docstring); one without it is read as Hugging Face's GPT-2
    config.json, whose shape fields sit at the top level.
    """
    if not isinstance(config, dict):
        raise _fail(f"{source} must hold a JSON object, not a {type(config).__name__}", hint)
    if "format" not in config:
        if config.get("model_type", "gpt2") != "gpt2":
            raise _fail(f"{source} describes a {_short(config['model_type'])} model, not GPT-2", hint)
        model_shape(config, source, hint)
        return
    if config["format"] != FORMAT:
        raise _fail(f"{source} has format {_short(config['format'])}; this version reads {FORMAT!r} only", hint)
    if not isinstance(config.get("task"), str) or config["task"] not in TASKS:
        raise _fail(f"{source} has task {_short(config.get('task'))}; expected one of {', '.join(map(repr, TASKS))}", hint)
    if not isinstance(config.get("model"), dict):
        raise _fail(f"{source}: \"model\" must be an object of GPT-2 shape fields, not {_short(config.get('model'))}", hint)
    model_shape(config["model"], source, hint, required=REQUIRED_SHAPE)
    if config["task"] == "classification" and not _positive_int(config.get("num_classes")):
        raise _fail(f"{source}: num_classes must be a positive integer, not {_short(config.get('num_classes'))}", hint)
    if not isinstance(config.get("metadata", {}), dict):
        raise _fail(f"{source}: \"metadata\" must be an object, not {_short(config['metadata'])}", hint)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_DIM


def finite_number(value: Any) -> bool:
    """A real number from a JSON file: an int or float (not a bool), not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_shape(fields: dict[str, Any], source: str | os.PathLike, hint: str = "",
                required: tuple[str, ...] = ()) -> GPTConfig:
    """The GPTConfig `fields` describe; every field is type- and range-checked before it is used."""
    for key in required:
        if key not in fields:
            raise _fail(f"{source} lacks the model field {key}", hint)
    for key in INT_FIELDS:
        if key in fields and not _positive_int(fields[key]):
            raise _fail(f"{source}: {key} must be an integer from 1 to {MAX_DIM}, not {_short(fields[key])}", hint)
    for key in FLOAT_FIELDS:
        if key not in fields:
            continue
        value = fields[key]
        if not finite_number(value) or not (value > 0 if key == "layer_norm_epsilon" else 0 <= value <= 1):
            wanted = "a positive number" if key == "layer_norm_epsilon" else "a number from 0 to 1"
            raise _fail(f"{source}: {key} must be {wanted}, not {_short(value)}", hint)
    if not isinstance(fields.get("activation_function", ""), str):
        raise _fail(f"{source}: activation_function must be a string, not {_short(fields['activation_function'])}", hint)
    try:  # what is left: n_embd divisible by n_head, a supported activation
        return GPTConfig.from_dict(fields)
    except ValueError as e:
        raise _fail(f"{source}: {_clip(str(e), 160)}", hint) from None


def task_of(config: dict[str, Any]) -> str:
    """"lm" or "classification"; a Hugging Face GPT-2 (no "format") is a language model."""
    return config.get("task", "lm") if "format" in config else "lm"


def require_task(config: dict[str, Any], task: str, source: str | os.PathLike, hint: str = "") -> None:
    """Refuse a checkpoint of another task before any weights are read."""
    found = task_of(config)
    if found != task:
        raise _fail(f"{source} holds {TASKS[found]} (task {found!r} in its {CONFIG_FILE}), not {TASKS[task]}", hint, fix="")


def build_model(config: dict[str, Any]) -> GPT:
    """An untrained model of the shape and task a config.json (ours or Hugging Face's) describes."""
    shape = model_shape(config["model"] if "format" in config else config, "config.json")
    if task_of(config) == "classification":
        return GPTClassifier(shape, int(config["num_classes"]))
    return GPT(shape)


# ----------------------------------------------------------------------------- model.safetensors

def _pickle_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte header length that fits the file, then the header's opening brace."""
    return len(head) >= 9 and struct.unpack("<Q", head[:8])[0] <= size - 8 and head[8:9] == b"{"


def refuse_pickle(path: Path, hint: str = "") -> None:
    """Raise if `path` is a pickle (torch.save's zip or a raw pickle): unpickling can run arbitrary code.

    Safetensors is ruled out first: its header length may begin with the same bytes as a pickle."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(PICKLE_MAGIC) and not _looks_like_safetensors(head, path.stat().st_size):
        raise _fail(f"{path} is a pickle file (torch.save), not safetensors; only safetensors are loaded, as "
                    "unpickling can run code. Convert it in code you trust with safetensors.torch.save_file", hint, fix="")


def check_safetensors(path: Path, hint: str = "") -> None:
    """Read only the header: refuse a pickle, a file that is not safetensors, or one cut short, with the reason.

    Layout: an 8-byte little-endian header length, a JSON header of {name: {dtype, shape,
    data_offsets: [begin, end]}}, then the tensor bytes.
    """
    refuse_pickle(path, hint)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(f"{path} is corrupt or truncated: {size} bytes, not even a safetensors header", hint)
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise _fail(f"{path} is corrupt or truncated: a bad safetensors header (it claims {n} bytes; "
                        f"the file has {size})", hint)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        if not all(isinstance(e, int) for e in ends):
            raise TypeError
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError, KeyError, IndexError, TypeError):
        raise _fail(f"{path} is corrupt or truncated: a bad safetensors header (not the JSON table of tensors "
                    "it should be)", hint) from None
    needed = 8 + n + max(ends, default=0)
    if needed > size:
        raise _fail(f"{path} is corrupt or truncated: its header describes {needed} bytes, the file has {size}", hint)


def read_tensors(ckpt_dir: str | os.PathLike, hint: str = "") -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors; never unpickles anything."""
    d = Path(ckpt_dir).expanduser()
    path = d / WEIGHTS_FILE
    if not path.is_file():
        for pickled in _pickle_files(d) if d.is_dir() else []:
            refuse_pickle(pickled, hint)
        raise _fail(f"{path} is missing", hint)
    try:
        check_safetensors(path, hint)
        return load_file(str(path))  # what the header check cannot see: dtypes, overlapping offsets...
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(f"{path} is corrupt or truncated ({_clip(str(e), 120)})", hint) from None


# ----------------------------------------------------------------------------- config + tensors

def _block_count(state: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in state if k.startswith("h.") and k.count(".") >= 2})


def check_fits(config: dict[str, Any], state: dict[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Refuse tensors that do not fit the config, before a full-size model is allocated for them.

    The layer count is compared first, so a config claiming a billion layers is refused without
    building any; then a model is built on the meta device (shapes, no memory) and compared.
    """
    shape = model_shape(config["model"] if "format" in config else config, source, hint)
    blocks = _block_count(state)
    if shape.n_layer != blocks:
        raise _fail(f"{source} does not fit its {CONFIG_FILE}: the config says n_layer={shape.n_layer}, "
                    f"{WEIGHTS_FILE} holds {blocks} blocks", hint)
    with torch.device("meta"):
        probe = build_model(config)
    problem = fit_problem(probe, state)
    if problem:
        raise _fail(f"{source} does not fit its {CONFIG_FILE}: {problem}", hint)


def _names(keys: list[str]) -> str:
    """The first few tensor names (cut: a hostile file may hold very long ones)."""
    return _clip(", ".join(keys[:3]), 120) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def fit_problem(model: GPT, state: dict[str, torch.Tensor]) -> str | None:
    """The first way `state` does not fit `model`, in one line (None if it fits): torch's own
    error lists every mismatching tensor across pages."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    for name, want in expected.items():
        if name in state and tuple(state[name].shape) != want:
            return f"tensor {name} is {list(state[name].shape)} in the weights but {list(want)} per the config"
    missing = [k for k in expected if k not in state]
    if missing:
        return f"the weights lack {len(missing)} tensor(s) the config needs ({_names(missing)})"
    unexpected = [k for k in state if k not in expected and k != "lm_head.weight"]
    if unexpected:
        return f"the weights hold {len(unexpected)} tensor(s) the config does not describe ({_names(unexpected)})"
    return None


def load_state(model: GPT, state: dict[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Load tensors strictly (the tied LM head aside), naming the first tensor that does not fit."""
    problem = fit_problem(model, state)
    if problem:
        raise _fail(f"{source} does not fit the model described by its {CONFIG_FILE}: {problem}", hint)
    model.load_state_dict(state, strict=False)
