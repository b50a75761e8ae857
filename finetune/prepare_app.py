"""Prepare what the chat app needs, then hand over to `chainlit run app.py` (`make app` runs both).

    python -m finetune.prepare_app                 # check; download data and fine-tune what is missing
    python -m finetune.prepare_app --check         # only say what is missing and the commands that create it
    LLM_SKIP_TRAINING=1 make app                   # start the app at once; it tells the user what is missing

What it prepares, each only when missing:
  1. the spam classifier  (checkpoint: $LLM_SPAM_CHECKPOINT or checkpoints/spam)
     = python -m finetune.spam prepare && python -m finetune.spam train --out <checkpoint>
  2. the assistant        (checkpoint: $LLM_INSTRUCT_CHECKPOINT or checkpoints/instruct)
     = python -m finetune.instruct train --out <checkpoint>
Downloads show progress bars. Offline, point at local copies: $LLM_BASE (base model directory),
$LLM_SPAM_DATA (SMSSpamCollection), $LLM_INSTRUCTION_DATA (instruction-data.json), $LLM_BPE_DIR
(GPT-2's encoder.json + vocab.bpe), or the flags below. Training on a CPU takes a while: it is
announced first and Ctrl-C skips it; the app starts either way and says in the chat what is missing.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from llm.argtypes import positive_float

SKIP_ENV = "LLM_SKIP_TRAINING"


def _flags(**kv) -> list[str]:
    return [x for k, v in kv.items() if v for x in (f"--{k.replace('_', '-')}", str(v))]


def plan(args) -> list[tuple[str, Path, list[tuple[str, list[str]]]]]:
    """(what, checkpoint, [(module, argv), ...]) for every missing checkpoint."""
    from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID, checkpoint_ready, default_specs

    todo = []
    where = {spec.model_id: spec.checkpoint() for spec in default_specs()}  # the paths the app will load
    spam_ckpt = where[SPAM_MODEL_ID]
    if not checkpoint_ready(spam_ckpt):
        todo.append(("spam classifier", spam_ckpt, [
            ("finetune.spam", ["prepare", *_flags(sms_data=args.sms_data)]),
            ("finetune.spam", ["train", "--out", str(spam_ckpt), *_flags(base=args.base)]),
        ]))
    inst_ckpt = where[INSTRUCT_MODEL_ID]
    if not checkpoint_ready(inst_ckpt):
        todo.append(("assistant", inst_ckpt, [
            ("finetune.instruct", ["train", "--out", str(inst_ckpt),
                                   *_flags(base=args.base, data=args.instruction_data, max_minutes=args.max_minutes)]),
        ]))
    return todo


def unloadable() -> list[tuple[str, Path, str]]:
    """(what, checkpoint, why) for every checkpoint that is there but would not load: its config and the header of
    its weights are read (no tensors), so a truncated file or the wrong kind of model is told now, not in the chat."""
    from llm.checkpoint import WEIGHTS_FILE, CheckpointError, check_safetensors, read_config, require_task
    from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID, checkpoint_ready, default_specs

    tasks = {SPAM_MODEL_ID: ("spam classifier", "classification"), INSTRUCT_MODEL_ID: ("assistant", "lm")}
    found = []
    for spec in default_specs():
        what, task = tasks[spec.model_id]
        ckpt = spec.checkpoint()
        if not checkpoint_ready(ckpt):  # missing: plan() creates it
            continue
        try:
            require_task(read_config(ckpt), task, ckpt)
            check_safetensors(ckpt / WEIGHTS_FILE)
        except CheckpointError as e:
            found.append((what, ckpt, str(e)))
    return found


def command_line(module: str, argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", module, *argv])


def run_module(module: str, argv: list[str]) -> int:
    """Call a fine-tuning CLI's main() in this process (same library code, its own progress bars)."""
    import importlib

    return importlib.import_module(module).main(argv)


def say(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, runner: Callable[[str, list[str]], int] = run_module) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.prepare_app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help=f"only report what is missing (also: {SKIP_ENV}=1)")
    p.add_argument("--base", default=None, help="base model for the fine-tunes: preset or directory (default: $LLM_BASE, else gpt2)")
    p.add_argument("--sms-data", default=None, help="local SMSSpamCollection or the UCI zip (default: $LLM_SPAM_DATA, else download)")
    p.add_argument("--instruction-data", default=None, help="local instruction-data.json (default: $LLM_INSTRUCTION_DATA, else download)")
    p.add_argument("--max-minutes", type=positive_float, default=None, help="cap on the assistant's training time (best checkpoint kept)")
    args = p.parse_args(argv)

    todo, broken = plan(args), unloadable()
    for what, ckpt, why in broken:
        say(f"the {what} checkpoint at {ckpt} is there but will not load: {why}")
        say(f"    move it away (or delete it) and run this again to create a new one; the app starts anyway and says "
            f"the {what} is not available.")
    if not todo:
        say("starting the app." if broken else "spam classifier and assistant checkpoints found: starting the app.")
        return 0
    check_only = args.check or os.environ.get(SKIP_ENV, "").lower() in ("1", "true", "yes")
    for what, ckpt, steps in todo:
        say(f"the {what} checkpoint is missing ({ckpt}). It is created by:")
        for module, margv in steps:
            say(f"    {command_line(module, margv)}")
    if check_only:
        say("not training now (--check or LLM_SKIP_TRAINING=1); the app starts and names these commands in the chat.")
        return 0
    say("Offline? Set LLM_BASE=<base model dir>, LLM_SPAM_DATA=<SMSSpamCollection>, "
        "LLM_INSTRUCTION_DATA=<instruction-data.json>, LLM_BPE_DIR=<dir with encoder.json + vocab.bpe>.")
    say(f"Fine-tuning now; on a CPU this takes tens of minutes (minutes on a GPU). "
        f"Ctrl-C skips a step; {SKIP_ENV}=1 skips all of it.")
    for what, ckpt, steps in todo:
        start = time.monotonic()
        say(f"== {what} ==")
        try:
            for module, margv in steps:
                say(f"$ {command_line(module, margv)}")
                rc = runner(module, margv)
                if rc:
                    raise RuntimeError(f"exited with status {rc}")
        except KeyboardInterrupt:
            say(f"{what}: skipped (Ctrl-C). The app starts without it and says how to create it.")
            continue
        except Exception as e:  # a download or training failure must not keep the app from starting
            say(f"{what}: not created ({e}). Fix the error above and run the commands listed, "
                "or start the app anyway: it tells the user what is missing.")
            continue
        say(f"{what}: ready at {ckpt} ({time.monotonic() - start:.0f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
