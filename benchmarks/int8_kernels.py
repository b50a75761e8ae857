"""int8 matmul kernels on this CPU: weight-only int8 vs int8 rows (per-row int8 activations), one run.

    flock /tmp/cpu-heavy.lock python benchmarks/int8_kernels.py [--base DIR] [--instruct checkpoints/instruct]

`llm/quantize.py` runs an int8 linear layer through one of two kernels, picked by the number of rows:
  weight-only  torch.ops.aten._weight_int8pack_mm: bf16 activations x int8 weights (memory-bound decoding)
  int8 rows    torch._int_mm on activations quantized per row (llm.quantize.int8_rows_matmul)
Measured here, each under the CPU's own ISA and again under ATEN_CPU_CAPABILITY=avx2 (a child process):
  1. every linear shape of the model at 1-32 rows: fp32 (oneDNN, what fp32 inference runs), weight-only, int8 rows;
  2. the bare int8 model decoding a batch (one KV cache, no scheduler) with weight-only forced vs the default
     choice (int8 rows from `INT8_ROWS_FROM` rows), tokens/s;
  3. quality (own ISA only, with --instruct): greedy first 20 tokens identical to fp32 on the 110 instruction
     test prompts, and the teacher-forced loss of their reference responses, for weight-only, int8 rows
     everywhere (what the serving engine runs), and the default choice.
Results: benchmarks/results/int8_kernels.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import llm.quantize as quantize  # noqa: E402
from llm.weights import load_model  # noqa: E402
from serving import SHARED, raw_decode_tok_s  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROWS = (1, 2, 4, 8, 16, 32)


def ms(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def kernel_table(model) -> list[dict]:
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, quantize.Int8Linear)})
    rows = []
    for k, n in shapes:
        w = torch.randn(n, k) * 0.02
        q, s = quantize.quantize_rows(w)
        for m in ROWS:
            x = torch.randn(m, k)
            rows.append({"shape": f"{k}x{n}", "rows": m,
                         "fp32_ms": ms(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")),
                         "weight_only_ms": ms(lambda: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q, s.bfloat16())),
                         "int8_rows_ms": ms(lambda: quantize.int8_rows_matmul(x, q, s))})
    return rows


def decode_rates(model) -> dict:
    past = min(200, model.config.n_positions // 2)  # 200 tokens of context, as benchmarks/serving.py
    default = {b: raw_decode_tok_s(model, b, past) for b in ROWS}
    chosen, quantize.INT8_ROWS_FROM = quantize.INT8_ROWS_FROM, 1 << 30  # weight-only everywhere
    try:
        weight_only = {b: raw_decode_tok_s(model, b, past) for b in ROWS}
    finally:
        quantize.INT8_ROWS_FROM = chosen
    return {"default": default, "weight_only": weight_only}


def quality(instruct: str) -> dict:
    from llm.generate import GenerationSettings, generate_ids
    from llm.prompt import format_prompt
    from llm.tokenizer import get_tokenizer
    tok = get_tokenizer()
    data = json.loads((SHARED / "data/instruction/instruction-data.json").read_text())[935:1045]  # the book's test split
    prompts = [tok.encode(format_prompt(d["instruction"], d.get("input", ""))) for d in data]
    fp32, _ = load_model(instruct, "cpu", "fp32")
    int8, _ = load_model(instruct, "cpu", "int8")

    def greedy(model, ids):
        return list(generate_ids(model, ids, GenerationSettings(max_new_tokens=20), eot_id=tok.eot_id))

    @torch.inference_mode()
    def loss(model):
        total, n = 0.0, 0
        for d, p in zip(data, prompts):
            ids = torch.tensor([p + tok.encode(d["output"]) + [tok.eot_id]])
            logits = model(ids[:, :-1])[0, len(p) - 1:]
            total += F.cross_entropy(logits.float(), ids[0, len(p):], reduction="sum").item()
            n += ids.shape[1] - len(p)
        return total / n

    reference = [greedy(fp32, p) for p in prompts]
    out = {"fp32": {"loss": loss(fp32)}}
    chosen = quantize.INT8_ROWS_FROM
    for name, rows_from in (("weight_only", 1 << 30), ("int8_rows_everywhere", 1), ("default", chosen)):
        quantize.INT8_ROWS_FROM = rows_from
        out[name] = {"identical_first_20": sum(greedy(int8, p) == r for p, r in zip(prompts, reference)),
                     "loss": loss(int8)}
    quantize.INT8_ROWS_FROM = chosen
    return {"prompts": len(prompts), "checkpoint": instruct, **out}


def measure(base: str) -> dict:
    model, _ = load_model(base, "cpu", "int8")
    return {"isa": torch.backends.cpu.get_cpu_capability(), "int8_rows_from": quantize.INT8_ROWS_FROM,
            "kernels": kernel_table(model), "decode_tok_s": decode_rates(model)}


def markdown(result: dict) -> str:
    lines = [f"int8 kernels (2026-11-26, {result['base']}, {result['threads']} threads; ms per call, lower is better)", ""]
    for run in result["runs"]:
        lines += [f"### {run['isa']} (int8 rows from {run['int8_rows_from']} rows)", "",
                  "| shape (in x out) | rows | fp32 oneDNN | int8 weight-only | int8 rows | weight-only / int8 rows |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {k['shape']} | {k['rows']} | {k['fp32_ms']:.3f} | {k['weight_only_ms']:.3f} | {k['int8_rows_ms']:.3f} | "
                  f"{k['weight_only_ms'] / k['int8_rows_ms']:.2f}x |" for k in run["kernels"]]
        d = run["decode_tok_s"]
        lines += ["", "| batch | decode tok/s, weight-only | decode tok/s, default | ratio |", "|---:|---:|---:|---:|"]
        lines += [f"| {b} | {d['weight_only'][b]:.1f} | {d['default'][b]:.1f} | "
                  f"{d['default'][b] / d['weight_only'][b]:.2f}x |" for b in d["weight_only"]]
        lines.append("")
    if result.get("quality"):
        q = result["quality"]
        lines += [f"Quality ({q['checkpoint']}, {q['prompts']} instruction test prompts): fp32 test-response loss "
                  f"{q['fp32']['loss']:.4f}", "", "| int8 kernels | greedy first 20 tokens = fp32 | test-response loss |",
                  "|---|---:|---:|"]
        lines += [f"| {name} | {q[name]['identical_first_20']}/{q['prompts']} | {q[name]['loss']:.4f} |"
                  for name in ("weight_only", "int8_rows_everywhere", "default")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=os.environ.get("LLM_TEST_BASE") or str(SHARED / "models/gpt2-mini"))
    p.add_argument("--instruct", default=str(ROOT / "checkpoints/instruct"), help="for the quality check (skipped if absent)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS / "int8_kernels"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:  # one ISA's measurements, as JSON on stdout
        print(json.dumps(measure(args.base), default=str))
        return 0
    runs = [measure(args.base)]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    if runs[0]["isa"] != "AVX2":
        child = subprocess.run([sys.executable, __file__, "--child", "--base", args.base, "--threads", str(args.threads)],
                               env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    for run in runs:  # JSON turned the batch keys into strings in the child
        run["decode_tok_s"] = {k: {int(b): v for b, v in d.items()} for k, d in run["decode_tok_s"].items()}
    has_instruct = (Path(args.instruct) / "config.json").is_file()
    result = {"base": args.base, "threads": args.threads, "runs": runs,
              "quality": quality(args.instruct) if has_instruct else None}
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
