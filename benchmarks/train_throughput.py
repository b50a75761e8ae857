"""Training throughput: our GPT vs transformers' GPT2LMHeadModel, same shape, same batch, one run.

GPU (the issue's set-up: gpt2-mini shape 10/8/512/1024, micro-batch 32, bf16 autocast, torch.compile,
fused AdamW):
    python benchmarks/train_throughput.py --mode gpu
CPU variant (fp32, no compile, a smaller micro-batch and context so it runs in a few minutes):
    flock /tmp/cpu-heavy.lock python benchmarks/train_throughput.py --mode cpu

Both models get the identical training step: forward, cross-entropy over all positions, backward,
AdamW (weight decay 0.1, betas 0.9/0.95), on the same random token batches; the peer runs
with `use_cache=False` (training needs no KV cache). The step is finetune.pretrain's: its `LMLoss`
(autocast forward + cross-entropy) is the unit torch.compile compiles, for both models. Steps are timed in
alternating rounds (ours, peer, ours, peer, ...) so drift in machine load hits both; the median
round counts. Reports tokens/s for each, the ratio ours/peer, and our MFU: model FLOPs
(6 * parameters + 12 * layers * context * width per token, as in nanoGPT/PaLM) over the device's
peak (GPU: the datasheet dense bf16 peak; CPU: a measured fp32 matmul peak, said so in the JSON).
`--profile PATH` then runs a few more steps of each model under torch.profiler and writes the top kernels
(by self device time on a GPU) as a text table (`--profile-below R`: only when the ratio is under R).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finetune.optim import adamw  # noqa: E402
from finetune.pretrain import LMLoss  # noqa: E402
from llm.config import GPTConfig  # noqa: E402
from llm.model import GPT  # noqa: E402

# Dense (non-sparse) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}
MODES = {
    "gpu": dict(batch_size=32, context=1024, dtype="bf16", compile=True, steps=20, rounds=3, warmup=5),
    "cpu": dict(batch_size=4, context=256, dtype="fp32", compile=False, steps=2, rounds=6, warmup=1),
}


def hf_model(cfg: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function=cfg.activation_function, layer_norm_epsilon=cfg.layer_norm_epsilon)
    hf_cfg._attn_implementation = "sdpa"  # the fused attention kernel, as ours uses
    return GPT2LMHeadModel(hf_cfg)


def flops_per_token(model: GPT) -> float:
    c = model.config
    n = model.num_parameters() - model.wpe.weight.numel()  # position lookup costs no matmul
    return 6 * n + 12 * c.n_layer * c.n_positions * c.n_embd


def measured_matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10, trials: int = 5) -> float:
    """Best of `trials` timings of `reps` square matmuls: the attainable peak (noise only lowers it)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class HFLogits(torch.nn.Module):
    """transformers' model as a plain ids -> logits module (no KV cache: training needs none)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x):
        return self.hf(input_ids=x, use_cache=False).logits


def make_step(model, opt, autocast_dtype, compile_: bool):
    """The training step of finetune.pretrain: compiled (autocast forward + cross-entropy), backward,
    clipping, AdamW."""
    loss_fn = LMLoss(model, autocast_dtype)
    fwd = torch.compile(loss_fn) if compile_ else loss_fn

    def step(x, y):
        loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def profile_steps(runners, batches, device, steps: int, path: Path) -> None:
    """The top operators/kernels of `steps` more steps of each runner, as torch.profiler tables."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    sections = []
    for name, step in runners.items():
        sync(device)
        t = time.perf_counter()
        with profile(activities=acts) as prof:
            for i in range(steps):
                step(*batches[i % len(batches)])
            sync(device)
        wall = time.perf_counter() - t
        sections.append(f"== {name}: {steps} steps, {wall * 1e3 / steps:.1f} ms/step under the profiler, sorted by {key} ==\n"
                        + prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(sections) + "\n")
    print(f"wrote {path}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=list(MODES), default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", default="10/8/512/1024", help="n_layer/n_head/n_embd/context (gpt2-mini)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--context", type=int, default=None, help="override the context of --shape (CPU mode: 256)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None)
    p.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction)
    p.add_argument("--steps", type=int, default=None, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation happens here)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/train_throughput_<mode>.json)")
    p.add_argument("--profile", default=None, help="write a torch.profiler table of each model's step here")
    p.add_argument("--profile-below", type=float, default=None, help="profile only if the ratio ours/peer is under this")
    p.add_argument("--profile-steps", type=int, default=3)
    args = p.parse_args()
    o = {**MODES[args.mode], **{k: v for k, v in vars(args).items() if v is not None and k in MODES["gpu"]}}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.mode == "gpu" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--mode gpu needs CUDA; use --mode cpu")
    n_layer, n_head, n_embd, ctx = (int(v) for v in args.shape.split("/"))
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=o["context"] or ctx)
    B, T = o["batch_size"], cfg.n_positions
    amp = torch.bfloat16 if o["dtype"] == "bf16" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # CPU: the peak is measured before and after the timed rounds and the best kept.
    cpu_peak = measured_matmul_peak(device, torch.float32) if device.type == "cpu" else 0.0
    torch.manual_seed(0)
    ours = GPT(cfg).to(device).train()
    peer = hf_model(cfg).to(device).train()
    n_ours = ours.num_parameters()
    n_peer = sum(p.numel() for p in peer.parameters())
    runners = {}
    for name, model in (("ours", ours), ("transformers", HFLogits(peer))):
        opt = adamw(model.parameters(), device, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        runners[name] = make_step(model, opt, amp, o["compile"])

    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g) for _ in range(4)]
    batches = [(b[:, :-1].contiguous().to(device), b[:, 1:].contiguous().to(device)) for b in batches]

    losses = {}
    for name, step in runners.items():  # warm-up (and compilation)
        t = time.perf_counter()
        for i in range(o["warmup"]):
            losses[name] = float(step(*batches[i % len(batches)]))
        sync(device)
        print(f"{name}: warm-up {o['warmup']} steps in {time.perf_counter() - t:.1f}s, loss {losses[name]:.3f}", flush=True)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(o["rounds"]):
        for name, step in runners.items():
            sync(device)
            t = time.perf_counter()
            for i in range(o["steps"]):
                loss = step(*batches[i % len(batches)])
            sync(device)
            rates[name].append(o["steps"] * B * T / (time.perf_counter() - t))
            losses[name] = float(loss)
            print(f"round {r + 1}: {name} {rates[name][-1]:,.0f} tokens/s", flush=True)

    tps = {k: statistics.median(v) for k, v in rates.items()}
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name()
        peak = next((v for k, v in GPU_PEAK_BF16.items() if k in gpu), None)
        peak_source = f"datasheet dense bf16 peak of {gpu}" if peak else "unknown GPU: no datasheet peak"
        device_name = gpu
    else:
        peak = max(cpu_peak, measured_matmul_peak(device, torch.float32))
        peak_source = ("best measured fp32 2048x2048 matmul throughput of this CPU, before and after the runs "
                       "(torch threads: %d)" % torch.get_num_threads())
        device_name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    fpt = flops_per_token(ours)
    result = {
        "benchmark": "train_throughput", "mode": args.mode, "device": device_name,
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "shape": {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "context": T},
        "micro_batch": B, "dtype": o["dtype"], "autocast": amp is not None, "compile": o["compile"],
        "fused_adamw": device.type == "cuda", "steps_per_round": o["steps"], "rounds": o["rounds"], "warmup": o["warmup"],
        "params": {"ours": n_ours, "transformers": n_peer},
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "tokens_per_s_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_ours_over_transformers": round(tps["ours"] / tps["transformers"], 3),
        # each round's pair ran back to back: their ratio is less exposed to drifting machine load
        "ratio_per_round": [round(a / b, 3) for a, b in zip(rates["ours"], rates["transformers"])],
        "final_loss": {k: round(v, 4) for k, v in losses.items()},
        "flops_per_token": fpt, "peak_flops": peak, "peak_source": peak_source,
        "mfu_ours": round(tps["ours"] * fpt / peak, 4) if peak else None,
        "mfu_transformers": round(tps["transformers"] * fpt / peak, 4) if peak else None,
        "command": " ".join(sys.argv),
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"train_throughput_{args.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.profile and (args.profile_below is None or result["ratio_ours_over_transformers"] < args.profile_below):
        try:
            profile_steps(runners, batches, device, args.profile_steps, Path(args.profile))
            result["profile"] = args.profile
        except Exception as e:  # the numbers above stand without it
            result["profile_error"] = f"{type(e).__name__}: {e}"
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
