"""Pretrain a GPT-2 of any shape from plain text, on one device or many (torchrun + DDP).

One GPU:
    python -m finetune.pretrain --data corpus/*.txt --out checkpoints/pretrain --shape 10/8/512/1024
N GPUs on one machine (same script; each rank samples its own blocks, rank 0 logs and saves):
    torchrun --standalone --nproc_per_node=N -m finetune.pretrain --data corpus/*.txt --out checkpoints/pretrain

The output directory is a project checkpoint (config.json + model.safetensors), usable as `--base`
by the spam and instruction fine-tunes. Beside it, `resume/` holds everything needed to continue
after a kill (weights, AdamW moments, step, loss history); running the same command again resumes.
No pickle: tensors are safetensors, the rest JSON.

Reproducibility: the blocks of a step and the dropout seed are pure functions of (--seed, step,
micro-batch), so the data position and RNG state of a run are its step number (see
`llm.pretrain_data`). A resumed run continues exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from finetune.cli import DefaultsHelp, add_dtype_arg, output_dir, run_command
from finetune.loop import LoopSettings, fit
from finetune.resume import find_resume, load_resume, save_resume
from finetune.optim import WeightAverage, adamw, autocast, autocast_dtype, warmup_cosine
from llm.argtypes import fraction, non_negative_int, positive_float, positive_int
from llm.checkpoint import CheckpointError, read_config, save_checkpoint
from llm.config import PRESETS, GPTConfig
from llm.generate import GenerationSettings, generate
from llm.model import GPT
from llm.pretrain_data import VAL_STREAM, TokenData, block_starts, build_token_cache
from llm.tokenizer import TokenizerError, get_tokenizer



# ----------------------------------------------------------------------------- configuration

def parse_shape(shape: str, context: int | None = None, dropout: float = 0.0) -> GPTConfig:
    """A preset name (gpt2, gpt2-medium, ...) or `n_layer/n_head/n_embd/context`, e.g. 10/8/512/1024."""
    if shape in PRESETS:
        cfg = PRESETS[shape].to_dict()
    else:
        try:
            n_layer, n_head, n_embd, n_pos = (int(v) for v in shape.split("/"))
        except ValueError:
            raise ValueError(f"--shape {shape!r}: use a preset ({', '.join(PRESETS)}) or n_layer/n_head/n_embd/context") from None
        cfg = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_pos)
    if context:
        cfg["n_positions"] = context
    cfg["dropout"] = dropout
    return GPTConfig.from_dict(cfg)


def lr_at(step: int, args) -> float:
    """Linear warmup to --lr, then cosine decay to --min-lr at --max-steps."""
    return args.lr * warmup_cosine(step, args.max_steps, args.warmup_steps, args.min_lr / args.lr if args.lr else 0.0)


def make_optimizer(model: GPT, args, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only, not on biases and LayerNorm."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, device, lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8)


class LMLoss(nn.Module):
    """Next-token cross-entropy of a model, autocast included: the unit DDP wraps and torch.compile
    compiles, so the fp32 upcast of the logits and the softmax fuse with the LM head."""

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.model, self.amp_dtype = model, amp_dtype

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.amp_dtype):
            logits = self.model(x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


# ----------------------------------------------------------------------------- distributed helpers

def setup_distributed(device_flag: str | None) -> tuple[int, int, int, torch.device]:
    """(rank, local_rank, world_size, device); initialises the process group under torchrun."""
    if "RANK" not in os.environ:
        from llm.device import pick_device
        return 0, 0, 1, pick_device(device_flag)
    rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available() and (device_flag or "cuda").startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, local_rank, world, device


def all_mean(value: float, device: torch.device, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / world


# ----------------------------------------------------------------------------- training

class PretrainTrainer:
    """The shared loop's trainer for pretraining: one endless epoch whose step s reads the blocks that (seed, s,
    micro-batch) name, so the data position of a run is its step number and a resumed run continues exactly."""

    def __init__(self, model, opt, data, args, device, rank, world, amp_dtype, train_loss, fwd, tokenizer, history, log,
                 save, *, start_step: int, tokens_per_step: int, master: bool):
        self.model, self.opt, self.data, self.args, self.device = model, opt, data, args, device
        self.rank, self.world, self.amp_dtype, self.train_loss, self.fwd = rank, world, amp_dtype, train_loss, fwd
        self.tokenizer, self.history, self.log, self.save, self.master = tokenizer, history, log, save, master
        self.step, self.start_step, self.tokens_per_step = start_step, start_step, tokens_per_step
        self.T, self.t0, self.last_loss, self.lr = model.config.n_positions, time.perf_counter(), float("nan"), 0.0

    def _to_dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t.to(self.device)

    def epoch_steps(self, epoch: int):
        a = self.args
        for step in range(self.start_step, a.max_steps):
            yield [self.data.batch("train", block_starts(len(self.data.train), self.T, a.batch_size, a.seed, step,
                                                         self.rank * a.grad_accum + k), self.T) for k in range(a.grad_accum)]

    def units(self, batch) -> int:
        return 1  # every micro-batch has the same tokens: the step's loss is their mean

    def before_step(self, step: int) -> None:
        self.lr = lr_at(step, self.args)
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        torch.manual_seed(self.args.seed * 1_000_003 + step * 1_009 + self.rank)  # dropout RNG: a function of the step

    def micro_context(self, k: int, n: int):
        return contextlib.nullcontext() if (self.world == 1 or k == n - 1) else self.fwd.no_sync()

    def loss(self, model, batch, total_units):
        x, y = batch
        return self.train_loss(self._to_dev(x), self._to_dev(y)) / total_units, {}

    def reduce_loss(self, value: float) -> float:
        return all_mean(value, self.device, self.world)

    def train_metrics(self, stats):
        return {}

    @torch.no_grad()
    def validate(self, model) -> dict:
        a = self.args
        model.eval()
        total = 0.0
        for k in range(self.rank, a.eval_iters, self.world):
            x, y = self.data.batch("val", block_starts(len(self.data.val), self.T, a.batch_size, a.seed, VAL_STREAM, k), self.T)
            total += LMLoss(model, self.amp_dtype)(self._to_dev(x), self._to_dev(y)).item()
        model.train()
        if self.world > 1:
            t = torch.tensor([total], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            total = t.item()
        self.last_val = total / a.eval_iters
        return {"val_loss": self.last_val}

    def after_step(self, step: int, loss: float, grad_norm, validated: bool) -> None:
        a = self.args
        self.step, self.last_loss = step, loss
        self.history["train"].append((step, loss))
        done = step == a.max_steps
        if validated:
            val = self.last_val
            self.history["val"].append((step, val))
            elapsed = time.perf_counter() - self.t0
            self.log(f"step {step}/{a.max_steps} | train {loss:.4f} | val {val:.4f} | lr {self.lr:.2e} | "
                     f"grad-norm {float(grad_norm) if grad_norm is not None else float('nan'):.2f} | "
                     f"{(step - self.start_step) * self.tokens_per_step / elapsed:,.0f} tok/s")
        if self.master and a.sample_every and (step % a.sample_every == 0 or done):
            self.sample(step)
        if step % a.save_every == 0 or done:
            self.save()

    def sample(self, step: int) -> None:
        self.model.eval()
        for i, prompt in enumerate(self.args.sample_prompt or [""]):
            s = GenerationSettings(max_new_tokens=min(self.args.sample_tokens, self.T - 1), temperature=0.8, top_k=50,
                                   seed=self.args.seed + i)
            self.log(f"sample {step} | {prompt!r} -> {generate(self.model, self.tokenizer, prompt, s).text!r}")
        self.model.train()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m finetune.pretrain",
        description="Pretrain a GPT-2 from plain text (one device, or many with torchrun). "
                    "Re-running the same command resumes from --out.",
        formatter_class=DefaultsHelp)
    g = p.add_argument_group("data and output")
    g.add_argument("--data", nargs="+", required=True, help="plain-text files; documents separated by <|endoftext|> or blank lines")
    g.add_argument("--out", type=output_dir, required=True, help="output checkpoint directory (resume state lives in OUT/resume/)")
    g.add_argument("--cache-dir", default=None, help="where the uint16 token cache goes (default: OUT/tokens)")
    g.add_argument("--val-fraction", type=fraction, default=0.01, help="fraction of the tokens held out for validation")
    g.add_argument("--bpe-dir", default=None, help="folder with GPT-2's encoder.json + vocab.bpe for offline use (default: $LLM_BPE_DIR)")
    g = p.add_argument_group("model")
    g.add_argument("--shape", default="gpt2", help=f"preset ({', '.join(PRESETS)}) or n_layer/n_head/n_embd/context, e.g. 10/8/512/1024")
    g.add_argument("--context", type=int, default=None, help="override the context length of --shape")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout probability while training")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, default=8, help="micro-batch per device (sequences)")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step on each device")
    g.add_argument("--max-steps", type=positive_int, default=5000, help="optimizer steps in total")
    g.add_argument("--lr", type=positive_float, default=6e-4, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=None, help="final learning rate of the cosine (default: lr/10)")
    g.add_argument("--warmup-steps", type=non_negative_int, default=100, help="steps of linear learning-rate warmup")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices and embeddings only)")
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm (0 = off)")
    g.add_argument("--seed", type=int, default=1337, help="seeds the initial weights, the blocks sampled and dropout")
    g.add_argument("--average", type=float, default=0.0, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights with this decay, e.g. 0.999 "
                        "(0 = off; the live weights and the average both resume)")
    g = p.add_argument_group("evaluation and checkpoints")
    g.add_argument("--eval-every", type=positive_int, default=250, help="steps between validation losses (and checkpoints)")
    g.add_argument("--eval-iters", type=positive_int, default=20, help="validation micro-batches per evaluation")
    g.add_argument("--save-every", type=positive_int, default=None, help="steps between checkpoints (default: --eval-every)")
    g.add_argument("--sample-every", type=int, default=None, help="steps between sample generations (default: --eval-every; 0 = never)")
    g.add_argument("--sample-prompt", action="append", default=None, help="prompt for the samples (repeatable; default: start of a document)")
    g.add_argument("--sample-tokens", type=int, default=48, help="tokens per sample generation")
    g.add_argument("--fresh", action="store_true", help="ignore OUT/resume and start from step 0")
    g.add_argument("--stop-after", type=int, default=None, help="leave after this many steps of this invocation (a time-boxed job; re-run to continue)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: $LLM_DEVICE, else the best available); torchrun uses cuda:LOCAL_RANK")
    add_dtype_arg(g)
    g.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction, help="torch.compile the model (default: on for CUDA, off elsewhere)")
    g.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def train(args) -> dict:
    """Run (or resume) pretraining; returns a summary dict. Called by `main` and by the tests."""
    if args.threads:
        torch.set_num_threads(args.threads)
    args.min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    args.save_every = args.save_every or args.eval_every
    args.sample_every = args.eval_every if args.sample_every is None else args.sample_every
    rank, _, world, device = setup_distributed(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for whatever autocast leaves in fp32
    master = rank == 0
    out = Path(args.out)
    progress = master and not args.no_progress

    def log(msg: str) -> None:
        if master:
            tqdm.write(msg) if progress else print(msg, flush=True)
            with open(out / "log.txt", "a") as fh:
                fh.write(msg + "\n")

    try:
        tokenizer = get_tokenizer(args.bpe_dir)
        cache = Path(args.cache_dir) if args.cache_dir else out / "tokens"
        if master:
            out.mkdir(parents=True, exist_ok=True)
            build_token_cache(args.data, cache, tokenizer, args.val_fraction, progress=progress)
        if world > 1:
            dist.barrier()
        data = TokenData.open(cache)

        resume_dir = None if args.fresh else find_resume(out)
        if resume_dir is not None:
            config = GPTConfig.from_dict(read_config(resume_dir)["model"])
        else:
            config = parse_shape(args.shape, args.context, args.dropout)
        if config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"vocab_size {config.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
        T = config.n_positions
        data.check_fits(T)

        torch.manual_seed(args.seed)  # same initial weights on every rank
        model = GPT(config).to(device)
        opt = make_optimizer(model, args, device)
        average = WeightAverage(model, args.average) if args.average else None
        step, history = 0, {"train": [], "val": []}
        if resume_dir is not None:
            state = load_resume(resume_dir, model, opt, average)
            step, history = state["step"], state["history"]
            if state["seed"] != args.seed:
                log(f"note: resuming with --seed {args.seed}, the run began with {state['seed']}")
            log(f"resumed from {resume_dir} at step {step} (shape {config.n_layer}/{config.n_head}/{config.n_embd}/{T} "
                "from the checkpoint; --shape is ignored when resuming, --fresh starts over)")
        elif master and (out / "log.txt").exists():
            (out / "log.txt").unlink()

        amp_dtype = autocast_dtype(args.dtype, device)
        use_compile = args.compile if args.compile is not None else device.type == "cuda"
        fwd: nn.Module = LMLoss(model, amp_dtype)
        if world > 1:
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None)
        train_loss = torch.compile(fwd) if use_compile else fwd

        tokens_per_step = args.batch_size * T * args.grad_accum * world
        log(f"model: {model.num_parameters() / 1e6:.1f}M parameters, shape {config.n_layer}/{config.n_head}/{config.n_embd}/{T}; "
            f"data: {len(data.train):,} train / {len(data.val):,} val tokens; "
            f"{tokens_per_step:,} tokens per step ({world} x {args.grad_accum} x {args.batch_size} x {T}); "
            f"device {device}, autocast {amp_dtype or 'off'}, compile {'on' if use_compile else 'off'}")

        def save() -> None:
            if master:
                meta = {"pretrain": {"step": trainer.step, "tokens_seen": trainer.step * tokens_per_step,
                                     "val_loss": history["val"][-1][1] if history["val"] else None,
                                     "data": [str(f) for f in args.data], "average": args.average or None}}
                save_checkpoint(average.model if average else model, out, metadata=meta)  # what validation measured
                save_resume(out, model, opt, {"step": trainer.step, "seed": args.seed, "history": history,
                                              "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, type(None)))}},
                            average)
                if history["train"]:
                    from finetune.plots import plot_curves
                    series = {"train": tuple(map(list, zip(*history["train"])))}
                    if history["val"]:
                        series["validation"] = tuple(map(list, zip(*history["val"])))
                    plot_curves(series, out / "loss.png", title="pretraining loss")
            if world > 1:
                dist.barrier()

        trainer = PretrainTrainer(model, opt, data, args, device, rank, world, amp_dtype, train_loss, fwd, tokenizer,
                                  history, log, save, start_step=step, tokens_per_step=tokens_per_step, master=master)
        settings = LoopSettings(epochs=1, eval_every=args.eval_every, clip=args.grad_clip, start_step=step,
                                stop_after=args.stop_after, keep_best=False, progress=progress)
        start_step = step
        model.train()
        result = fit(model, trainer, settings, opt, None, device=device, total_steps=args.max_steps, log=lambda m: None,
                     average=average)
        step, last_loss = result.steps, trainer.last_loss
        if step > start_step and step % args.save_every and step != args.max_steps:
            save()  # a --stop-after exit keeps its progress
        summary = {"step": step, "train_loss": last_loss,
                   "val_loss": history["val"][-1][1] if history["val"] else None, "out": str(out)}
        if master and step == args.max_steps:
            log(f"done: {json.dumps(summary)}")
        return summary
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv), train, (CheckpointError, TokenizerError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
