"""Where the serving engine's time goes, at 1 and 16 concurrent streams: its steps, timed from inside.

    flock /tmp/cpu-heavy.lock python benchmarks/engine_profile.py [--precisions fp32 int8] [--clients 1 16]

The same load as benchmarks/serving.py (prompts of 20-200 tokens, --new-tokens greedy tokens, never stopped
early), with the engine's methods and the model's transform / LM head wrapped in timers. `_decode` holds the
decode step's transform and LM head; `_prefill` the prompt chunks' (and their first token's LM head).
Results: benchmarks/results/engine_profile.txt.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from llm.serving.engine import GenerationEngine  # noqa: E402
from llm.tokenizer import get_tokenizer  # noqa: E402
from llm.weights import load_model  # noqa: E402
from serving import LM, SHARED, EngineSystem, NoStop, make_prompts, run_in_own_thread, run_load, text_tokens  # noqa: E402

seconds, calls = collections.Counter(), collections.Counter()


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start
            calls[name] += 1
    return wrapper


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=str(SHARED / "models/gpt2-mini"))
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    p.add_argument("--requests", type=int, default=2, help="per client (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/engine_profile.txt"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("_iteration", "_prefill", "_decode", "_accept", "_classify_some", "_admit"):
        setattr(GenerationEngine, name, timed(name, getattr(GenerationEngine, name)))
    tokenizer = get_tokenizer()
    prompts = make_prompts(tokenizer, 256)

    count = functools.partial(text_tokens, tokenizer)
    lines = [f"Engine profile ({args.base}, {args.threads} threads, {args.new_tokens} new tokens, "
             f"{args.requests} requests per client, {torch.backends.cpu.get_cpu_capability()})"]
    for precision in args.precisions:
        model, _ = run_in_own_thread(load_model, args.base, "cpu", precision)
        model.transform = timed("model.transform", model.transform)
        model.lm_head.forward = timed("lm_head", model.lm_head.forward)
        system = EngineSystem(LM(model, NoStop(tokenizer)), max(args.clients))
        asyncio.run(run_load(system, prompts, 1, 2, 16, count))  # warm-up
        for clients in args.clients:
            seconds.clear()
            calls.clear()
            row = asyncio.run(run_load(system, prompts, clients, args.requests, args.new_tokens, count))
            lines.append(f"\n{precision}, {clients} clients: {row['aggregate_tok_s']} tok/s, {calls['_decode']} decode steps")
            lines += [f"  {name:16s} {s:7.3f} s  {calls[name]:6d} calls  {s / max(calls[name], 1) * 1e3:8.3f} ms/call"
                      for name, s in seconds.most_common()]
        system.close()
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
