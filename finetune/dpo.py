"""Preference tuning with DPO (direct preference optimization, Rafailov et al. 2023), as the book's chapter 7 ends.

    python -m finetune.dpo train --base checkpoints/instruct --out checkpoints/instruct-dpo [--beta 0.2] [--lora-rank 8]
    python -m finetune.dpo eval --sft checkpoints/instruct --dpo checkpoints/instruct-dpo

The policy starts from an instruction checkpoint; a frozen copy of that checkpoint is the reference. For each
record (instruction, input, chosen, rejected) the loss is

    -log sigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))))

where log pi(response) is the mean log-probability of the response's tokens after the prompt (the prompt is masked
as in instruction fine-tuning), as in the book. The reward of a response is log pi - log ref (before beta); the
reward margin, chosen minus rejected, is what should grow. Training runs on the shared loop (finetune/loop.py);
the result is an ordinary instruction checkpoint whose metadata says it was preference-tuned and from what, so the
app serves it with LLM_INSTRUCT_CHECKPOINT.

Data: the book's `instruction-data-with-preference.json` (1,100 records; the book's split in file order, 935 train /
55 validation / 110 test), or `--data` / $LLM_PREFERENCE_DATA, or the app's feedback (`python -m finetune.feedback
export` writes preferences.json in the same format; pass it with --data).
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from finetune.cli import DefaultsHelp, add_dtype_arg, cli_main, output_dir
from finetune.loop import LoopSettings, fit, start, write_history
from finetune.optim import adamw, autocast_dtype, warmup_cosine_schedule
from llm.argtypes import fraction, non_negative_int, positive_float, positive_int
from llm.checkpoint import CheckpointError, save_checkpoint
from llm.download import DownloadError
from llm.instruct import IGNORE_INDEX, InstructionDataError, collate, local_or_download, read_json_list, split_entries
from llm.prompt import format_prompt, template_metadata
from llm.tokenizer import TokenizerError

DATA_ENV = "LLM_PREFERENCE_DATA"
# Pinned to the commit that last changed the file (its sha256 is checked after the download).
DATA_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/99af403b9f64dd0f820173402f5a56af41263536/ch07/"
            "04_preference-tuning-with-dpo/instruction-data-with-preference.json")
DATA_SHA256 = "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e"
FIELDS = ("instruction", "input", "chosen", "rejected")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def fetch_preferences(path: str | None, data_dir: str = "data/instruction") -> Path:
    return local_or_download(path, DATA_ENV, DATA_URL, data_dir, "preference data", sha256=DATA_SHA256)


def read_preferences(path: str | Path) -> list[dict]:
    """Records with non-empty instruction, chosen and rejected strings (input may be empty); bad ones refused by index."""
    data = read_json_list(path, "{instruction, input, chosen, rejected}")
    good, bad = [], []
    for i, e in enumerate(data):
        e = {**e, "input": e.get("input", "")} if isinstance(e, dict) else None
        # A record whose chosen and rejected are the same is kept: its loss is constant (no gradient), and dropping it
        # would move the book's 935/55/110 split.
        if e is None or any(not isinstance(e.get(f), str) for f in FIELDS) or not all(e[f].strip() for f in FIELDS if f != "input"):
            bad.append(i)
        else:
            good.append({f: e[f] for f in FIELDS} | ({"output": e["output"]} if isinstance(e.get("output"), str) else {}))
    if bad:
        print(f"skipped {len(bad)} record(s) without instruction/chosen/rejected strings: "
              f"{', '.join(map(str, bad[:10]))}", file=sys.stderr)
    if not good:
        raise InstructionDataError(f"{path} has no usable preference records")
    return good


@dataclass
class Pair:
    chosen: list[int]  # prompt + chosen response tokens
    rejected: list[int]  # prompt + rejected response tokens
    prompt_len: int


def encode_pair(tokenizer, record: dict) -> Pair:
    prompt = tokenizer.encode(format_prompt(record["instruction"], record.get("input", "")))
    return Pair(prompt + tokenizer.encode(record["chosen"]), prompt + tokenizer.encode(record["rejected"]), len(prompt))


def collate_pairs(pairs: Sequence[Pair], eot_id: int, max_length: int):
    """((x, y) chosen, (x, y) rejected), prompts masked with -100 like SFT."""
    from llm.instruct import Example
    c = collate([Example(p.chosen, p.prompt_len) for p in pairs], eot_id, mask_prompt=True, max_length=max_length)
    r = collate([Example(p.rejected, p.prompt_len) for p in pairs], eot_id, mask_prompt=True, max_length=max_length)
    return c, r


# ---------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------

def sequence_logprobs(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean log-probability of each row's target tokens (those not -100). The LM head runs only where a
    target counts, as in SFT's loss."""
    keep = y != IGNORE_INDEX
    lp = F.log_softmax(model.lm_head(model.hidden_states(x)[keep]).float(), dim=-1)
    picked = lp.gather(-1, y[keep].unsqueeze(-1)).squeeze(-1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(x.shape[0], device=x.device, dtype=picked.dtype).index_add(0, rows, picked)
    return sums / keep.sum(1).clamp(min=1)


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen reward, rejected reward); rewards are log pi - log ref, detached, before beta."""
    logits = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
    return -F.logsigmoid(beta * logits), (pi_chosen - ref_chosen).detach(), (pi_rejected - ref_rejected).detach()


class DPOTrainer:
    """The shared loop's trainer for DPO: batches of pairs, the DPO loss against a frozen reference."""

    def __init__(self, reference, train: list[Pair], val: list[Pair], *, beta: float, batch_size: int, grad_accum: int,
                 eot_id: int, max_length: int, device, rng: random.Random, nll_weight: float = 0.0):
        self.reference, self.train, self.val, self.beta, self.nll_weight = reference, train, val, beta, nll_weight
        self.batch_size, self.grad_accum, self.eot_id, self.max_length = batch_size, grad_accum, eot_id, max_length
        self.device, self.rng = device, rng

    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // (self.batch_size * self.grad_accum))

    def epoch_steps(self, epoch: int) -> list[list[list[Pair]]]:
        order = list(range(len(self.train)))
        self.rng.shuffle(order)
        micro = [[self.train[j] for j in order[i:i + self.batch_size]] for i in range(0, len(order), self.batch_size)]
        return [micro[k:k + self.grad_accum] for k in range(0, len(micro), self.grad_accum)]

    def units(self, batch) -> int:
        return len(batch)

    def _terms(self, model, batch):
        (xc, yc), (xr, yr) = collate_pairs(batch, self.eot_id, self.max_length)
        xc, yc, xr, yr = xc.to(self.device), yc.to(self.device), xr.to(self.device), yr.to(self.device)
        with torch.no_grad():
            ref_c, ref_r = sequence_logprobs(self.reference, xc, yc), sequence_logprobs(self.reference, xr, yr)
        pi_c = sequence_logprobs(model, xc, yc)
        losses, chosen, rejected = dpo_loss(pi_c, sequence_logprobs(model, xr, yr), ref_c, ref_r, self.beta)
        if self.nll_weight:  # + the chosen response's mean token NLL: preference without forgetting how to answer
            losses = losses - self.nll_weight * pi_c
        return losses, chosen, rejected

    def loss(self, model, batch, total_units):
        losses, chosen, rejected = self._terms(model, batch)
        stats = {"loss": losses.sum().item(), "chosen": chosen.sum().item(), "rejected": rejected.sum().item(), "n": len(batch)}
        return losses.sum() / total_units, stats

    @staticmethod
    def _metrics(prefix: str, s: dict) -> dict[str, float]:
        n = max(s["n"], 1)
        return {f"{prefix}_loss": s["loss"] / n, f"{prefix}_chosen_reward": s["chosen"] / n,
                f"{prefix}_rejected_reward": s["rejected"] / n, f"{prefix}_reward_margin": (s["chosen"] - s["rejected"]) / n}

    def train_metrics(self, stats):
        return self._metrics("train", stats)

    @torch.no_grad()
    def validate(self, model):
        was = model.training
        model.eval()
        total = {"loss": 0.0, "chosen": 0.0, "rejected": 0.0, "n": 0}
        for i in range(0, len(self.val), self.batch_size):
            batch = self.val[i:i + self.batch_size]
            losses, chosen, rejected = self._terms(model, batch)
            for k, v in (("loss", losses), ("chosen", chosen), ("rejected", rejected)):
                total[k] += v.sum().item()
            total["n"] += len(batch)
        model.train(was)
        return self._metrics("val", total)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def train(args) -> dict:
    from llm.checkpoint import read_config
    from llm.instruct import CREATE_HINT, check_template, checkpoint_path
    from llm.weights import load_model

    device, rng, tok = start(args)
    src = fetch_preferences(args.data)
    splits = split_entries(read_preferences(src))
    train_pairs = [encode_pair(tok, r) for r in splits["train"][:args.limit or None]]
    val_pairs = [encode_pair(tok, r) for r in splits["val"]]
    base = str(checkpoint_path(args.base))
    base_config = read_config(Path(base), CREATE_HINT)
    check_template(base_config, base)  # an instruction checkpoint, of our prompt template
    policy, _ = load_model(base, "cpu", "fp32", task="lm",
                                hint="Pass --base an instruction checkpoint (python -m finetune.instruct train --out checkpoints/instruct).")
    reference = copy.deepcopy(policy).eval().requires_grad_(False)  # the frozen starting point
    if args.lora_rank:
        from llm.lora import apply_lora
        apply_lora(policy, rank=args.lora_rank, alpha=args.lora_alpha)
    policy.to(device).train()
    reference.to(device)
    params = [p for p in policy.parameters() if p.requires_grad]
    trainer = DPOTrainer(reference, train_pairs, val_pairs, beta=args.beta, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, eot_id=tok.eot_id, max_length=min(args.max_length, policy.config.n_positions),
                         device=device, rng=rng, nll_weight=args.nll_weight)
    total = trainer.steps_per_epoch() * args.epochs
    opt = adamw(params, device, lr=args.lr, weight_decay=args.weight_decay)
    sched = warmup_cosine_schedule(opt, total, min(args.warmup, total // 10), args.min_lr_ratio)
    amp = autocast_dtype(args.dtype, device)
    print(f"DPO from {base}: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters "
          f"({'LoRA r=%d' % args.lora_rank if args.lora_rank else 'full'}), {len(train_pairs)} train / {len(val_pairs)} "
          f"validation pairs from {src}, beta {args.beta}, NLL weight {args.nll_weight}, lr {args.lr}, {args.epochs} epoch(s) x {trainer.steps_per_epoch()} "
          f"steps, batch {args.batch_size}x{args.grad_accum}, device {device}, autocast {amp or 'off'}", file=sys.stderr)
    settings = LoopSettings(epochs=args.epochs, eval_every=args.eval_every, patience=args.patience,
                            max_minutes=args.max_minutes, average=args.average, validate_at_start=True)
    result = fit(policy, trainer, settings, opt, sched, device=device, total_steps=total, amp_dtype=amp)
    policy.load_state_dict(result.best_state)
    policy = policy.cpu()
    if args.lora_rank:
        from llm.lora import merge_lora
        merge_lora(policy)
    out = Path(args.out)
    train_config = {k: v for k, v in vars(args).items() if k != "func"}
    metadata = {"prompt_template": template_metadata(), "base": base,
                "conversations": base_config.get("metadata", {}).get("conversations"),
                "preference_tuned": {"method": "dpo", "from": base, "beta": args.beta, "nll_weight": args.nll_weight,
                                     "data": str(src),
                                     "train_pairs": len(train_pairs), "val_pairs": len(val_pairs)},
                "train_config": train_config, "best": result.best, "steps": result.steps,
                "train_seconds": round(result.seconds, 1), "stopped": result.stopped}
    save_checkpoint(policy.eval(), out, metadata=metadata)
    plots = write_history(result, out, "DPO", {("train_reward_margin", "val_reward_margin"): "reward_margin",
                                               ("val_chosen_reward", "val_rejected_reward"): "rewards"})
    b = result.best
    print(f"{result.steps} steps in {result.seconds / 60:.1f} min ({result.stopped}); best validation at step {b['step']}: "
          f"loss {b['val_loss']:.4f}, reward margin {b['val_reward_margin']:.3f} (chosen {b['val_chosen_reward']:.3f}, "
          f"rejected {b['val_rejected_reward']:.3f}) -> {out}; plots {', '.join(str(p) for p in plots)}")
    return metadata


# ---------------------------------------------------------------------------------------------
# eval: closer to the chosen responses than to the rejected ones?
# ---------------------------------------------------------------------------------------------

def responses(checkpoint: str, records: list[dict], args) -> list[str]:
    from llm.generate import settings_from_args
    from llm.instruct import InstructionModel
    from llm.prompt import STOP_STRINGS
    im = InstructionModel.load(checkpoint, args.device, args.precision, args.bpe_dir)
    return im.respond_batch(records, settings_from_args(args, stop_strings=STOP_STRINGS), batch_size=args.batch_size,
                            progress=True)


def preference_scores(records: list[dict], answers: list[str]) -> dict:
    from finetune.instruct_eval import rouge_l_f1
    n = len(records)
    to_chosen = [rouge_l_f1(a, r["chosen"]) for a, r in zip(answers, records)]
    to_rejected = [rouge_l_f1(a, r["rejected"]) for a, r in zip(answers, records)]
    to_output = [rouge_l_f1(a, r["output"]) for a, r in zip(answers, records) if "output" in r]
    return {"rouge_l_to_chosen": sum(to_chosen) / n, "rouge_l_to_rejected": sum(to_rejected) / n,
            "preference_margin": (sum(to_chosen) - sum(to_rejected)) / n,
            "closer_to_chosen": sum(c > r for c, r in zip(to_chosen, to_rejected)),
            "rouge_l_to_reference": sum(to_output) / len(to_output) if to_output else None}


def cmd_eval(args) -> int:
    records = split_entries(read_preferences(fetch_preferences(args.data)))[args.split][:args.limit or None]
    t0 = time.time()
    answers = {name: responses(ckpt, records, args) for name, ckpt in (("sft", args.sft), ("dpo", args.dpo))}
    table = {name: preference_scores(records, a) for name, a in answers.items()}
    examples = [{"instruction": r["instruction"], "input": r["input"], "chosen": r["chosen"], "rejected": r["rejected"],
                 "sft": answers["sft"][i], "dpo": answers["dpo"][i]}
                for i, r in enumerate(records) if answers["sft"][i].strip() != answers["dpo"][i].strip()][:args.examples]
    result = {"split": args.split, "items": len(records), "sft": args.sft, "dpo": args.dpo, "scores": table, "examples": examples,
              "seconds": round(time.time() - t0, 1)}
    out = Path(args.out or Path(args.dpo) / f"preference_eval{'' if args.split == 'test' else '_' + args.split}.json")
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"{'model':5s} {'ROUGE-L to chosen':>18s} {'to rejected':>12s} {'margin':>8s} {'closer to chosen':>17s} {'to reference':>13s}")
    for name, s in table.items():
        ref = "-" if s["rouge_l_to_reference"] is None else f"{s['rouge_l_to_reference']:.4f}"
        print(f"{name:5s} {s['rouge_l_to_chosen']:18.4f} {s['rouge_l_to_rejected']:12.4f} {s['preference_margin']:8.4f} "
              f"{s['closer_to_chosen']:>10d}/{len(records):<6d} {ref:>13s}")
    print(f"{len(examples)} examples where the two differ, and every score -> {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from llm.generate import add_generation_args, add_runtime_args
    p = argparse.ArgumentParser(prog="python -m finetune.dpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="preference-tune an instruction checkpoint with DPO", formatter_class=DefaultsHelp)
    t.add_argument("--base", default=None, help="the instruction checkpoint to start from and to stay near "
                                                "(default: $LLM_INSTRUCT_CHECKPOINT or checkpoints/instruct)")
    t.add_argument("--data", default=None, help=f"preference records JSON (default: ${DATA_ENV}, else the book's file, downloaded)")
    t.add_argument("--out", type=output_dir, default="checkpoints/instruct-dpo", help="where the preference-tuned checkpoint goes")
    t.add_argument("--beta", type=float, default=0.2,
                   help="the DPO temperature (the book uses 0.1; on gpt2-mini 0.2 widened the validation reward margin "
                        "past 0.5 while validation ROUGE-L stayed within 0.02 of SFT's, see the README)")
    t.add_argument("--nll-weight", type=float, default=0.2,
                   help="add this times the chosen response's token NLL to the loss (DPO + SFT on the chosen answers, "
                        "as in RPO, Pang et al. 2024): keeps answers fluent while preferences move; 0 = plain DPO")
    t.add_argument("--epochs", type=positive_int, default=1)
    t.add_argument("--lr", type=positive_float, default=1e-5,
                   help="peak AdamW learning rate (the book uses 5e-6 on GPT-2 355M; on gpt2-mini it left the validation "
                        "reward margin at 0.50 after one epoch, 1e-5 moves it further)")
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--warmup", type=non_negative_int, default=10, help="linear warm-up steps (at most a tenth of all steps)")
    t.add_argument("--min-lr-ratio", type=fraction, default=1.0, help="cosine decay to this fraction of --lr (1 = constant, as the book)")
    t.add_argument("--batch-size", type=positive_int, default=8)
    t.add_argument("--grad-accum", type=positive_int, default=1)
    t.add_argument("--max-length", type=positive_int, default=256, help="cap on tokens per sequence")
    t.add_argument("--lora-rank", type=non_negative_int, default=0, help="LoRA rank; 0 = full fine-tune; the saved checkpoint is merged")
    t.add_argument("--lora-alpha", type=positive_float, default=32.0)
    t.add_argument("--average", type=float, default=0.0, help="validate and keep a moving average of the weights (0 = off)")
    t.add_argument("--eval-every", type=positive_int, default=20, help="validation every N optimizer steps")
    t.add_argument("--patience", type=non_negative_int, default=0, help="early stop after N validations without improvement (0 = never)")
    t.add_argument("--max-minutes", type=positive_float, default=None, help="stop after this long (the best weights are kept)")
    t.add_argument("--limit", type=positive_int, default=None, help="use only the first N training pairs")
    t.add_argument("--seed", type=int, default=123)
    t.add_argument("--threads", type=positive_int, default=None)
    t.add_argument("--device", default=None, help="cuda, mps or cpu (default: $LLM_DEVICE, else the best available)")
    t.add_argument("--bpe-dir", default=None, help="folder with GPT-2's encoder.json + vocab.bpe (default: $LLM_BPE_DIR)")
    add_dtype_arg(t)
    t.set_defaults(func=train)
    e = sub.add_parser("eval", help="test responses of the SFT and the DPO model: ROUGE-L to chosen vs rejected")
    e.add_argument("--sft", default="checkpoints/instruct", help="the starting checkpoint (default: %(default)s)")
    e.add_argument("--dpo", default="checkpoints/instruct-dpo", help="the preference-tuned one (default: %(default)s)")
    e.add_argument("--data", default=None, help=f"preference records JSON (default: ${DATA_ENV}, else the book's file)")
    e.add_argument("--split", default="test", choices=("test", "val"),
                   help="the 110 test items (report) or the 55 validation items (to choose settings; default: %(default)s)")
    e.add_argument("--limit", type=positive_int, default=None, help="only the first N items")
    e.add_argument("--examples", type=non_negative_int, default=5, help="before/after examples kept in the JSON (default: %(default)s)")
    e.add_argument("--out", default=None, help="results JSON (default: DPO/preference_eval.json)")
    e.add_argument("--batch-size", type=positive_int, default=16)
    e.add_argument("--threads", type=positive_int, default=None)
    add_generation_args(e, max_new_tokens=160)
    add_runtime_args(e)
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(build_parser(), argv, (CheckpointError, DownloadError, TokenizerError, InstructionDataError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
