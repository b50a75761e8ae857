"""Fine-tune GPT-2 into an SMS spam classifier, evaluate it, and classify messages.

    python -m finetune.spam prepare [--sms-data PATH]          # data/sms_spam/{natural,balanced}/*.csv
    python -m finetune.spam train --base gpt2 --out checkpoints/spam [--target-precision P | --threshold T]
    python -m finetune.spam calibrate --checkpoint checkpoints/spam   # refit the temperature, no retraining
    python -m finetune.spam eval --checkpoint checkpoints/spam  # both test sets + TF-IDF baseline + calibration
        [--challenge PATH | --no-challenge] [--robustness]    # + the held-out finetune/data/sms_challenge_6.csv
                                                                # + accuracy under finetune/robustness.py rewrites
    python -m finetune.spam predict [--json] "text" ... | --file messages.csv|tsv|txt

After training, a temperature T is fitted on the validation set (minimum NLL of softmax(logits / T)) and the
operating threshold is chosen on the calibrated validation probabilities; both go into the checkpoint's
metadata, which `llm.spam.SpamClassifier` applies.

The model is the GPT-2 backbone with a 2-class head on the last real token (`llm.model.GPTClassifier`).
The data, the batching and the classifier the app calls live in `llm/spam.py`. This module trains; the other
commands live beside it: finetune/spam_data.py (prepare, the synthetic and extra training rows),
finetune/spam_eval.py (eval), finetune/calibration.py (calibrate), finetune/spam_predict.py (predict).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from finetune.calibration import calibrate_checkpoint
from finetune.cli import DefaultsHelp, add_dtype_arg, cli_main, output_dir
from finetune.loop import LoopSettings, fit, start, write_history
from finetune.optim import adamw, autocast_dtype, length_grouped_batches, warmup_cosine_schedule
from finetune.sms_synth import TRAIN_NOISE_PROBABILITY, noisy
from finetune.spam_data import DATA_DIR, authored_rows, prepare, read_labelled, synthetic_rows, validation_rows
from finetune.spam_eval import CHALLENGE_FILE, clf_path_default, run_eval
from finetune.spam_predict import predict
from llm.argtypes import checked, fraction, non_negative_int, positive_float, positive_int
from llm.checkpoint import CheckpointError, save_checkpoint
from llm.download import DownloadError
from llm.generate import add_runtime_args
from llm.model import GPTClassifier
from llm.spam import LABELS, SPAM_THRESHOLD, SpamDataError, collate, encode, read_split, valid_threshold
from llm.tokenizer import TokenizerError

# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

# How often each UCI training message counts per epoch beside the messages of today. More protects the natural test
# set (2010's texts), less favours today's messages; 2 was chosen on both (README, spam results: the recipes tried).
UCI_REPEAT = 2


def classifier_from_base(base: str, num_classes: int = 2, dropout: float | None = None) -> GPTClassifier:
    from llm.weights import load_model

    # task="lm": the base is a language model; another classifier's head would not fit ours.
    lm, _ = load_model(base, "cpu", "fp32", hint="Pass --base PRESET|DIR or set LLM_BASE.", task="lm")
    config = lm.config if dropout is None else dataclasses.replace(lm.config, dropout=dropout)
    model = GPTClassifier(config, num_classes)
    missing, unexpected = model.load_state_dict(lm.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("score.") for k in missing), (missing, unexpected)
    return model


def select_trainable(model: GPTClassifier, train: str, last_blocks: int, lora_rank: int, lora_alpha: float) -> int:
    """Freeze all but what `train` names: head | last (N blocks + final norm + head) | all | lora."""
    if train == "lora":
        from llm.lora import apply_lora
        apply_lora(model, rank=lora_rank, alpha=lora_alpha)
        for p in list(model.score.parameters()) + list(model.ln_f.parameters()):
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(train == "all")
        parts = [model.score]
        if train == "last":
            parts += [model.ln_f, *model.h[len(model.h) - last_blocks:]]
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def evaluate(model, seqs, labels, pad_id, max_length, device, batch_size=32) -> tuple[float, float, list[float]]:
    """(mean loss, accuracy at SPAM_THRESHOLD, p_spam per message)."""
    was_training = model.training
    model.eval()
    total, probs = 0.0, [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda j: len(seqs[j]))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, mask = collate([seqs[j] for j in idx], pad_id, max_length)
        y = torch.tensor([labels[j] for j in idx], device=device)
        logits = model(ids.to(device), attention_mask=mask.to(device)).float()
        total += F.cross_entropy(logits, y, reduction="sum").item()
        for j, p in zip(idx, torch.softmax(logits, -1)[:, 1].tolist()):
            probs[j] = p
    model.train(was_training)
    acc = sum((p >= SPAM_THRESHOLD) == bool(y) for p, y in zip(probs, labels)) / len(labels)
    return total / len(labels), acc, probs


class SpamTrainer:
    """The shared loop's trainer for the classifier: each epoch restyles a fresh random share of the messages
    (finetune/sms_synth.py NOISES), then batches them by length; validation accuracy decides, then loss."""

    def __init__(self, tok, train_rows, val_seqs, y_val, *, batch_size: int, max_length: int, noise: float,
                 noise_rng: random.Random, rng: random.Random, device):
        self.tok, self.texts = tok, [t for _, t in train_rows]
        self.y = [LABELS.index(lab) for lab, _ in train_rows]
        self.val_seqs, self.y_val, self.batch_size, self.max_length = val_seqs, y_val, batch_size, max_length
        self.noise, self.noise_rng, self.rng, self.device = noise, noise_rng, rng, device

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.texts) / self.batch_size)

    def epoch_steps(self, epoch: int):
        seqs = [self.tok.encode(noisy(t, self.noise_rng, self.noise))[:self.max_length] for t in self.texts]
        for idx in length_grouped_batches([len(q) for q in seqs], self.batch_size, self.rng):  # the order, drawn at once
            ids, mask = collate([seqs[j] for j in idx], self.tok.eot_id, self.max_length)  # one step's batch at a time
            yield [(ids, mask, torch.tensor([self.y[j] for j in idx]))]

    def units(self, batch) -> int:
        return len(batch[2])

    def loss(self, model, batch, total_units):
        ids, mask, y = (t.to(self.device) for t in batch)
        logits = model(ids, attention_mask=mask)
        loss = F.cross_entropy(logits, y)
        stats = {"loss": loss.item() * len(y), "correct": (logits.argmax(-1) == y).sum().item(), "n": len(y)}
        return loss, stats  # one micro-batch per step: its mean is the step's

    def train_metrics(self, stats):
        return {"train_loss": stats["loss"] / stats["n"], "train_acc": stats["correct"] / stats["n"]}

    def validate(self, model):
        loss, acc, _ = evaluate(model, self.val_seqs, self.y_val, self.tok.eot_id, self.max_length, self.device)
        return {"val_loss": loss, "val_acc": acc}

    def score(self, metrics):
        return metrics["val_acc"], -metrics["val_loss"]


def train(args) -> dict:
    from llm.weights import resolve_base

    device, rng, tok = start(args)
    data_dir = Path(args.data_dir) / args.split_set
    parts = {"UCI": read_split(data_dir / "train.csv") * args.uci_repeat,
             "synthetic": synthetic_rows(args.synthetic, args.seed),
             "authored": authored_rows("train") if args.authored else [],
             "extra": [row for path in args.extra_train or () for row in read_labelled(path)]}
    train_rows = [row for rows in parts.values() for row in rows]
    # what decides the validation mix, recorded in the metadata so that `calibrate` rebuilds it (possibly elsewhere)
    data_settings = {"synthetic_per_category": args.synthetic, "seed": args.seed, "authored": args.authored,
                     "extra_validation": [str(Path(p).resolve()) for p in args.extra_validation or ()] or None}
    val_rows = validation_for(data_dir, data_settings)
    base = resolve_base(args.base)
    model = classifier_from_base(base, dropout=args.dropout)
    context = model.config.n_positions
    max_length = min(args.max_length or max(len(tok.encode(t)) for _, t in train_rows), context)
    val_seqs = [encode(tok, t, max_length) for _, t in val_rows]
    y_val = [LABELS.index(lab) for lab, _ in val_rows]
    n_trainable = select_trainable(model, args.train, args.last_blocks, args.lora_rank, args.lora_alpha)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, device, lr=args.lr, weight_decay=args.weight_decay)
    trainer = SpamTrainer(tok, train_rows, val_seqs, y_val, batch_size=args.batch_size, max_length=max_length,
                          noise=args.noise, noise_rng=random.Random(args.seed + 2), rng=rng, device=device)
    total_steps = trainer.steps_per_epoch() * args.epochs
    sched = warmup_cosine_schedule(opt, total_steps, round(args.warmup * total_steps), args.min_lr_ratio)
    out = Path(args.out)
    metadata = {"labels": list(LABELS), "max_length": max_length, "base": str(base),
                "threshold": SPAM_THRESHOLD if args.threshold is None else args.threshold,
                "train": args.train, "last_blocks": args.last_blocks if args.train == "last" else None,
                "split_set": args.split_set, "lr": args.lr, "batch_size": args.batch_size, "epochs": args.epochs,
                "average": args.average, "dtype": args.dtype, "extra_train": args.extra_train,
                "uci_repeat": args.uci_repeat, "noise": args.noise, **data_settings}
    amp_dtype = autocast_dtype(args.dtype, device)
    print(f"base {base}; training {args.train} ({n_trainable / 1e6:.2f}M of {model.num_parameters() / 1e6:.1f}M parameters); "
          f"{len(train_rows)} train messages ({', '.join(f'{len(rows)} {name}' for name, rows in parts.items() if rows)}; "
          f"UCI from {data_dir} x {args.uci_repeat}) / {len(val_seqs)} validation; noise {args.noise}; max length "
          f"{max_length} tokens; device {device}; "
          f"autocast {amp_dtype or 'off'}")
    settings = LoopSettings(epochs=args.epochs, eval_every=args.eval_every, patience=args.patience, average=args.average)
    result = fit(model, trainer, settings, opt, sched, device=device, total_steps=total_steps, amp_dtype=amp_dtype)
    model.load_state_dict(result.best_state)  # the best validation's weights (the average's, with --average)
    best = result.best
    if args.train == "lora":
        from llm.lora import merge_lora
        merge_lora(model)
    save_checkpoint(model, out, metadata={**metadata, "best_step": best["step"], "val_acc": best["val_acc"],
                                          "val_loss": best["val_loss"]})
    calibration = calibrate_checkpoint(out, val_rows, target_precision=args.target_precision, threshold=args.threshold,
                                       device=device, bpe_dir=args.bpe_dir)
    metadata = {**metadata, **calibration}
    write_history(result, out, "SMS spam", {("train_acc", "val_acc"): "accuracy"})
    metrics = {"best": best, "steps": result.steps, "train_seconds": round(result.seconds, 1), "stopped": result.stopped,
               "threads": torch.get_num_threads(), "trainable_parameters": n_trainable, "config": metadata,
               "history": result.history}
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"done in {result.seconds:.0f} s ({result.steps} steps, {result.stopped}); best validation accuracy "
          f"{best['val_acc']:.4f} at step {best['step']}; checkpoint {out}, curves {out / 'loss.png'}, {out / 'accuracy.png'}")
    return metrics


def validation_for(data_dir: Path, meta: dict) -> list[tuple[str, str]]:
    """The validation mix a checkpoint is chosen and calibrated on, from the data settings its metadata records
    (`train` writes them, `calibrate` reads them back)."""
    return validation_rows(data_dir, meta.get("synthetic_per_category") or 0, meta.get("seed", 123),
                           bool(meta.get("authored")), meta.get("extra_validation") or ())


def run_calibrate(args) -> dict:
    from llm.checkpoint import read_config
    from llm.spam import CREATE_HINT
    ckpt = Path(args.checkpoint or clf_path_default())
    meta = read_config(ckpt, CREATE_HINT).get("metadata", {})
    split_set = args.split_set or meta.get("split_set") or "natural"
    rows = validation_for(Path(args.data_dir) / split_set, meta)
    return calibrate_checkpoint(ckpt, rows, target_precision=args.target_precision, threshold=args.threshold,
                                device=args.device, bpe_dir=args.bpe_dir)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

threshold_arg = checked(float, valid_threshold, "a threshold is a number strictly between 0 and 1")
precision_arg = checked(float, lambda v: 0 < v <= 1, "a target precision is a number in (0, 1]")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune.spam", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    pr = sub.add_parser("prepare", help="get the UCI SMS Spam Collection, deduplicate, write both split sets")
    pr.set_defaults(func=lambda a: prepare(a.sms_data, a.data_dir))
    pr.add_argument("--sms-data", default=None, help="local SMSSpamCollection file or the UCI zip (default: $LLM_SPAM_DATA, else download)")
    pr.add_argument("--data-dir", default=DATA_DIR, help=f"where the splits go (default {DATA_DIR})")

    tr = sub.add_parser("train", help="fine-tune a GPT-2 base into the classifier",
                        formatter_class=DefaultsHelp)
    tr.set_defaults(func=train)
    tr.add_argument("--base", default=None, help="preset or checkpoint directory (default: $LLM_BASE, else gpt2)")
    tr.add_argument("--data-dir", default=DATA_DIR, help="folder written by `prepare`")
    tr.add_argument("--split-set", default="natural", choices=("natural", "balanced"), help="which split set trains")
    tr.add_argument("--out", type=output_dir, default="checkpoints/spam", help="checkpoint directory (best validation model)")
    tr.add_argument("--train", default="all", choices=("head", "last", "all", "lora"),
                    help="what trains: the head only, the last N blocks + final norm + head, everything, or LoRA adapters")
    tr.add_argument("--last-blocks", type=non_negative_int, default=2, help="N for --train last")
    tr.add_argument("--lora-rank", type=positive_int, default=8, help="adapter rank for --train lora")
    tr.add_argument("--lora-alpha", type=positive_float, default=16.0, help="adapter scale (alpha / rank) numerator for --train lora")
    tr.add_argument("--epochs", type=positive_int, default=2, help="passes over the training messages")
    tr.add_argument("--batch-size", type=positive_int, default=8, help="messages per optimizer step")
    tr.add_argument("--lr", type=positive_float, default=5e-5, help="peak AdamW learning rate")
    tr.add_argument("--warmup", type=fraction, default=0.05, help="linear warmup, as a fraction of all steps")
    tr.add_argument("--min-lr-ratio", type=fraction, default=0.1,
                    help="the cosine decay's final learning rate, as a fraction of --lr (1 = constant)")
    tr.add_argument("--dropout", type=float, default=None, help="dropout while fine-tuning (default: the base's)")
    tr.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    tr.add_argument("--average", type=float, default=0.99,
                    help="validate and save an exponential moving average of the weights with this decay (0 = off: the live weights)")
    tr.add_argument("--synthetic", type=non_negative_int, default=40, metavar="N",
                    help="add N messages of today's kinds per category (finetune/sms_synth.py: 7 spam, 9 ham categories) "
                         "to training, and N/5 to validation; 0 = none")
    tr.add_argument("--authored", action=argparse.BooleanOptionalAction, default=True,
                    help="add the messages of today written by eight independent authors (finetune/data/sms_authored.csv): "
                         "their train part to training, their validation part to validation")
    tr.add_argument("--uci-repeat", type=positive_int, default=UCI_REPEAT, metavar="N",
                    help="each UCI training message appears N times per epoch: more keeps the natural (2010) test "
                         "set's accuracy beside the messages of today, less favours today's")
    tr.add_argument("--extra-train", action="append", default=None, metavar="CSV",
                    help="more labelled messages (columns label,text; repeatable), e.g. the spam corrections "
                         "users made in the app: python -m finetune.feedback export")
    tr.add_argument("--extra-validation", action="append", default=None, metavar="CSV",
                    help="more labelled messages for validation (columns label,text; repeatable): the best checkpoint, "
                         "the temperature and the threshold are chosen on them too")
    tr.add_argument("--noise", type=fraction, default=TRAIN_NOISE_PROBABILITY, metavar="P",
                    help="each epoch, restyle each training message with probability P (upper/lower case, leetspeak, "
                         "ragged whitespace, modern links and numbers; finetune/sms_synth.py NOISES)")
    add_dtype_arg(tr)
    tr.add_argument("--max-length", type=positive_int, default=None, help="tokens per message (default: the longest training message, capped by the context)")
    tr.add_argument("--eval-every", type=positive_int, default=100, help="steps between validation passes")
    tr.add_argument("--patience", type=non_negative_int, default=0,
                    help="stop after this many validation passes without improvement; 0 = train the whole schedule "
                         "(the default: with 4, training stopped inside the first epoch on a noisy validation accuracy "
                         "and today's messages lost 1-3 points; see the README)")
    tr.add_argument("--seed", type=int, default=123, help="for the head's initialisation and the batch order")
    tr.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--device", default=None, help="cuda, mps or cpu (default: $LLM_DEVICE, else the best available)")
    tr.add_argument("--bpe-dir", default=None, help="folder with GPT-2's encoder.json + vocab.bpe (default: $LLM_BPE_DIR)")
    op = tr.add_mutually_exclusive_group()
    op.add_argument("--target-precision", type=precision_arg, default=None, metavar="P",
                    help="store the lowest threshold whose (calibrated) validation precision is >= P "
                         f"(default: threshold {SPAM_THRESHOLD})")
    op.add_argument("--threshold", type=threshold_arg, default=None, metavar="T",
                    help=f"store this threshold on calibrated p_spam, 0 < T < 1 (default {SPAM_THRESHOLD})")

    ca = sub.add_parser("calibrate", help="fit the temperature of an existing checkpoint on the validation set "
                                          "(updates its config.json; no retraining)", formatter_class=DefaultsHelp)
    ca.set_defaults(func=run_calibrate)
    ca.add_argument("--checkpoint", default=None, help="classifier checkpoint (default: $LLM_SPAM_CHECKPOINT or checkpoints/spam)")
    ca.add_argument("--data-dir", default=DATA_DIR, help="folder written by `prepare`")
    ca.add_argument("--split-set", default=None, choices=("natural", "balanced"),
                    help="whose validation split (default: the one the checkpoint was trained on)")
    cop = ca.add_mutually_exclusive_group()
    cop.add_argument("--target-precision", type=precision_arg, default=None, metavar="P",
                     help="also reset the threshold: the lowest whose calibrated validation precision is >= P")
    cop.add_argument("--threshold", type=threshold_arg, default=None, metavar="T",
                     help="also reset the threshold to T (default: keep every decision of the stored threshold)")
    ca.add_argument("--device", default=None, help="cuda, mps or cpu (default: $LLM_DEVICE, else the best available)")
    ca.add_argument("--bpe-dir", default=None, help="folder with GPT-2's encoder.json + vocab.bpe (default: $LLM_BPE_DIR)")

    ev = sub.add_parser("eval", help="accuracy, precision, recall, F1 on both test sets, beside TF-IDF + logistic regression")
    ev.set_defaults(func=run_eval)
    ev.add_argument("--checkpoint", default=None, help="classifier checkpoint (default: $LLM_SPAM_CHECKPOINT or checkpoints/spam)")
    ev.add_argument("--data-dir", default=DATA_DIR, help="folder written by `prepare`")
    ev.add_argument("--out", default=None, help="where the metrics JSON and confusion PNGs go (default: the checkpoint directory)")
    ch = ev.add_mutually_exclusive_group()
    ch.add_argument("--challenge", default=str(CHALLENGE_FILE), metavar="PATH",
                    help="held-out challenge CSV (label,text,category): scores, ECE before/after, per-category accuracy, "
                         "misclassified messages, reliability_challenge.png (default: finetune/data/sms_challenge_6.csv, "
                         "the newest set written blind, to the issue's brief)")
    ch.add_argument("--no-challenge", action="store_true", help="skip the challenge set")
    ev.add_argument("--robustness", action="store_true",
                    help="also score the natural test set and the challenge set rewritten by each transform of "
                         "finetune/robustness.py (upper, lower, whitespace, leetspeak, modern, emoji): one more pass each")
    ev.add_argument("--threads", type=positive_int, default=None)
    add_runtime_args(ev)

    pd_ = sub.add_parser("predict", help="label and spam probability per message")
    pd_.set_defaults(func=predict)
    pd_.add_argument("texts", nargs="*", help="messages to classify")
    pd_.add_argument("--file", default=None,
                     help="a .csv or .tsv with a text/message/sms/... column (or one column), a `ham<TAB>message` file "
                          "(the UCI layout), or a .txt with one message per line: the app's rules, llm/messages_file.py")
    pd_.add_argument("--json", action="store_true", help="print a JSON list of {text, label, p_spam}")
    pd_.add_argument("--checkpoint", default=None, help="classifier checkpoint (default: $LLM_SPAM_CHECKPOINT or checkpoints/spam)")
    pd_.add_argument("--threshold", type=threshold_arg, default=None, metavar="T",
                     help="operating point for this run, 0 < T < 1 (default: the checkpoint's)")
    pd_.add_argument("--explain", action="store_true",
                     help="also list the words that move p_spam most (occlusion: one forward pass per message)")
    pd_.add_argument("--batch-size", type=positive_int, default=16)
    pd_.add_argument("--threads", type=positive_int, default=None)
    add_runtime_args(pd_)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(build_parser(), argv, (SpamDataError, CheckpointError, DownloadError, TokenizerError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
