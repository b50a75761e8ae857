"""Load test of the HTTP API on loopback: N concurrent clients, M requests, zero 5xx, every response checked.

    flock /tmp/cpu-heavy.lock python benchmarks/load_test.py --base ../shared/models/gpt2-mini

Starts `python -m llm.serving.http` as its own process on a free 127.0.0.1 port (the client runs in this one),
waits until /health says both models are ready, then sends a fixed mix of requests from
`--clients` concurrent clients: /v1/classify (1-8 texts), chat completions (plain) and chat
completions (streamed). Every response is validated (status, JSON shape, SSE framing, [DONE]).
Writes p50/p95/p99 latency per kind and throughput to benchmarks/results/api_load.{json,md}.
Exits 1 if any response was a 5xx or malformed.

Models: --spam-checkpoint / --instruct-checkpoint when given (e.g. the trained checkpoints/spam and
checkpoints/instruct), else both are made from --base (same architecture, the classifier head
untrained): latency depends on the architecture, not on how well the weights are trained.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMS = ["WINNER!! Claim your £900 prize now, call 09061701461", "Are we still on for dinner tonight?",
       "URGENT! Your mobile No. was awarded £2000 Bonus Caller Prize", "Ok lar... Joking wif u oni...",
       "Free entry in 2 a wkly comp to win FA Cup final tkts, text FA to 87121", "I'll be home late, save me some food"]
QUESTIONS = ["Name a colour.", "What is the opposite of 'generous'?", "Convert 45 kilometers to meters.",
             "Rewrite the sentence using a simile: The car is very fast."]


def make_checkpoints(base: str, out: Path, max_length: int) -> tuple[Path, Path]:
    """A spam classifier (base weights + untrained head) and an instruct LM, both from `base`."""
    import torch
    from llm.checkpoint import save_checkpoint
    from llm.model import GPTClassifier
    from llm.weights import load_model

    lm, _ = load_model(base, "cpu", "fp32")
    torch.manual_seed(0)
    clf = GPTClassifier(lm.config, 2)
    clf.load_state_dict(lm.state_dict(), strict=False)
    spam = save_checkpoint(clf.eval(), out / "spam", metadata={"labels": ["ham", "spam"], "max_length": max_length})
    instruct = save_checkpoint(lm, out / "instruct")
    return spam, instruct


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(n: int, seed: int, mix: tuple[float, float, float], max_tokens: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.choices(["classify", "chat", "chat_stream"], weights=mix)[0]
        if kind == "classify":
            out.append((kind, {"texts": rng.sample(SMS, rng.randint(1, len(SMS)))}))
        else:
            out.append((kind, {"model": "gpt2-instruct", "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
                               "max_tokens": max_tokens, "stream": kind == "chat_stream"}))
    return out


def check(kind: str, body: dict, status: int, raw: bytes) -> str | None:
    """None if the response is well-formed for its kind, else what is wrong."""
    if status != 200:
        return f"status {status}: {raw[:200]!r}"
    try:
        if kind == "classify":
            data = json.loads(raw)["data"]
            ok = len(data) == len(body["texts"]) and all(d["label"] in ("spam", "ham") and 0 <= d["p_spam"] <= 1 for d in data)
            return None if ok else f"bad classify body {raw[:200]!r}"
        if kind == "chat":
            j = json.loads(raw)
            c = j["choices"][0]
            ok = j["object"] == "chat.completion" and c["message"]["role"] == "assistant" and \
                isinstance(c["message"]["content"], str) and c["finish_reason"] in ("stop", "length")
            return None if ok else f"bad chat body {raw[:200]!r}"
        events = [e for e in raw.decode().split("\n\n") if e.strip()]
        if not events or any(not e.startswith("data: ") for e in events) or events[-1] != "data: [DONE]":
            return f"bad SSE framing {raw[-200:]!r}"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        finals = [c for c in chunks if c["choices"][0]["finish_reason"]]
        ok = all(c["object"] == "chat.completion.chunk" for c in chunks) and len(finals) == 1
        return None if ok else f"bad chunks {raw[-200:]!r}"
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return f"unparseable ({e}): {raw[:200]!r}"


async def run_load(url: str, requests: list[tuple[str, dict]], clients: int, headers: dict) -> list[dict]:
    queue: asyncio.Queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, headers=headers) as http:
        async def client() -> None:
            while True:
                try:
                    kind, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                path = "/v1/classify" if kind == "classify" else "/v1/chat/completions"
                t0 = time.perf_counter()
                first = None
                try:
                    async with http.stream("POST", path, json=body) as r:
                        raw = b""
                        async for part in r.aiter_bytes():
                            first = first or time.perf_counter()
                            raw += part
                    status = r.status_code
                except httpx.HTTPError as e:
                    status, raw = 0, repr(e).encode()
                t1 = time.perf_counter()
                if len(results) % 50 == 49:
                    print(f"  {len(results) + 1} responses", file=sys.stderr)
                results.append({"kind": kind, "status": status, "latency_s": t1 - t0,
                                "ttfb_s": (first or t1) - t0, "problem": check(kind, body, status, raw)})

        await asyncio.gather(*(client() for _ in range(clients)))
    return results


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))] if xs else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=os.environ.get("LLM_TEST_BASE"), help="base model to build both checkpoints from (default: $LLM_TEST_BASE)")
    p.add_argument("--spam-checkpoint", default=None)
    p.add_argument("--instruct-checkpoint", default=None)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--mix", default="0.8,0.1,0.1", help="weights of classify, chat, chat_stream (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each chat request")
    shared_bpe = ROOT.parent / "shared/data/gpt2"
    p.add_argument("--bpe-dir", default=os.environ.get("LLM_BPE_DIR") or (str(shared_bpe) if shared_bpe.is_dir() else None),
                   help="GPT-2 BPE files for the offline tokenizer (default: $LLM_BPE_DIR, else ../shared/data/gpt2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/api_load"), help="writes OUT.json and OUT.md")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="api_load_")
    print("preparing checkpoints and starting the server...", file=sys.stderr)
    spam, instruct = args.spam_checkpoint, args.instruct_checkpoint
    if not (spam and instruct):
        if not args.base:
            p.error("give --spam-checkpoint and --instruct-checkpoint, or --base to build them from")
        built = make_checkpoints(args.base, Path(tmp.name), max_length=120)
        spam, instruct = spam or built[0], instruct or built[1]

    port, key = free_port(), "load-test-key"
    env = {**os.environ, "LLM_API_KEY": key, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "llm.serving.http", "--host", "127.0.0.1", "--port", str(port), "--spam-checkpoint", str(spam),
           "--instruct-checkpoint", str(instruct), "--device", "cpu", "--threads", str(args.threads)]
    if args.bpe_dir:
        cmd += ["--bpe-dir", args.bpe_dir]
    log_path = Path(tmp.name) / "server.log"
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                print(log_path.read_text(), file=sys.stderr)
                return 1
            try:
                h = httpx.get(url + "/health", timeout=5).json()
                if h["status"] == "ok":
                    break
                failed = {k: m["error"] for k, m in h["models"].items() if not m["ready"] and not m["loading"]}
                if failed:
                    print(f"server up but models failed to load: {failed}", file=sys.stderr)
                    return 1
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("server not ready after 300 s:", h, file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"server ready on {url}; sending {args.requests} requests from {args.clients} clients", file=sys.stderr)
        mix = tuple(float(x) for x in args.mix.split(","))
        reqs = plan(args.requests, args.seed, mix, args.max_tokens)
        t0 = time.perf_counter()
        results = asyncio.run(run_load(url, reqs, args.clients, {"Authorization": f"Bearer {key}"}))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    problems = [r for r in results if r["problem"]]
    n5xx = sum(1 for r in results if r["status"] >= 500)
    by_kind = {}
    for kind in ("classify", "chat", "chat_stream", "all"):
        rs = [r for r in results if kind in ("all", r["kind"])]
        lat = [r["latency_s"] for r in rs]
        by_kind[kind] = {"n": len(rs), "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "p99_s": pct(lat, 99),
                         "max_s": max(lat) if lat else None, "mean_s": statistics.fmean(lat) if lat else None}
        if kind == "chat_stream" and rs:
            by_kind[kind]["ttfb_p50_s"] = pct([r["ttfb_s"] for r in rs], 50)
            by_kind[kind]["ttfb_p95_s"] = pct([r["ttfb_s"] for r in rs], 95)
    import torch
    report = {
        "command": " ".join(["python", "benchmarks/load_test.py"] + sys.argv[1:]),
        "clients": args.clients, "requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
        "statuses": statuses, "five_xx": n5xx, "malformed": len(problems), "problems": [r["problem"] for r in problems[:10]],
        "latency": by_kind, "mix": args.mix, "chat_max_tokens": args.max_tokens,
        "models": {"spam": str(args.spam_checkpoint or f"built from {args.base}"),
                   "instruct": str(args.instruct_checkpoint or f"built from {args.base}")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "server_threads": args.threads},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# API load test ({report['date']})", "", f"`{report['command']}`", "",
             f"{args.clients} concurrent clients, {len(results)} requests on loopback in {wall:.1f} s "
             f"({report['requests_per_s']:.1f} req/s); statuses {statuses}; 5xx: {n5xx}; malformed: {len(problems)}.", "",
             "| kind | n | p50 (s) | p95 (s) | p99 (s) | max (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, s in by_kind.items():
        if s["n"]:
            lines.append(f"| {kind} | {s['n']} | {s['p50_s']:.3f} | {s['p95_s']:.3f} | {s['p99_s']:.3f} | {s['max_s']:.3f} |")
    if by_kind["chat_stream"]["n"]:
        lines += ["", "Streaming time to first byte (the role chunk, sent once the request is in the engine's queue): "
                      f"p50 {by_kind['chat_stream']['ttfb_p50_s']:.3f} s, "
                      f"p95 {by_kind['chat_stream']['ttfb_p95_s']:.3f} s."]
    lines += ["", f"Models: spam {report['models']['spam']}; instruct {report['models']['instruct']}. "
                  f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__}, server threads {args.threads}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    tmp.cleanup()
    return 0 if n5xx == 0 and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
