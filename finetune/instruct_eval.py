"""`python -m finetune.instruct eval`: test loss and perplexity, ROUGE-L F1, exact match, template headers leaked,
an optional Ollama judge, and `--with-history` (each test question asked after another test exchange, counting the
answers copied from it)."""
from __future__ import annotations

import json
import math
import random
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

from llm.prompt import INPUT_HEADER, INSTRUCTION_HEADER, RESPONSE_HEADER

OLLAMA_URL = "http://localhost:11434/api/chat"



def rouge_tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of tokens, harmonic mean of its precision and recall."""
    a, b = rouge_tokens(candidate), rouge_tokens(reference)
    if not a or not b:
        return float(a == b)
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def exact_match(candidate: str, reference: str) -> bool:
    return " ".join(candidate.split()) == " ".join(reference.split())


def judge_scores(rows: list[dict], model: str, url: str = OLLAMA_URL) -> list[int | None] | None:
    """0-100 scores from an Ollama model (the book's prompt); None when no server answers."""
    import requests

    try:
        requests.get(url.rsplit("/api/", 1)[0] + "/api/tags", timeout=3).raise_for_status()
    except requests.RequestException as e:
        print(f"LLM judge skipped: no Ollama server at {url} ({type(e).__name__}). Start one with `ollama serve` "
              f"and `ollama pull {model}` to get judge scores.", file=sys.stderr)
        return None
    scores = []
    for row in tqdm(rows, desc="judge", unit="item"):
        from llm.prompt import format_prompt
        prompt = (f"Given the input `{format_prompt(row['instruction'], row['input'])}` and correct output `{row['output']}`, "
                  f"score the model response `{row['model_response']}` on a scale from 0 to 100, where 100 is the best score. "
                  "Respond with the integer number only.")
        r = requests.post(url, json={"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False,
                                     "options": {"seed": 123, "temperature": 0}}, timeout=120)
        r.raise_for_status()
        m = re.search(r"\d+", r.json().get("message", {}).get("content", ""))
        scores.append(int(m.group()) if m else None)
    return scores


COPIED = 0.8  # ROUGE-L F1 of a follow-up's answer to the previous answer at or above this: copied, not answered


def follow_up_history(test: list[dict], seed: int = 0) -> list[dict]:
    """For each test item, another test item whose exchange comes before it (a fixed random pairing)."""
    rng = random.Random(seed)
    return [test[(i + rng.randrange(1, len(test))) % len(test)] for i in range(len(test))]


def cmd_eval(args) -> int:
    from finetune.instruct import im_path, load_splits
    from llm.generate import settings_from_args
    from llm.instruct import InstructionModel, batched_loss, encode_example
    from llm.prompt import STOP_STRINGS

    ckpt = im_path(args)
    im = InstructionModel.load(ckpt, args.device, args.precision, args.bpe_dir)
    test = load_splits(args.data, args.alpaca)["test"]
    test = test[:args.limit] if args.limit else test
    examples = [encode_example(im.tokenizer, e) for e in test]
    device = im.model.wte.weight.device
    loss = batched_loss(im.model, examples, im.tokenizer.eot_id, device, batch_size=8, mask_prompt=True)
    earlier = follow_up_history(test) if args.with_history else None
    suffix = "-after-history" if args.with_history else ""
    responses_path = Path(args.responses or Path(ckpt) / f"test-responses{suffix}.json")
    rows = None
    if responses_path.is_file() and not args.regenerate:
        rows = json.loads(responses_path.read_text())
        if [(r["instruction"], r["input"]) for r in rows] != [(e["instruction"], e["input"]) for e in test]:
            rows = None
    if rows is None:
        settings = settings_from_args(args, stop_strings=STOP_STRINGS)
        t0 = time.time()
        responses = im.respond_batch(test, settings, batch_size=args.batch_size, progress=True,
                                     histories=[[(p["instruction"], p["output"])] for p in earlier] if earlier else None)
        print(f"generated {len(test)} responses in {time.time() - t0:.0f} s", file=sys.stderr)
        rows = [{**e, "model_response": r, **({"earlier": earlier[i]} if earlier else {})}
                for i, (e, r) in enumerate(zip(test, responses))]
        responses_path.parent.mkdir(parents=True, exist_ok=True)
        responses_path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    rouge = [rouge_l_f1(r["model_response"], r["output"]) for r in rows]
    exact = sum(exact_match(r["model_response"], r["output"]) for r in rows)
    leaked = sum(any(s.strip() in r["model_response"] for s in (INSTRUCTION_HEADER, INPUT_HEADER, RESPONSE_HEADER)) for r in rows)
    if earlier:  # a follow-up that repeats (most of) the previous answer instead of answering the new question
        metrics_history = {"after_history": True, "follows_conversations": im.follows_conversations,
                           "copied_from_earlier": sum(rouge_l_f1(r["model_response"], r["earlier"]["output"]) >= COPIED
                                                      for r in rows)}
    metrics = {"checkpoint": str(ckpt), "test_items": len(rows), "test_loss": round(loss, 4),
               "test_perplexity": round(math.exp(loss), 2), "rouge_l_f1": round(sum(rouge) / len(rouge), 4),
               "exact_match": exact, "exact_match_rate": round(exact / len(rows), 4), "responses_with_template_headers": leaked,
               "responses_file": str(responses_path), **(metrics_history if earlier else {})}
    if args.judge_model:
        scores = judge_scores(rows, args.judge_model, args.judge_url)
        if scores is not None:
            valid = [s for s in scores if s is not None]
            metrics["judge_model"] = args.judge_model
            metrics["judge_mean_score"] = round(sum(valid) / max(len(valid), 1), 2)
    out = Path(args.metrics or Path(ckpt) / f"metrics{suffix}.json")
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0
