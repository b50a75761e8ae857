"""Instruction fine-tuning of GPT-2 (Alpaca-style prompts), generation and evaluation.

    python -m finetune.instruct prepare [--data PATH] [--alpaca]           # download/validate, data/instruction/{train,val,test}.json
    python -m finetune.instruct train --base gpt2 --out checkpoints/instruct [--lora-rank 16] [--epochs 2]
    python -m finetune.instruct generate --checkpoint checkpoints/instruct --instruction "..." [--input "..."] [--json]
    python -m finetune.instruct generate --checkpoint checkpoints/instruct --test-set [--responses FILE]
    python -m finetune.instruct eval --checkpoint checkpoints/instruct [--judge-model llama3]

The prompt template is `llm/prompt.py`; data, batching and the model the app calls are `llm/instruct.py`.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from finetune.cli import DefaultsHelp, add_dtype_arg, cli_main, output_dir
from finetune.instruct_eval import OLLAMA_URL, cmd_eval
from finetune.loop import LoopSettings, fit, start, write_history
from finetune.optim import adamw, autocast_dtype, length_grouped_batches, warmup_cosine_schedule
from llm.argtypes import fraction, non_negative_int, positive_float, positive_int
from llm.checkpoint import CheckpointError, save_checkpoint
from llm.download import DownloadError
from llm.generate import add_generation_args, add_runtime_args, settings_from_args
from llm.instruct import (IGNORE_INDEX, InstructionDataError, InstructionModel, batched_loss, collate, token_loss_sum,
                          encode_example, fetch_data, read_entries, split_entries)
from llm.prompt import STOP_STRINGS, template_metadata
from llm.tokenizer import TokenizerError



def load_splits(data: str | None, alpaca: bool = False, quiet: bool = False) -> dict[str, list[dict]]:
    src = fetch_data(data, alpaca=alpaca)
    entries, problems = read_entries(src)
    for p in problems[:20]:
        print(f"skipped {p}", file=sys.stderr)
    if len(problems) > 20:
        print(f"... and {len(problems) - 20} more bad entries skipped", file=sys.stderr)
    splits = split_entries(entries)
    if not quiet:
        print(f"{src}: {len(entries)} valid entries ({len(problems)} skipped) -> "
              + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), file=sys.stderr)
    return splits


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------

def cmd_prepare(args) -> int:
    splits = load_splits(args.data, args.alpaca)
    out = Path(args.data_dir) / ("alpaca" if args.alpaca else "")
    out.mkdir(parents=True, exist_ok=True)
    for name, items in splits.items():
        (out / f"{name}.json").write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n")
        print(f"  {name:5s} {len(items):6d} -> {out / (name + '.json')}")
    return 0


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def conversation_examples(tok, items: list[dict], fraction: float, max_turns: int, max_length: int,
                          rng: random.Random) -> list:
    """The training examples: each item alone, or (with probability `fraction`) after 1..max_turns other items'
    exchanges, as the app sends a follow-up; the loss is on the last response only. Earlier turns that do not fit
    max_length are dropped, oldest first. With fraction 0 no random number is drawn (the single-turn recipe)."""
    out = []
    keys = [json.dumps(e, sort_keys=True) for e in items]  # a duplicate entry is the same exchange
    distinct = len(set(keys))
    for i, e in enumerate(items):
        history = []
        if fraction > 0 and distinct > 1 and rng.random() < fraction:
            k = min(rng.randint(1, max_turns), distinct - 1)
            taken = {keys[i]}
            while len(history) < k:  # k <= the distinct others, so this ends
                j = rng.randrange(len(items))
                if keys[j] not in taken:
                    taken.add(keys[j])
                    history.append(items[j])
        example = encode_example(tok, e, history)
        while history and len(example.ids) > max_length:
            history = history[1:]
            example = encode_example(tok, e, history)
        out.append(example)
    return out


class InstructTrainer:
    """The shared loop's trainer for instruction fine-tuning: prompt + response sequences, token-weighted loss."""

    def __init__(self, train_ex, val_ex, *, batch_size: int, grad_accum: int, eot_id: int, mask_prompt: bool,
                 max_length: int, group_by_length: bool, device, rng: random.Random):
        self.train_ex, self.val_ex, self.batch_size, self.grad_accum = train_ex, val_ex, batch_size, grad_accum
        self.eot_id, self.mask_prompt, self.max_length, self.device, self.rng = eot_id, mask_prompt, max_length, device, rng
        self.group_by_length = group_by_length
        self.lengths = [min(len(e.ids), max_length) for e in train_ex]

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_ex) / (self.batch_size * self.grad_accum))

    def epoch_steps(self, epoch: int):
        if self.group_by_length:
            micro = length_grouped_batches(self.lengths, self.batch_size, self.rng)
        else:
            order = list(range(len(self.train_ex)))
            self.rng.shuffle(order)
            micro = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for k in range(0, len(micro), self.grad_accum):  # the order is drawn above; batches are made step by step
            yield [collate([self.train_ex[j] for j in idx], self.eot_id, self.mask_prompt, self.max_length)
                   for idx in micro[k:k + self.grad_accum]]

    def units(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())  # target tokens: the step's loss is a mean per token

    def loss(self, model, batch, total_units):
        x, y = batch
        return token_loss_sum(model, x.to(self.device), y.to(self.device)) / max(total_units, 1), {}

    def train_metrics(self, stats):
        return {}

    def validate(self, model):
        return {"val_loss": batched_loss(model, self.val_ex, self.eot_id, self.device, batch_size=self.batch_size,
                                         mask_prompt=self.mask_prompt, max_length=self.max_length)}


def train(args) -> dict:
    from llm.weights import load_model, resolve_base

    device, rng, tok = start(args)
    splits = load_splits(args.data, args.alpaca)
    train_items = splits["train"][:args.limit] if args.limit else splits["train"]
    val_items = splits["val"][:args.val_limit] if args.val_limit else splits["val"]
    max_len = args.max_length
    train_ex = conversation_examples(tok, train_items, args.history_fraction, args.history_turns, max_len,
                                     random.Random(args.seed + 1))
    val_ex = [encode_example(tok, e) for e in val_items]

    # task="lm": fine-tuning a classifier's checkpoint would save one that InstructionModel.load refuses.
    model, base_cfg = load_model(resolve_base(args.base), "cpu", "fp32", hint="Pass --base PRESET|DIR or set LLM_BASE.",
                                 task="lm")
    if args.lora_rank:
        from llm.lora import apply_lora
        trainable = apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha)
    else:
        trainable = sum(p.numel() for p in model.parameters())
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, device, lr=args.lr, weight_decay=args.weight_decay)
    amp_dtype = autocast_dtype(args.dtype, device)
    max_len = min(max_len, model.config.n_positions)
    trainer = InstructTrainer(train_ex, val_ex, batch_size=args.batch_size, grad_accum=args.grad_accum, eot_id=tok.eot_id,
                              mask_prompt=args.mask_prompt, max_length=max_len, group_by_length=args.group_by_length,
                              device=device, rng=rng)
    total_steps = trainer.steps_per_epoch() * args.epochs
    sched = warmup_cosine_schedule(opt, total_steps, min(args.warmup, total_steps // 10))
    print(f"training {trainable / 1e6:.2f}M parameters ({'LoRA r=%d' % args.lora_rank if args.lora_rank else 'full'}) on "
          f"{len(train_ex)} examples, {args.epochs} epochs x {trainer.steps_per_epoch()} steps, batch {args.batch_size}x{args.grad_accum}, "
          f"lr {args.lr}, max length {max_len}, prompt masking {'on' if args.mask_prompt else 'off'}, device {device}, "
          f"autocast {amp_dtype or 'off'}{', batches grouped by length' if args.group_by_length else ''}"
          f"{f', weight average {args.average}' if args.average else ''}", file=sys.stderr)
    settings = LoopSettings(epochs=args.epochs, eval_every=args.eval_every, patience=args.patience,
                            max_minutes=args.max_minutes, average=args.average, validate_at_start=True)
    result = fit(model, trainer, settings, opt, sched, device=device, total_steps=total_steps, amp_dtype=amp_dtype,
                 log=lambda m: tqdm.write(m, file=sys.stderr))
    model.load_state_dict(result.best_state)
    model = model.cpu()
    if args.lora_rank:
        from llm.lora import merge_lora
        merge_lora(model)
    out = Path(args.out)
    config = {k: v for k, v in vars(args).items() if k not in ("func",)}
    best = result.best
    metadata = {"prompt_template": template_metadata(), "base": resolve_base(args.base), "train_config": config,
                "conversations": ({"fraction": args.history_fraction, "max_turns": args.history_turns}
                                  if args.history_fraction > 0 else None),
                "best_step": best["step"], "best_val_loss": best["val_loss"], "steps": result.steps,
                "train_seconds": round(result.seconds, 1), "train_examples": len(train_ex), "val_examples": len(val_ex)}
    save_checkpoint(model.eval(), out, metadata=metadata)
    write_history(result, out, "instruction fine-tuning")
    print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min ({result.stopped}); best val loss "
          f"{best['val_loss']:.3f} at step {best['step']} -> {out} (loss plot {out / 'loss.png'})")
    return metadata


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    im = InstructionModel.load(args.checkpoint, args.device, args.precision, args.bpe_dir)
    settings = settings_from_args(args, stop_strings=STOP_STRINGS)
    if args.test_set:
        test = load_splits(args.data, args.alpaca)["test"]
        test = test[:args.limit] if args.limit else test
        t0 = time.time()
        responses = im.respond_batch(test, settings, batch_size=args.batch_size, progress=True)
        rows = [{**e, "model_response": r} for e, r in zip(test, responses)]
        out = Path(args.responses or Path(im_path(args)) / "test-responses.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
        print(f"{len(rows)} responses in {time.time() - t0:.0f} s -> {out}")
        return 0
    if args.instruction is None:
        print("error: pass --instruction TEXT (and optionally --input TEXT), or --test-set", file=sys.stderr)
        return 2
    if args.json:
        from llm.generate import GenerationResult
        result = GenerationResult("", [])
        text = "".join(im.stream(args.instruction, args.input, settings, result=result)).strip()
        print(json.dumps({"instruction": args.instruction, "input": args.input, "response": text,
                          "stopped_by": result.stopped_by}, ensure_ascii=False))
    else:
        for piece in im.stream(args.instruction, args.input, settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def im_path(args) -> str:
    import os
    from llm.instruct import CHECKPOINT_ENV, DEFAULT_CHECKPOINT
    return args.checkpoint or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune.instruct", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def data_args(q):
        q.add_argument("--data", default=None, help="instruction data JSON (default: $LLM_INSTRUCTION_DATA, or "
                       "$LLM_ALPACA_DATA with --alpaca, else download it into data/instruction/)")
        q.add_argument("--alpaca", action="store_true", help="use Stanford Alpaca (52k) instead of the book's 1,100 entries")

    q = sub.add_parser("prepare", help="download/validate the data and write the 85/10/5 splits", formatter_class=DefaultsHelp)
    data_args(q)
    q.add_argument("--data-dir", default="data/instruction", help="where the split files go (default: %(default)s)")
    q.set_defaults(func=cmd_prepare)

    q = sub.add_parser("train", help="fine-tune a base model on the training split", formatter_class=DefaultsHelp)
    data_args(q)
    q.add_argument("--base", default=None, help="preset or checkpoint directory (default: $LLM_BASE, else gpt2)")
    q.add_argument("--out", type=output_dir, default="checkpoints/instruct", help="checkpoint directory (default: %(default)s)")
    q.add_argument("--epochs", type=positive_int, default=3, help="passes over the training set (default: %(default)s)")
    q.add_argument("--lr", type=positive_float, default=1.5e-4, help="peak AdamW learning rate (default: %(default)s)")
    q.add_argument("--weight-decay", type=float, default=0.1)
    q.add_argument("--warmup", type=non_negative_int, default=10, help="linear warm-up steps, then cosine decay to 10%% (default: %(default)s)")
    q.add_argument("--batch-size", type=positive_int, default=8)
    q.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    q.add_argument("--max-length", type=positive_int, default=256, help="cap on tokens per training sequence")
    q.add_argument("--group-by-length", action="store_true",
                   help="batch examples of similar length together (less padding: faster on long, varied data such as Alpaca)")
    add_dtype_arg(q)
    q.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=True,
                   help="train on the response tokens only (default: on)")
    q.add_argument("--history-fraction", type=fraction, default=0.0,
                   help="train this share of the examples after 1..--history-turns earlier exchanges (loss on the last "
                        "response only), so follow-up questions work; the app gives history only to such a checkpoint "
                        "(default: 0, single exchanges)")
    q.add_argument("--history-turns", type=positive_int, default=2, help="at most this many earlier exchanges (default: %(default)s)")
    q.add_argument("--lora-rank", type=non_negative_int, default=0, help="LoRA rank; 0 = full fine-tune (default)")
    q.add_argument("--lora-alpha", type=positive_float, default=32.0)
    q.add_argument("--average", type=float, default=0.0,
                   help="validate and keep an exponential moving average of the weights with this decay (0 = off, the default)")
    q.add_argument("--eval-every", type=positive_int, default=30, help="validation loss every N optimizer steps")
    q.add_argument("--patience", type=non_negative_int, default=3, help="early stop after N evaluations without improvement (0 = never)")
    q.add_argument("--max-minutes", type=positive_float, default=None, help="stop training after this long (the best checkpoint is kept)")
    q.add_argument("--limit", type=positive_int, default=None, help="use only the first N training examples")
    q.add_argument("--val-limit", type=positive_int, default=None, help="use only the first N validation examples")
    q.add_argument("--seed", type=int, default=123)
    q.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_runtime_args(q)
    q.set_defaults(func=train)

    for name, helptext in (("generate", "answer one instruction (streamed) or write all test responses"),
                           ("eval", "test loss/perplexity, ROUGE-L F1, exact match (+ optional Ollama judge)")):
        q = sub.add_parser(name, help=helptext, formatter_class=DefaultsHelp)
        q.add_argument("--checkpoint", default=None, help="default: $LLM_INSTRUCT_CHECKPOINT or checkpoints/instruct")
        data_args(q)
        q.add_argument("--responses", default=None, help="test responses JSON (default: CHECKPOINT/test-responses.json)")
        q.add_argument("--batch-size", type=positive_int, default=16, help="prompts per generation batch")
        q.add_argument("--limit", type=positive_int, default=None, help="only the first N test items")
        q.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
        add_generation_args(q, max_new_tokens=160)
        add_runtime_args(q)
        if name == "generate":
            q.add_argument("--instruction", default=None)
            q.add_argument("--input", default="")
            q.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
            q.add_argument("--test-set", action="store_true", help="write responses for the whole test split to --responses")
            q.set_defaults(func=cmd_generate)
        else:
            q.add_argument("--regenerate", action="store_true", help="generate responses even if the file exists")
            q.add_argument("--with-history", action="store_true",
                           help="ask each test question after another test item's exchange, as a follow-up in the app; "
                                "also counts answers copied from that earlier exchange (files get -after-history)")
            q.add_argument("--metrics", default=None, help="metrics JSON (default: CHECKPOINT/metrics.json)")
            q.add_argument("--judge-model", default=None, help="Ollama model to score responses 0-100 (e.g. llama3)")
            q.add_argument("--judge-url", default=OLLAMA_URL)
            q.set_defaults(func=cmd_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(build_parser(), argv, (CheckpointError, DownloadError, TokenizerError, InstructionDataError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
