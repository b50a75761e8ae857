"""CPU generation speed: ours (fp32 with / without KV cache, bf16, int8) vs transformers, one run.

    flock /tmp/cpu-heavy.lock python benchmarks/generation.py [--base DIR] [--threads 2]

Greedy decoding of 200 new tokens from a 20-token prompt, batch 1, every model on the same
weights and the same thread count: gpt2-mini (--base, else $LLM_TEST_BASE, else ../shared/models/
gpt2-mini) when present, else a 124M-shaped random GPT-2 saved with `save_pretrained`. The peer
is `transformers` `GPT2LMHeadModel.generate` in fp32 with its KV cache. Every result is a ratio
to it.

Single-stream decoding is memory-bound (each token reads every weight once), so next to each
precision the benchmark prints its ceiling: the effective GB/s of a matrix-vector product in that
precision's kernel (measured here and now, on a matrix as large as the weights one token reads, so
the CPU's cache cannot flatter it) divided by the bytes of weights one decode step reads.

Also measured: int8 vs fp32 greedy agreement (first 20 tokens of the 110 instruction test prompts,
with the instruction checkpoint when it exists, else the base)
and, for the app's Assistant mode, time to first token and tokens/s per precision with a
~100-token Alpaca prompt (the instruction checkpoint when it exists, else the base as a proxy).
Results: benchmarks/results/generation.json and generation.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llm.generate import GenerationSettings, generate_ids  # noqa: E402
from llm.onednn import available as onednn_available  # noqa: E402
from llm.quantize import quantize_rows, weight_bytes  # noqa: E402
from llm.weights import load_model  # noqa: E402

SHARED = ROOT.parent / "shared"
if (SHARED / "data/gpt2").is_dir():  # offline tokenizer files beside the checkout
    os.environ.setdefault("LLM_BPE_DIR", str(SHARED / "data/gpt2"))
NO_EOT = -1  # never stop early: every run decodes exactly --new-tokens tokens
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def default_base() -> Path | None:
    for cand in (os.environ.get("LLM_TEST_BASE"), SHARED / "models" / "gpt2-mini"):
        if cand and (Path(cand) / "config.json").is_file():
            return Path(cand)
    return None


def random_124m(tmp: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(tmp)
    return tmp


def format_prompt(instruction: str, input: str = "") -> str:
    try:  # the product's one template, once the instruct helper has written it
        from llm.prompt import format_prompt as product_format
        return product_format(instruction, input)
    except ImportError:
        text = ALPACA.format(instruction=instruction)
        return text.replace("\n\n### Response:", f"\n\n### Input:\n{input}\n\n### Response:") if input else text


# --- timing --------------------------------------------------------------------------------------

def time_ours(model, prompt: list[int], n: int, use_cache: bool = True) -> dict:
    s = GenerationSettings(max_new_tokens=n, use_cache=use_cache)
    t0 = time.perf_counter()
    first = None
    out = []
    for tok in generate_ids(model, prompt, s, eot_id=NO_EOT):
        if first is None:
            first = time.perf_counter() - t0
        out.append(tok)
    total = time.perf_counter() - t0
    assert len(out) == n, f"generated {len(out)} tokens, expected {n}"
    return {"seconds": total, "tokens_per_s": n / total, "first_token_s": first, "ids": out}


@torch.inference_mode()
def time_hf(model, prompt: list[int], n: int) -> dict:
    ids = torch.tensor([prompt])
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=50256)
    total = time.perf_counter() - t0
    new = out[0, len(prompt):].tolist()
    assert len(new) == n
    return {"seconds": total, "tokens_per_s": n / total, "ids": new}


def matvec_gbps(rows: int, cols: int, precision: str, reps: int = 30) -> float:
    """Effective GB/s of y = W x for a (rows, cols) weight in `precision`'s kernel."""
    torch.manual_seed(0)
    w = torch.randn(rows, cols)
    x = torch.randn(1, cols)
    if precision == "int8":
        q, s = quantize_rows(w)
        s, xb = s.to(torch.bfloat16), x.to(torch.bfloat16)
        fn, nbytes = (lambda: torch.ops.aten._weight_int8pack_mm(xb, q, s)), q.numel() + s.numel() * 2
    elif precision == "fp32" and onednn_available():  # the faster of the two fp32 kernels (llm/onednn.py)
        return max(_gbps(lambda: F.linear(x, w), w.numel() * 4, reps),
                   _gbps(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), w.numel() * 4, reps))
    else:
        dt = torch.bfloat16 if precision == "bf16" else torch.float32
        wd, xd = w.to(dt), x.to(dt)
        fn, nbytes = (lambda: F.linear(xd, wd)), wd.numel() * wd.element_size()
    return _gbps(fn, nbytes, reps)


def _gbps(fn, nbytes: int, reps: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def bytes_per_token(model) -> int:
    """Weight bytes one decode step reads: everything except the position table (one row is read;
    the tied token table is read in full by the LM head)."""
    return weight_bytes(model) - model.wpe.weight.numel() * model.wpe.weight.element_size()


# --- main ----------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=None, help="GPT-2 checkpoint dir (default: $LLM_TEST_BASE, ../shared gpt2-mini, else random 124M)")
    p.add_argument("--instruct", default=os.environ.get("LLM_INSTRUCT_CHECKPOINT", str(ROOT / "checkpoints/instruct")),
                   help="instruction checkpoint for the Assistant-mode timing (default: %(default)s; falls back to the base)")
    p.add_argument("--instruction-data", default=os.environ.get("LLM_INSTRUCTION_DATA"),
                   help="instruction-data.json for the int8 agreement check (default: $LLM_INSTRUCTION_DATA)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=20)
    p.add_argument("--agreement-prompts", type=int, default=110, help="test prompts for the int8 agreement check (0 = skip)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2LMHeadModel

    tmp = tempfile.TemporaryDirectory()
    base = Path(args.base) if args.base else default_base()
    base_desc = str(base) if base else "random 124M GPT-2 (no gpt2-mini found)"
    if base is None:
        base = random_124m(Path(tmp.name))
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 50000, (args.prompt_tokens,), generator=g).tolist()
    try:
        from llm.tokenizer import get_tokenizer
        tok = get_tokenizer()
        text = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg " * 4
        prompt = tok.encode(text)[:args.prompt_tokens]
    except Exception:  # noqa: BLE001 - no tokenizer offline: random ids time the same
        tok = None
    n = args.new_tokens
    print(f"base: {base_desc}; {args.threads} threads; greedy {n} new tokens from a {len(prompt)}-token prompt")

    hf = GPT2LMHeadModel.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa").eval()
    models = {prec: load_model(base, "cpu", prec)[0] for prec in ("fp32", "bf16", "int8")}
    # warm-up (allocator, kernels, first-call overheads), not timed
    time_hf(hf, prompt, 8)
    for m in models.values():
        time_ours(m, prompt, 8)

    runs = {"transformers fp32": time_hf(hf, prompt, n)}
    runs["ours fp32 (KV cache)"] = time_ours(models["fp32"], prompt, n)
    runs["ours fp32 (no cache)"] = time_ours(models["fp32"], prompt, n, use_cache=False)
    runs["ours bf16"] = time_ours(models["bf16"], prompt, n)
    runs["ours int8"] = time_ours(models["int8"], prompt, n)
    peer = runs["transformers fp32"]["tokens_per_s"]

    c = models["fp32"].config
    ceilings = {}
    for prec, m in models.items():
        nbytes = bytes_per_token(m)
        # A matrix as large as the weights one token reads (at least the LM head's shape): a smaller one can sit in
        # the CPU's last-level cache (gpt2-mini's int8 LM head, 26 MB, does on a 32 MB L3) and overstate the bandwidth.
        per_row = c.n_embd * {"fp32": 4, "bf16": 2, "int8": 1}[prec]
        gbps = matvec_gbps(max(c.vocab_size, -(-nbytes // per_row)), c.n_embd, prec)
        ceilings[prec] = {"matvec_GBps": gbps, "matvec_MB": max(c.vocab_size, -(-nbytes // per_row)) * per_row / 1e6,
                          "weight_MB_per_token": nbytes / 1e6,
                          "ceiling_tokens_per_s": gbps * 1e9 / nbytes}
    prec_of = {"transformers fp32": "fp32", "ours fp32 (KV cache)": "fp32", "ours fp32 (no cache)": "fp32",
               "ours bf16": "bf16", "ours int8": "int8"}
    rows = []
    for name, r in runs.items():
        ceil = ceilings[prec_of[name]]
        rows.append({"run": name, "tokens_per_s": r["tokens_per_s"], "seconds": r["seconds"],
                     "vs_transformers": r["tokens_per_s"] / peer,
                     "ceiling_tokens_per_s": ceil["ceiling_tokens_per_s"],
                     "ceiling_vs_transformers": ceil["ceiling_tokens_per_s"] / peer,
                     "of_ceiling": r["tokens_per_s"] / ceil["ceiling_tokens_per_s"]})
    same_fp32 = runs["ours fp32 (KV cache)"]["ids"] == runs["transformers fp32"]["ids"]
    cache_vs_nocache = runs["ours fp32 (KV cache)"]["tokens_per_s"] / runs["ours fp32 (no cache)"]["tokens_per_s"]

    print(f"\n{'run':24s} {'tok/s':>8s} {'vs HF':>7s} {'ceiling tok/s':>14s} {'ceiling vs HF':>14s} {'of ceiling':>10s}")
    for r in rows:
        print(f"{r['run']:24s} {r['tokens_per_s']:8.1f} {r['vs_transformers']:6.2f}x {r['ceiling_tokens_per_s']:14.1f} "
              f"{r['ceiling_vs_transformers']:13.2f}x {r['of_ceiling']:9.0%}")
    for prec, ce in ceilings.items():
        print(f"  {prec}: matvec of {ce['matvec_MB']:.0f} MB at {ce['matvec_GBps']:.1f} GB/s, "
              f"{ce['weight_MB_per_token']:.1f} MB of weights per token")
    print(f"ours fp32 with cache vs without: {cache_vs_nocache:.1f}x; fp32 greedy ids identical to transformers: {same_fp32}")

    # The instruction checkpoint in every precision, loaded once for the agreement check and Assistant mode.
    inst_models = ({prec: load_model(Path(args.instruct), "cpu", prec)[0] for prec in ("fp32", "bf16", "int8")}
                   if (Path(args.instruct) / "config.json").is_file() else None)

    # --- int8 quality: greedy agreement on the instruction test prompts -----------------------------
    agreement = None
    data_path = args.instruction_data or (SHARED / "data/instruction/instruction-data.json")
    if args.agreement_prompts and tok is not None and Path(data_path).is_file():
        data = json.loads(Path(data_path).read_text())
        train_end = int(len(data) * 0.85)  # 85/10/5 train/test/val split (the instruct fine-tune's)
        test = data[train_end:train_end + int(len(data) * 0.1)][:args.agreement_prompts]
        # The instruction checkpoint is the model these prompts are for; the base is the fallback.
        pair = inst_models or models
        agree_desc = args.instruct if inst_models else base_desc
        same = 0
        for item in test:
            ids = tok.encode(format_prompt(item["instruction"], item.get("input", "")))
            a = list(generate_ids(pair["fp32"], ids, GenerationSettings(max_new_tokens=20), eot_id=tok.eot_id))
            b = list(generate_ids(pair["int8"], ids, GenerationSettings(max_new_tokens=20), eot_id=tok.eot_id))
            same += a == b
        agreement = {"prompts": len(test), "identical_first_20": same, "fraction": same / len(test),
                     "model": agree_desc, "data": str(data_path)}
        print(f"int8 vs fp32 greedy, first 20 tokens identical on {same}/{len(test)} instruction test prompts "
              f"({same / len(test):.1%})")

    # --- Assistant mode: time to first token and tokens/s per precision ------------------------------
    assistant = None
    if tok is not None:
        inst_dir = Path(args.instruct)
        use_inst = inst_models is not None
        src = inst_dir if use_inst else base
        instruction = ("Summarize the following paragraph in one sentence, keeping the names and the dates, "
                       "and explain why the event mattered.")
        paragraph = ("In 1440 Johannes Gutenberg, a goldsmith from Mainz, began work on a press with movable metal "
                     "type. By 1455 his workshop had printed the Bible, and within fifty years presses were running "
                     "in more than two hundred cities, spreading books and ideas across Europe.")
        ids = tok.encode(format_prompt(instruction, paragraph))
        assistant = {"model": str(src) + ("" if use_inst else " (base model as a proxy: no instruction checkpoint yet)"),
                     "prompt_tokens": len(ids), "new_tokens": 100, "runs": {}}
        for prec in ("fp32", "bf16", "int8"):
            m = inst_models[prec] if use_inst else models[prec]
            time_ours(m, ids, 4)
            r = time_ours(m, ids, 100)
            decode = 99 / (r["seconds"] - r["first_token_s"])
            assistant["runs"][prec] = {"time_to_first_token_s": r["first_token_s"], "tokens_per_s": r["tokens_per_s"],
                                       "decode_tokens_per_s": decode}
            print(f"assistant {prec}: first token {r['first_token_s'] * 1e3:.0f} ms, {r['tokens_per_s']:.1f} tok/s overall, "
                  f"{decode:.1f} tok/s decoding ({len(ids)}-token prompt)")

    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    # each library picks its own ISA: ATen's kernels, oneDNN (fp32 linears here) and MKL (transformers)
                    "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if k in os.environ},
                    "torch": torch.__version__, "python": platform.python_version()},
        "base": base_desc, "prompt_tokens": len(prompt), "new_tokens": n, "runs": rows, "ceilings": ceilings,
        "cache_vs_no_cache": cache_vs_nocache, "fp32_ids_identical_to_transformers": same_fp32,
        "int8_agreement": agreement, "assistant": assistant,
        "command": "flock /tmp/cpu-heavy.lock python benchmarks/generation.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "generation.md").write_text(markdown(result))
    print(f"\nwrote {out / 'generation.json'} and {out / 'generation.md'}")
    return 0


# To stand in for an older CPU on this one, limit all three (ATEN_CPU_CAPABILITY alone leaves oneDNN and MKL on AVX-512):
#   ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/generation.py ...
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def markdown(r: dict) -> str:
    lines = [f"# Generation speed on CPU ({r['machine']['threads']} threads, torch {r['machine']['torch']}, "
             f"ATen CPU capability {r['machine'].get('cpu_capability')}"
             + "".join(f", {k}={v}" for k, v in r["machine"].get("isa_limits", {}).items()) + ")", "",
             f"Greedy, {r['new_tokens']} new tokens from a {r['prompt_tokens']}-token prompt, batch 1; "
             f"weights: {r['base']}. Ceiling = measured matrix-vector GB/s / weight bytes read per token.", "",
             "| run | tokens/s | vs transformers | ceiling tokens/s | ceiling vs transformers | of ceiling |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for x in r["runs"]:
        lines.append(f"| {x['run']} | {x['tokens_per_s']:.1f} | {x['vs_transformers']:.2f}x | "
                     f"{x['ceiling_tokens_per_s']:.1f} | {x['ceiling_vs_transformers']:.2f}x | {x['of_ceiling']:.0%} |")
    lines += ["", f"KV cache vs no cache: {r['cache_vs_no_cache']:.1f}x. "
              f"fp32 greedy ids identical to transformers: {r['fp32_ids_identical_to_transformers']}.", ""]
    for prec, c in r["ceilings"].items():
        lines.append(f"- {prec}: {c['matvec_GBps']:.1f} GB/s (a {c.get('matvec_MB', 0):.0f} MB matrix), {c['weight_MB_per_token']:.1f} MB per token")
    if r["int8_agreement"]:
        a = r["int8_agreement"]
        lines += ["", f"int8 vs fp32 greedy: first 20 tokens identical on {a['identical_first_20']}/{a['prompts']} "
                  f"instruction test prompts ({a['fraction']:.1%}); model: {a['model']}."]
    if r["assistant"]:
        a = r["assistant"]
        lines += ["", f"Assistant mode ({a['prompt_tokens']}-token prompt, {a['new_tokens']} new tokens; {a['model']}):", "",
                  "| precision | time to first token | tokens/s (overall) | tokens/s (decoding) |", "| --- | ---: | ---: | ---: |"]
        for prec, x in a["runs"].items():
            lines.append(f"| {prec} | {x['time_to_first_token_s'] * 1e3:.0f} ms | {x['tokens_per_s']:.1f} | "
                         f"{x['decode_tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
