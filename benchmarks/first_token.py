"""Time to the first streamed token in the app's Assistant mode, on CPU (target: <= 0.5 s).

    flock /tmp/cpu-heavy.lock python benchmarks/first_token.py [--checkpoint DIR] [--runs 10]

Goes through the app's own path: `llm.serving.chat.open_answer` on a serving runtime (the
continuous-batching engine's scheduler thread, pieces handed to the event loop), with a ~100-token
prompt (Alpaca template included). The model is
checkpoints/instruct when it exists (or --checkpoint), else the gpt2-mini base from $LLM_TEST_BASE
(or ../shared/models/gpt2-mini) wrapped as an InstructionModel: same shape, same code path.
Loading happens once, before timing, as in the app (models are loaded once per process).
Results: benchmarks/results/first_token.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if (ROOT.parent / "shared/data/gpt2").is_dir():  # offline tokenizer files beside the checkout
    os.environ.setdefault("LLM_BPE_DIR", str(ROOT.parent / "shared/data/gpt2"))
from llm.instruct import InstructionModel  # noqa: E402
from llm.prompt import format_prompt  # noqa: E402
from llm.tokenizer import get_tokenizer  # noqa: E402
from llm.serving import chat  # noqa: E402
from llm.serving.registry import INSTRUCT_MODEL_ID, ModelSpec  # noqa: E402
from llm.serving.runtime import Runtime  # noqa: E402
from llm.weights import load_model  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from serving import run_in_own_thread  # noqa: E402

INSTRUCTION = ("Summarize the following paragraph in one sentence for a busy reader, keeping the key facts: "
               "The city council met on Tuesday evening to discuss the new cycling lanes planned for the old town. "
               "Residents raised concerns about parking, deliveries and the safety of children walking to school, "
               "while shop owners hoped the lanes would bring more visitors. The council agreed to")


def load(checkpoint: str | None) -> tuple[InstructionModel, str]:
    ckpt = Path(checkpoint or ROOT / "checkpoints/instruct")
    if (ckpt / "config.json").is_file():
        return InstructionModel.load(ckpt, device="cpu"), str(ckpt)
    base = os.environ.get("LLM_TEST_BASE") or str(ROOT.parent / "shared/models/gpt2-mini")
    model, config = load_model(base, "cpu", "fp32")
    return InstructionModel(model, get_tokenizer(), config), f"{base} (base as a stand-in for checkpoints/instruct)"


async def first_token_seconds(runtime: Runtime, settings) -> tuple[float, float, int]:
    """(seconds to the first piece, seconds to the end, pieces) for one answer through the app's path."""
    start = time.perf_counter()
    first, n = None, 0
    async for _ in await chat.open_answer(runtime, INSTRUCTION, settings, chat.Conversation()):
        if first is None:
            first = time.perf_counter() - start
        n += 1
    return first, time.perf_counter() - start, n


async def measure(runtime: Runtime, settings, runs: int):
    warm = await first_token_seconds(runtime, settings)  # first call after loading: allocator/kernels warm up
    return warm, [await first_token_seconds(runtime, settings) for _ in range(runs)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/first_token.json"))
    args = p.parse_args()
    im, source = run_in_own_thread(load, args.checkpoint)  # the main thread keeps no OpenMP team (see serving.py)
    prompt_tokens = len(im.tokenizer.encode(format_prompt(INSTRUCTION)))
    settings = chat.generation_settings({"max_new_tokens": args.max_new_tokens})
    runtime = Runtime([ModelSpec(INSTRUCT_MODEL_ID, "assistant", lambda: Path(source), "", lambda: im)])
    runtime.registry.load(INSTRUCT_MODEL_ID)  # as the app does at start-up: loaded and warmed before anyone asks
    warm, runs = asyncio.run(measure(runtime, settings, args.runs))
    runtime.close()
    ttft = sorted(r[0] for r in runs)
    result = {
        "benchmark": "time to first streamed token, Assistant mode (chat.open_answer -> serving engine)",
        "model": source, "parameters": sum(t.numel() for t in im.model.parameters()),
        "prompt_tokens": prompt_tokens, "runs": args.runs, "device": "cpu",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "first_call_s": round(warm[0], 4),
        "ttft_median_s": round(statistics.median(ttft), 4), "ttft_max_s": round(ttft[-1], 4),
        "ttft_min_s": round(ttft[0], 4), "target_s": 0.5, "meets_target": statistics.median(ttft) <= 0.5 and ttft[-1] <= 0.5,
        "tokens_per_s_after_first": round(statistics.median((r[2] - 1) / (r[1] - r[0]) for r in runs if r[2] > 1), 1)
        if any(r[2] > 1 for r in runs) else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
