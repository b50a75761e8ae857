"""Why bf16 decoding on a Hopper GPU can be 20x slower than fp32: PyTorch's cuDNN attention backend.

    python benchmarks/sdpa_decode_check.py [--out FILE]

For fp16/bf16 on sm90, F.scaled_dot_product_attention prefers cuDNN's fused attention, which builds
(and caches) a cuDNN graph per input shape. Decoding changes the key length every step, so every step
of every layer meets a new shape. This times the bare model (random gpt2-mini-shaped GPT, one KV cache,
no scheduler) decoding 32 steps, in bf16 and fp32, with the cuDNN backend allowed and not, and then the
same 32 shapes a second time (cached graphs) to separate graph building from running.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm.config import GPTConfig  # noqa: E402
from llm.model import GPT  # noqa: E402


def decode_ms(model, batch: int, past: int, steps: int) -> float:
    """ms per decode step over `steps` steps starting after a `past`-token prefill."""
    dev = model.lm_head.weight.device
    with torch.inference_mode():
        cache = model.new_cache(batch, past + steps + 1)
        model(torch.randint(0, 50000, (batch, past), device=dev), cache=cache, last_only=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model(torch.randint(0, 50000, (batch, 1), device=dev), cache=cache, last_only=True)
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    p.add_argument("--steps", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    base = GPT(GPTConfig(n_layer=10, n_head=8, n_embd=512, n_positions=1024)).cuda().eval()
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        model = base.to(dtype)
        for cudnn in (True, False):
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            for batch in (1, 64):
                past = 100  # (batch, dtype) pairs are new here, so the first pass meets new shapes
                first = decode_ms(model, batch, past, args.steps)
                again = decode_ms(model, batch, past, args.steps)  # the same shapes: graphs cached
                rows.append({"dtype": str(dtype).removeprefix("torch."), "cudnn_sdpa": cudnn, "batch": batch,
                             "ms_per_step_new_shapes": round(first, 2), "ms_per_step_same_shapes_again": round(again, 2)})
                print(json.dumps(rows[-1]), flush=True)
    torch.backends.cuda.enable_cudnn_sdp(True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": args.steps, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
