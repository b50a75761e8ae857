"""Serving throughput and latency: our continuous-batching engine vs one-at-a-time vs transformers, one run.

    flock /tmp/cpu-heavy.lock python benchmarks/serving.py [--base DIR] [--threads 2]

N concurrent streaming clients (N = 1, 4, 8, 16, 32), each sending --requests requests one after
another (a closed loop: the next request when the previous answer is complete); prompts of 20-200
tokens cut from the instruction data, --new-tokens (128) greedy tokens each, never stopped early.
Clients start at random moments within the first second (people do not all press Enter in the same
millisecond). Same weights (gpt2-mini when present), same thread count, in this one process:

  engine        llm.serving.engine.GenerationEngine (what the app and the API run), fp32 and int8
  one-at-a-time today's behaviour before the engine: one generation at a time (llm.generate.stream_text
                in a worker thread behind a semaphore of 1), the rest wait; fp32 and int8
  transformers  transformers' own continuous batching (ContinuousBatchingManager, benchmarks/serving_peers.py)
                on GPT2LMHeadModel, fp32

On a GPU (`--device cuda`, or the default `auto`: $LLM_DEVICE, else cuda when present) the same
systems run there; the engine's KV cache is sized for the largest N (`--kv-cache-mb`), and a failing
peer is recorded in the results' meta instead of ending the run (results are rewritten after each system).
    python benchmarks/serving.py --device cuda --systems engine transformers --precisions fp32 bf16 \
        --clients 1 16 64 256 --out benchmarks/results/serving_gpu

Torch work outside the system under test (loading, the bare-model bound, the peer's set-up) runs in threads that
end when it is done: a live thread that once ran torch ops keeps an OpenMP team, and libgomp then stops spinning
its workers between parallel ops, which slowed every system here by up to 1.8x (see llm.serving.registry.in_own_thread).

Reported per system and N: aggregate decode tokens/s (all tokens / wall time), per-stream tokens/s
(a request's tokens after its first / the time since its first), time to first token p50/p95, request
latency p95. Results: benchmarks/results/serving.{json,md,png}.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llm.device import pick_device  # noqa: E402
from llm.generate import GenerationSettings, stream_text  # noqa: E402
from llm.serving.engine import GenerationEngine  # noqa: E402
from llm.serving.kv import slot_bytes  # noqa: E402
from llm.serving.limits import EngineLimits  # noqa: E402
from llm.tokenizer import get_tokenizer  # noqa: E402
from llm.weights import load_model  # noqa: E402

SHARED = ROOT.parent / "shared"
if (SHARED / "data/gpt2").is_dir():  # offline tokenizer files beside the checkout
    os.environ.setdefault("LLM_BPE_DIR", str(SHARED / "data/gpt2"))
RESULTS = ROOT / "benchmarks" / "results"


class NoStop:
    """The tokenizer with <|endoftext|> switched off: every request decodes exactly --new-tokens."""

    def __init__(self, tokenizer):
        self._tok, self.eot_id = tokenizer, -1

    def __getattr__(self, name):
        return getattr(self._tok, name)


class LM:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer


def make_prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    """n prompts of 20-200 tokens: Alpaca-style prompts of the instruction data, cut to a random length."""
    from llm.prompt import format_prompt

    path = os.environ.get("LLM_INSTRUCTION_DATA") or SHARED / "data/instruction/instruction-data.json"
    entries = json.loads(Path(path).read_text()) if Path(path).is_file() else \
        [{"instruction": "Write a long story about a dragon and a knight.", "input": ""}]
    text = tokenizer.encode(" ".join(format_prompt(e["instruction"], e.get("input", "")) + e.get("output", "")
                                     for e in entries[:300]))
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(20, 200)
        start = rng.randrange(0, len(text) - length)
        out.append(text[start:start + length])
    return out


# ----------------------------------------------------------------------------- the systems: async stream(ids, n)
class EngineSystem:
    def __init__(self, lm, max_running: int, kv_cache_mb: int | None = None):
        # KV memory for max_running whole-context slots (at least the engine's default budget), unless told
        need = -(-max_running * slot_bytes(lm.model.config, lm.model.wte.weight.dtype) // 2**20)
        kv = kv_cache_mb or max(EngineLimits().kv_cache_mb, need)
        self.lm, self.engine = lm, GenerationEngine(EngineLimits(max_running=max_running, max_waiting=1024, kv_cache_mb=kv))

    async def stream(self, ids, new_tokens):
        async for piece in self.engine.stream(self.lm, ids, GenerationSettings(max_new_tokens=new_tokens)):
            yield piece

    def close(self):
        self.engine.close()


class OneAtATime:
    """One generation at a time in a worker thread (the old GenerationPool with max_generations=1)."""

    def __init__(self, lm):
        self.lm, self.sem, self.loop = lm, None, None

    async def stream(self, ids, new_tokens):
        if self.loop is not asyncio.get_running_loop():  # each load runs in its own event loop
            self.sem, self.loop = asyncio.Semaphore(1), asyncio.get_running_loop()
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        async with self.sem:
            def work():
                for piece in stream_text(self.lm.model, self.lm.tokenizer, ids, GenerationSettings(max_new_tokens=new_tokens)):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            threading.Thread(target=work, daemon=True).start()
            while (piece := await queue.get()) is not None:
                yield piece

    def close(self):
        pass


def run_in_own_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) in a thread that ends when it returns, so the main thread keeps no OpenMP team (the
    synchronous twin of the registry's `in_own_thread`, which the event loop awaits)."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def raw_decode_tok_s(model, batch: int, past: int = 200, steps: int = 20) -> float:
    """Tokens/s of the bare model decoding `batch` rows (one KV cache, no scheduler, no sampling): the bound
    any scheduler's aggregate decode rate stays under on this machine, for the batch it runs."""
    device = model.wte.weight.device  # (an int8 head has no float weight; its embedding says where)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        cache = model.new_cache(batch, past + steps + 5)
        model(torch.randint(0, 50000, (batch, past), device=device), cache=cache, last_only=True)
        model(torch.randint(0, 50000, (batch, 1), device=device), cache=cache, last_only=True)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            model(torch.randint(0, 50000, (batch, 1), device=device), cache=cache, last_only=True)
        sync()
        return batch * steps / (time.perf_counter() - start)


def text_tokens(tokenizer, pieces) -> int:
    """Tokens in a streamed answer's text pieces (how the engine's and one-at-a-time's output is counted)."""
    return len(tokenizer.encode("".join(pieces)))


# ----------------------------------------------------------------------------- the load
async def run_load(system, prompts, clients: int, requests: int, new_tokens: int, count_tokens) -> dict:
    rng = random.Random(clients)
    records = []
    t0 = time.perf_counter()

    async def client(c):
        await asyncio.sleep(rng.random())
        for r in range(requests):
            ids = prompts[(c * requests + r) % len(prompts)]
            start, first, pieces = time.perf_counter(), None, []
            async for piece in system.stream(ids, new_tokens):
                first = first or time.perf_counter()
                pieces.append(piece)
            end = time.perf_counter()
            records.append({"ttft": first - start, "latency": end - start, "tokens": count_tokens(pieces),
                            "decode_time": end - first})

    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in records)
    ttft = sorted(r["ttft"] for r in records)
    lat = sorted(r["latency"] for r in records)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"clients": clients, "requests": len(records), "tokens": tokens, "wall_s": round(wall, 2),
            "aggregate_tok_s": round(tokens / wall, 1),
            "per_stream_tok_s": round(statistics.mean((r["tokens"] - 1) / r["decode_time"] for r in records if r["decode_time"] > 0), 1),
            "ttft_p50_s": round(pct(ttft, 0.5), 3), "ttft_p95_s": round(pct(ttft, 0.95), 3),
            "latency_p95_s": round(pct(lat, 0.95), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=os.environ.get("LLM_TEST_BASE") or str(SHARED / "models/gpt2-mini"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    p.add_argument("--requests", type=int, default=4, help="requests per client, one after another (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--systems", nargs="+", default=["engine", "one-at-a-time", "transformers"],
                   choices=["engine", "one-at-a-time", "transformers"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "bf16", "int8"])
    p.add_argument("--out", default=str(RESULTS / "serving"), help="results prefix (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto = $LLM_DEVICE, else cuda if present, else cpu)")
    p.add_argument("--kv-cache-mb", type=int, default=None,
                   help="engine KV cache budget (default: enough for the largest --clients, at least the engine's 2048)")
    p.add_argument("--note", default="", help="a line for the results (e.g. that the weights are random)")
    p.add_argument("--no-cudnn-sdpa", action="store_true",
                   help="torch.backends.cuda.enable_cudnn_sdp(False): keep PyTorch's cuDNN attention out (it builds a "
                        "graph per new shape, and decoding meets a new key length every step; see sdpa_decode_check.py)")
    args = p.parse_args(argv)
    args.device = str(pick_device(args.device))
    if args.no_cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.set_num_threads(args.threads)
    tokenizer = get_tokenizer()
    no_stop = NoStop(tokenizer)
    prompts = make_prompts(tokenizer, 256)
    rows, bounds, errors = [], {}, []

    count_text = functools.partial(text_tokens, tokenizer)
    for system_name in args.systems:
        for precision in (["fp32"] if system_name == "transformers" else args.precisions):
            if system_name == "transformers":
                from serving_peers import TransformersContinuousBatching
                try:
                    peer = run_in_own_thread(TransformersContinuousBatching, args.base, threads=args.threads,
                                         max_batch=max(args.clients), device=args.device)
                except Exception as e:  # a peer that cannot start must not cost the engine's results
                    errors.append(f"transformers: {type(e).__name__}: {e}")
                    print(f"transformers peer failed to start: {e!r}", flush=True)
                    continue

                class Peer:  # token ids -> counted directly
                    async def stream(self, ids, n):
                        async for tok in peer.stream(ids, n):
                            yield tok
                system, count = Peer(), len
                closer = peer.close
            else:
                model, _ = run_in_own_thread(load_model, args.base, args.device, precision)
                lm = LM(model, no_stop)
                if system_name == "engine":
                    bounds[precision] = {n: round(run_in_own_thread(raw_decode_tok_s, model, n), 1) for n in args.clients}
                    print(f"bare model decode tok/s by batch ({precision}): {bounds[precision]}", flush=True)
                system = EngineSystem(lm, max(args.clients), args.kv_cache_mb) if system_name == "engine" else OneAtATime(lm)
                count, closer = count_text, system.close
            try:
                asyncio.run(run_load(system, prompts, 1, 2, 16, count))  # warm-up
                for clients in args.clients:
                    row = {"system": system_name, "precision": precision,
                           **asyncio.run(run_load(system, prompts, clients, args.requests, args.new_tokens, count))}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    write_results(rows, bounds, args, errors, quiet=True)  # what has run survives a later failure
            except Exception as e:
                if system_name != "transformers":
                    raise
                errors.append(f"transformers: {type(e).__name__}: {e}")
                print(f"transformers peer failed: {e!r}", flush=True)
            closer()
    write_results(rows, bounds, args, errors)
    return 0


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}"


def write_results(rows, bounds, args, errors=(), quiet: bool = False) -> None:
    rows = [dict(r) for r in rows]
    base1 = {(r["system"], r["precision"]): r["aggregate_tok_s"] for r in rows if r["clients"] == 1}
    peer = {r["clients"]: r["aggregate_tok_s"] for r in rows if r["system"] == "transformers"}
    for r in rows:
        r["vs_own_single_stream"] = round(r["aggregate_tok_s"] / base1[(r["system"], r["precision"])], 2) \
            if (r["system"], r["precision"]) in base1 else None
        r["vs_transformers"] = round(r["aggregate_tok_s"] / peer[r["clients"]], 2) if r["clients"] in peer else None
    meta = {"base": args.base, "threads": args.threads, "new_tokens": args.new_tokens,
            "requests_per_client": args.requests, "cpu": platform.processor() or platform.machine(),
            "device": args.device, "device_name": device_name(args.device), "note": args.note,
            "errors": list(errors), "command": " ".join(sys.argv), "cudnn_sdpa": not args.no_cudnn_sdpa,
            "bare_model_decode_tok_s": bounds,
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    where = (f"{meta['device_name']}" if args.device != "cpu" else
             f"{args.threads} threads, CPU capability {meta['cpu_capability']}")
    lines = [f"Serving benchmark ({meta['date']}, {args.base}, {where}, {args.new_tokens} new tokens, "
             f"{args.requests} requests per client)", "",
             "| system | precision | clients | aggregate tok/s | vs own 1 client | vs transformers | per-stream tok/s "
             "| TTFT p50 | TTFT p95 | latency p95 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['precision']} | {r['clients']} | {r['aggregate_tok_s']} | "
                     f"{r['vs_own_single_stream']}x | {r['vs_transformers'] or '—'}{'x' if r['vs_transformers'] else ''} | "
                     f"{r['per_stream_tok_s']} | {r['ttft_p50_s']} s | {r['ttft_p95_s']} s | {r['latency_p95_s']} s |")
    for precision, by_n in bounds.items():
        one = by_n.get(1) or next(iter(by_n.values()))
        lines += ["", f"Bare model decode ({precision}, one KV cache, no scheduler): " + ", ".join(
            f"batch {n}: {v} tok/s ({v / one:.2f}x batch 1)" for n, v in by_n.items())
            + ". The engine's aggregate rate stays under this bound; its ratios over 1 client cannot exceed these."]
    if args.note:
        lines += ["", args.note]
    lines += [f"\nFailed: {e}" for e in errors]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if quiet:
        return
    plot(rows, out.with_suffix(".png"), meta["device_name"])
    print("\n".join(lines))


def plot(rows, path: Path, where: str = "the CPU") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({(r["system"], r["precision"]) for r in rows}):
        rs = [r for r in rows if (r["system"], r["precision"]) == key]
        label = f"{key[0]} ({key[1]})"
        a.plot([r["clients"] for r in rs], [r["aggregate_tok_s"] for r in rs], marker="o", label=label)
        b.plot([r["clients"] for r in rs], [r["ttft_p95_s"] for r in rs], marker="o", label=label)
    a.set(xlabel="concurrent streaming clients", ylabel="aggregate decode tokens/s", xscale="log")
    b.set(xlabel="concurrent streaming clients", ylabel="time to first token p95 (s)", xscale="log", yscale="log")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.set_xticks(sorted({r["clients"] for r in rows}), labels=[str(c) for c in sorted({r["clients"] for r in rows})])
    a.legend(fontsize=8)
    fig.suptitle(f"Serving gpt2-mini on {where}: " + " vs ".join(dict.fromkeys(r["system"] for r in rows)))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
