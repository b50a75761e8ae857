"""Time per explained spam verdict (occlusion, `SpamClassifier.explain`) beside the plain verdict of the same message.

    flock /tmp/cpu-heavy.lock python benchmarks/explain.py [--checkpoint checkpoints/spam] [--n 100] [--threads 2]

Messages: the first N of the natural test split (data/sms_spam/natural/test.csv, written by `finetune.spam prepare`).
An explanation is ONE batched forward pass over the message and each of its one-word-removed variants (at most
EXPLAIN_MAX_WORDS), so its cost grows with the message's word count: the report gives the median and p90 per message,
by length, and the ratio to a plain verdict (one forward pass of the message alone). Writes
benchmarks/results/explain.json.
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
from llm.spam import DEFAULT_CHECKPOINT, SpamClassifier, read_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="spam checkpoint (default: $LLM_SPAM_CHECKPOINT or checkpoints/spam)")
    p.add_argument("--data", default="data/sms_spam/natural/test.csv")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "explain.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clf = SpamClassifier.load(args.checkpoint, device="cpu")
    texts = [t for _, t in read_split(args.data)][:args.n]
    clf.explain(texts[0]), clf.classify([texts[0]])  # warm-up
    rows = []
    for t in texts:
        rows.append({"words": len(t.split()), "explain_s": timed(lambda: clf.explain(t)),
                     "verdict_s": timed(lambda: clf.classify([t]))})
    ex, ve = [r["explain_s"] for r in rows], [r["verdict_s"] for r in rows]
    q = statistics.quantiles(ex, n=10)
    by_len = {}
    for lo, hi in ((1, 10), (11, 25), (26, 200)):
        sel = [r["explain_s"] for r in rows if lo <= r["words"] <= hi]
        if sel:
            by_len[f"{lo}-{hi} words"] = {"n": len(sel), "median_s": statistics.median(sel)}
    result = {"benchmark": "explained vs plain spam verdict, per message, CPU", "checkpoint": args.checkpoint or DEFAULT_CHECKPOINT,
              "messages": len(rows), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "explain_median_s": statistics.median(ex), "explain_p90_s": q[-1], "verdict_median_s": statistics.median(ve),
              "ratio_median": statistics.median(e / v for e, v in zip(ex, ve)), "by_length": by_len,
              "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(rows)} messages, {args.threads} threads: explained verdict median {result['explain_median_s'] * 1000:.0f} ms "
          f"(p90 {result['explain_p90_s'] * 1000:.0f} ms), plain verdict median {result['verdict_median_s'] * 1000:.0f} ms, "
          f"ratio {result['ratio_median']:.1f}x; by length: "
          + ", ".join(f"{k} {v['median_s'] * 1000:.0f} ms (n={v['n']})" for k, v in by_len.items()) + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
