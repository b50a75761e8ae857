"""Pretraining's resume state, without pickle: the weights and AdamW's moments as safetensors, the step, the seed and
the loss history as JSON, in OUT/resume/. Running the same command again continues where it stopped."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from finetune.optim import WeightAverage
from llm.checkpoint import check_safetensors, load_state, read_tensors, save_checkpoint
from llm.model import GPT

RESUME_DIR = "resume"
STATE_FILE = "state.json"
OPTIM_FILE = "optimizer.safetensors"
AVERAGE_DIR = "average"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            v = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = v.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    return {"state": state, "param_groups": groups}


def save_resume(out: Path, model: GPT, opt: torch.optim.Optimizer, state: dict, average: WeightAverage | None = None) -> None:
    """Write resume/ as a whole: build it in resume.tmp/, then swap it in (resume.old/ meanwhile). With a weight
    average, its weights go to resume/average/ and its update count to the state."""
    tmp, final, old = out / (RESUME_DIR + ".tmp"), out / RESUME_DIR, out / (RESUME_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp, metadata={"pretrain_step": state["step"]})
    if average is not None:
        save_checkpoint(average.model, tmp / AVERAGE_DIR, metadata={"pretrain_step": state["step"]})
        state = {**state, "average_updates": average.updates}
    tensors, groups = _flatten_optimizer(opt)
    save_file(tensors, str(tmp / OPTIM_FILE))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "param_groups": groups}, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_resume(out: Path) -> Path | None:
    for name in (RESUME_DIR, RESUME_DIR + ".old"):  # .old survives a kill between the two renames
        d = out / name
        if (d / STATE_FILE).is_file():
            return d
    return None


def load_resume(d: Path, model: GPT, opt: torch.optim.Optimizer, average: WeightAverage | None = None) -> dict:
    """Restore the weights, the optimizer and (when both the run and the saved state have one) the weight average;
    returns the state. An average the saved run did not keep starts from the restored weights."""
    try:
        state = json.loads((d / STATE_FILE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
            raise ValueError("no param_groups list")
    except (OSError, UnicodeDecodeError, ValueError) as e:  # (JSONDecodeError is a ValueError)
        raise _unreadable(d / STATE_FILE, e) from None
    load_state(model, read_tensors(d), str(d))
    if average is not None:
        if (d / AVERAGE_DIR).is_dir():
            load_state(average.model, read_tensors(d / AVERAGE_DIR), str(d / AVERAGE_DIR))
            average.updates = state.get("average_updates", 0)
        else:
            average.model.load_state_dict(model.state_dict())
    check_safetensors(d / OPTIM_FILE, f"Start over with --fresh, or delete {d}.")  # never a pickle
    try:
        opt.load_state_dict(_unflatten_optimizer(load_file(str(d / OPTIM_FILE)), state.pop("param_groups")))
    except (SafetensorError, KeyError, TypeError, ValueError) as e:  # another run's optimizer, a file cut short
        raise _unreadable(d / OPTIM_FILE, e) from None
    return state


def _unreadable(path: Path, e: Exception) -> ValueError:
    return ValueError(f"{path} cannot be used to resume ({type(e).__name__}: {str(e)[:200]}). Start over with "
                      f"--fresh (the run begins again from step 0), or delete {path.parent}.")
