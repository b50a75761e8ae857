"""The one training loop every trainer runs on (spam, instruct, DPO; pretrain next).

A trainer supplies what is its own: the model, the batches of each epoch, the loss of a micro-batch, how it
validates and which validation is better. The loop owns the rest, the same way for all of them: the optimizer
steps with gradient accumulation and clipping, the schedule, autocast, the weight average, periodic validation,
the best weights, early stopping, the time cap, the progress bar, the history and the plots.

    result = fit(model, trainer, LoopSettings(...), optimizer, scheduler, device=device)

The contract of a trainer (duck-typed, see `Trainer`):
  epoch_steps(epoch)            -> optimizer steps of that epoch, each a list of micro-batches
  units(batch)                  -> how much a micro-batch weighs in its step's mean (examples, or target tokens)
  loss(model, batch, total)     -> (this micro-batch's share of the step's mean loss, stats to sum)
  train_metrics(summed stats)   -> what the history records for the steps since the last validation
  validate(model)               -> {metric: value}, always with "val_loss"
  score(metrics)                -> optional: a value to maximise (a tuple compares element by element);
                                   without it, the lowest validation loss is the best
Optional hooks, for step-indexed training (pretraining): before_step(step) (learning rate, dropout seed),
micro_context(k, n) (a context around micro-batch k of n's forward and backward: DDP's no_sync),
reduce_loss(value) (the step's loss averaged over processes), after_step(step, loss, grad_norm, validated)
(logging, samples, checkpoints).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from finetune.optim import WeightAverage, autocast


LOSS_CEILING = 1e4  # a mean cross-entropy (or DPO) loss above this is an explosion, not learning (ln 50257 = 10.8)


class TrainingDiverged(ValueError):
    """The loss (or a validation metric) stopped being a finite number, or exploded past LOSS_CEILING: raised before
    anything is saved, so a diverged run never replaces a good checkpoint."""

    def __init__(self, what: str):
        super().__init__(f"{what}: training diverged, so nothing was saved. Lower --lr (or check the settings "
                         "that changed) and run again.")


class NothingLearned(ValueError):
    """A fine-tune whose validation never beat the weights it started from (step 0): saving would only copy them."""

    def __init__(self, best: str):
        super().__init__(f"no validation after step 0 beat the weights training started from ({best}), so nothing "
                         "was saved. Train for longer (--epochs, --max-minutes) or change --lr, and run again.")


class Trainer(Protocol):
    def epoch_steps(self, epoch: int) -> list[list[Any]]: ...
    def units(self, batch: Any) -> int: ...
    def loss(self, model: torch.nn.Module, batch: Any, total_units: int) -> tuple[torch.Tensor, dict[str, float]]: ...
    def train_metrics(self, stats: dict[str, float]) -> dict[str, float]: ...
    def validate(self, model: torch.nn.Module) -> dict[str, float]: ...


@dataclass
class LoopSettings:
    epochs: int
    eval_every: int  # optimizer steps between validations (and always after the last step)
    patience: int = 0  # stop after this many validations without improvement; 0 = never
    max_minutes: float | None = None  # stop (validating first) once training has run this long
    clip: float = 1.0  # gradient norm clipping
    average: float = 0.0  # validate and keep an exponential moving average of the weights with this decay; 0 = off
    validate_at_start: bool = False  # a validation before the first step (the curve starts at the base model)
    start_step: int = 0  # a resumed run continues its step count (and total_steps counts from 0)
    stop_after: int | None = None  # leave after this many steps of this call (a time-boxed job that resumes later)
    keep_best: bool = True  # keep a copy of the best validation's weights (pretraining keeps the latest instead)
    progress: bool = True


@dataclass
class LoopResult:
    best_state: dict[str, torch.Tensor] | None  # the kept weights (cpu) at the best validation; None without keep_best
    best: dict[str, Any]  # {"step", "epoch", **metrics} of the best validation
    steps: int
    seconds: float
    stopped: str  # "done", "early stop", "time limit"
    history: dict[str, list] = field(default_factory=dict)


def start(args):
    """What every trainer does first: seed torch (initial weights, adapters, dropout), return (device, the batch
    order's random.Random, the tokenizer) for args.seed, args.device and args.bpe_dir."""
    import random

    from llm.device import pick_device
    from llm.tokenizer import get_tokenizer
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    return pick_device(args.device), rng, get_tokenizer(args.bpe_dir)


def fit(model: torch.nn.Module, trainer: Trainer, settings: LoopSettings, optimizer: torch.optim.Optimizer,
        scheduler, *, device: torch.device, total_steps: int, amp_dtype: torch.dtype | None = None,
        log=tqdm.write, average: WeightAverage | None = None) -> LoopResult:
    """Train `model` with `trainer` for settings.epochs (total_steps optimizer steps in all: the trainer knows how
    many without drawing its batches, which would move its random order). `average`: the weight average to update
    and validate, for a caller that saves or resumes it (pretraining); by default one is made from settings.average."""
    params = [p for p in model.parameters() if p.requires_grad]
    if average is None and settings.average:
        average = WeightAverage(model, settings.average)
    kept = average.model if average else model  # what is validated and kept
    history: dict[str, list] = {"step": [], "train_loss": [], "val_step": []}
    best: dict[str, Any] = {"step": 0, "epoch": 0}
    best_state, best_score, bad, step, stopped = None, None, 0, settings.start_step, "done"
    # the trainer's optional parts, looked up once (see the module doc)
    score_of = getattr(trainer, "score", lambda metrics: -metrics["val_loss"])
    micro_context = getattr(trainer, "micro_context", lambda k, n: nullcontext())
    before_step, reduce_loss, after_step = (getattr(trainer, name, None)
                                            for name in ("before_step", "reduce_loss", "after_step"))
    stats: dict[str, float] = {}

    def validation(at_step: int, epoch: int) -> bool:
        nonlocal best_state, best_score, bad, stats
        metrics = trainer.validate(kept)
        if not all(math.isfinite(v) and not ("loss" in k and v > LOSS_CEILING)
                   for k, v in metrics.items() if isinstance(v, (int, float))):
            raise TrainingDiverged(f"validation at step {at_step} gave {metrics}")
        train = trainer.train_metrics(stats) if stats else {}
        stats = {}
        history["val_step"].append(at_step)
        if train:  # the mean over the steps since the last validation, at this step
            history.setdefault("train_metrics_step", []).append(at_step)
        for k, v in {**train, **metrics}.items():
            history.setdefault(k if k != "train_loss" else "train_loss_mean", []).append(v)
        score = score_of(metrics)
        improved = best_score is None or score > best_score
        shown = "  ".join(f"{k} {v:.4f}" for k, v in {**train, **metrics}.items())
        log(f"step {at_step:5d}  {shown}{'  (best)' if improved else ''}")
        if improved:
            best_score, bad = score, 0
            best.update(step=at_step, epoch=epoch, **metrics)
            if settings.keep_best:
                best_state = {k: t.detach().cpu().clone() for k, t in kept.state_dict().items()}
        else:
            bad += 1
        return improved

    total = total_steps
    t0 = time.perf_counter()
    if settings.validate_at_start:
        validation(0, 0)
    bar = tqdm(total=total, initial=step, desc="train", unit="step", leave=False, disable=not settings.progress)
    for epoch in range(settings.epochs):
        for group in trainer.epoch_steps(epoch):
            if settings.stop_after is not None and step - settings.start_step >= settings.stop_after:
                stopped = "stop after"
                break
            model.train()
            if before_step:
                before_step(step)
            total_units = sum(trainer.units(b) for b in group)
            loss_value = 0.0
            for k, batch in enumerate(group):  # the step's loss is the unit-weighted mean over its micro-batches
                with micro_context(k, len(group)):
                    with autocast(device, amp_dtype):
                        loss, s = trainer.loss(model, batch, total_units)
                    loss.backward()
                loss_value += loss.item()
                for name, v in s.items():
                    stats[name] = stats.get(name, 0.0) + v
            if reduce_loss:
                loss_value = reduce_loss(loss_value)
            if not math.isfinite(loss_value) or loss_value > LOSS_CEILING:
                raise TrainingDiverged(f"the training loss became {loss_value:.4g} at step {step + 1}")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.clip) if settings.clip else None
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average:
                average.update()
            step += 1
            history["step"].append(step)
            history["train_loss"].append(loss_value)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}")
            out_of_time = bool(settings.max_minutes) and time.perf_counter() - t0 > settings.max_minutes * 60
            validated = step % settings.eval_every == 0 or step == total or out_of_time
            if validated:
                validation(step, epoch + 1)
            if after_step:
                after_step(step, loss_value, grad_norm, validated)
            if validated:
                if settings.patience and bad >= settings.patience:
                    stopped = "early stop"
                    log(f"early stop: validation has not improved for {bad} evaluations")
                    break
            if out_of_time:
                stopped = "time limit"
                log(f"time limit: stopping after {settings.max_minutes} min at step {step}")
                break
        if stopped != "done":
            break
    bar.close()
    if settings.validate_at_start and settings.keep_best and step > settings.start_step and best["step"] == 0:
        raise NothingLearned(", ".join(f"{k} {v:.4g}" for k, v in best.items() if k not in ("step", "epoch")))
    return LoopResult(best_state, best, step, time.perf_counter() - t0, stopped, history)


def write_history(result: LoopResult, out: Path, title: str, extra_plots: dict[str, str] | None = None) -> list[Path]:
    """history.json, loss.png (train per step, validation), and one PNG per extra validation metric
    ({history key: file stem}, e.g. {"val_acc": "accuracy"}). Returns the files written."""
    from finetune.plots import plot_curves
    h = result.history
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(h) + "\n")
    series = {"train": (h["step"], h["train_loss"])}
    if h.get("val_loss"):
        series["validation"] = (h["val_step"], h["val_loss"])
    files = [plot_curves(series, out / "loss.png", title=f"{title}: loss", xlabel="optimizer step")]
    for key, stem in (extra_plots or {}).items():
        curves = {k.replace("_", " "): (h["train_metrics_step" if k.startswith("train_") else "val_step"], h[k])
                  for k in ([key] if isinstance(key, str) else key) if h.get(k)}
        if curves:
            files.append(plot_curves(curves, out / f"{stem}.png", title=f"{title}: {stem.replace('_', ' ')}",
                                     xlabel="optimizer step", ylabel=stem.replace("_", " ")))
    return files
