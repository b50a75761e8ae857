"""Text generation: greedy or sampled, streamed or batched, with a KV cache.

    python -m llm.generate --base gpt2 --prompt "The meaning of life is" --max-new-tokens 40

Library entry points:
    generate_ids(model, ids, settings)        -> iterator of new token ids (one sequence)
    stream_text(model, tok, prompt, settings) -> iterator of text pieces, never half a UTF-8 character
    generate(model, tok, prompt, settings)    -> GenerationResult (text + ids)
    generate_batch(model, tok, prompts, ...)  -> list of GenerationResult, left-padded in one batch
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from llm.device import PRECISIONS
from llm.model import GPT
from llm.tokenizer import Tokenizer

log = logging.getLogger("llm")
# What the CLI's error says to do when --base is no usable language model.
BASE_HINT = ("Pass --base gpt2 (or another preset) or a language-model checkpoint, "
             "e.g. from: python -m finetune.instruct train")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 200
    temperature: float = 0.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_strings: Sequence[str] = ()  # generation ends before the first of these
    use_cache: bool = True  # False recomputes the whole sequence each step (for comparison only)

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if not self.temperature >= 0:  # also NaN
            raise ValueError("temperature must be a number >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass
class GenerationResult:
    text: str
    ids: list[int]
    prompt_tokens_dropped: int = 0
    stopped_by: str = "length"  # "eot", "stop_string", "length" or "cancelled"
    extra: dict = field(default_factory=dict)


def fit_prompt(ids: list[int], max_new_tokens: int, context: int, eot_id: int,
               fewer_tokens_first: bool = True) -> tuple[list[int], int, int]:
    """Make prompt + new tokens fit the context (each with a notice): first fewer new tokens, down to a quarter of
    the context (so a huge max_new_tokens never throws the prompt away), then the oldest prompt tokens dropped.
    fewer_tokens_first=False only drops prompt tokens (a batch, whose rows must all get the same max_new_tokens).

    Returns (prompt ids, max new tokens, number of prompt tokens dropped).
    """
    ids = list(ids) or [eot_id]  # GPT-2 starts documents after <|endoftext|>
    max_new = min(max_new_tokens, context - 1)
    if fewer_tokens_first and len(ids) + max_new > context:
        lowered = max(min(max_new, context // 4), context - len(ids))
        if lowered < max_new:
            log.warning("max_new_tokens lowered from %d to %d to fit the %d-token context", max_new, lowered, context)
            max_new = lowered
    keep = context - max_new
    dropped = max(0, len(ids) - keep)
    if dropped:
        log.warning("prompt of %d tokens truncated from the left to %d tokens to fit the %d-token context",
                    len(ids), keep, context)
        ids = ids[dropped:]
    return ids, max_new, dropped


GREEDY_BELOW = 1e-4  # a temperature this small is greedy: dividing logits by it would overflow to inf/NaN


def is_greedy(s: GenerationSettings) -> bool:
    return s.temperature < GREEDY_BELOW


def sample_next(logits: torch.Tensor, s: GenerationSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token for each row of `logits` (B, vocab)."""
    if is_greedy(s):
        return logits.argmax(dim=-1)
    logits = logits.float() / s.temperature
    if s.top_k is not None:
        kth = torch.topk(logits, min(s.top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p is not None and s.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        outside = sorted_probs.cumsum(-1) - sorted_probs > s.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _generator(s: GenerationSettings, device) -> torch.Generator | None:
    return None if s.seed is None else torch.Generator(device=device).manual_seed(s.seed)


@torch.inference_mode()
def generate_ids(model: GPT, prompt_ids: list[int], s: GenerationSettings, eot_id: int = 50256,
                 should_stop: Callable[[], bool] | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; ends at <|endoftext|> (not yielded) or max_new_tokens.

    The prompt must already fit (see `fit_prompt`). `should_stop` is polled between tokens.
    """
    device = model.wte.weight.device
    gen = _generator(s, device)
    ids = torch.tensor([prompt_ids], device=device)
    cache = model.new_cache(1, len(prompt_ids) + s.max_new_tokens) if s.use_cache else None
    step_input = ids
    for _ in range(s.max_new_tokens):
        if should_stop is not None and should_stop():
            return
        logits = model(step_input if cache is not None else ids, cache=cache, last_only=True)[:, -1]
        nxt = sample_next(logits, s, gen)
        token = int(nxt)
        if token == eot_id:
            return
        yield token
        step_input = nxt.view(1, 1)
        if cache is None:
            ids = torch.cat([ids, step_input], dim=1)


def _stop_holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                best = max(best, n)
                break
    return best


class TextStream:
    """Token ids in, text pieces out, for one sequence: the rules every streaming path shares.

    Pieces never split a UTF-8 character and never contain (part of) a stop string: text that
    could still grow into one is held back. After a stop string appears, `stopped` is True and the
    text ends before it.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()):
        self.decoder, self.stops = tokenizer.stream_decoder(), tuple(stop_strings)
        self.text, self.emitted, self.stopped = "", 0, False

    def push(self, token: int) -> str:
        """The new text that is safe to show after `token` ("" if none yet)."""
        self.text += self.decoder.push(token)
        hits = [i for i in (self.text.find(stop, max(0, self.emitted - len(stop))) for stop in self.stops) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            return self._emit(len(self.text))
        return self._emit(len(self.text) - _stop_holdback(self.text, self.stops))

    def finish(self) -> str:
        """The rest of the text once generation has ended (without a stop string)."""
        self.text += self.decoder.flush()
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        piece = self.text[self.emitted:upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return piece


def stream_text(model: GPT, tokenizer: Tokenizer, prompt: str | list[int], s: GenerationSettings,
                should_stop: Callable[[], bool] | None = None, result: GenerationResult | None = None) -> Iterator[str]:
    """Yield the continuation of `prompt` as text pieces as they decode (see `TextStream`).

    Pass a `GenerationResult` to have it filled with the final text, ids and the reason generation ended.
    """
    result = result if result is not None else GenerationResult("", [])
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    ids, max_new, result.prompt_tokens_dropped = fit_prompt(ids, s.max_new_tokens, model.config.n_positions,
                                                             tokenizer.eot_id)
    settings = GenerationSettings(**{**s.__dict__, "max_new_tokens": max_new})
    stream = TextStream(tokenizer, s.stop_strings)
    result.stopped_by = "length"
    n = 0
    for n, token in enumerate(generate_ids(model, ids, settings, tokenizer.eot_id, should_stop), start=1):
        result.ids.append(token)
        piece = stream.push(token)
        if piece:
            yield piece
        if stream.stopped:
            result.stopped_by = "stop_string"
            break
    else:
        piece = stream.finish()
        if piece:
            yield piece
        if n < max_new:
            result.stopped_by = "cancelled" if should_stop is not None and should_stop() else "eot"
    result.text = stream.text


def generate(model: GPT, tokenizer: Tokenizer, prompt: str | list[int], s: GenerationSettings) -> GenerationResult:
    result = GenerationResult("", [])
    for _ in stream_text(model, tokenizer, prompt, s, result=result):
        pass
    return result


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


@torch.inference_mode()
def generate_batch(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str | list[int]],
                   s: GenerationSettings) -> list[GenerationResult]:
    """Generate for several prompts at once: left padding, one KV cache, per-row stopping."""
    if not prompts:
        return []
    device = model.wte.weight.device
    context = model.config.n_positions
    encoded, dropped = [], []
    max_new = s.max_new_tokens
    for p in prompts:
        ids, max_new, d = fit_prompt(tokenizer.encode(p) if isinstance(p, str) else list(p), s.max_new_tokens,
                                     context, tokenizer.eot_id, fewer_tokens_first=False)
        encoded.append(ids)
        dropped.append(d)
    width = max(map(len, encoded))
    max_new = min(max_new, context - width)
    pad = tokenizer.eot_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    gen = _generator(s, device)
    cache = model.new_cache(len(encoded), width + max_new)
    out: list[list[int]] = [[] for _ in encoded]
    done = [False] * len(encoded)
    reasons = ["length"] * len(encoded)
    step_input = ids
    for _ in range(max_new):
        logits = model(step_input, cache=cache, attention_mask=mask, last_only=True)[:, -1]
        nxt = sample_next(logits, s, gen)
        for row, token in enumerate(nxt.tolist()):
            if done[row]:
                continue
            if token == tokenizer.eot_id:
                done[row], reasons[row] = True, "eot"
                continue
            out[row].append(token)
            if s.stop_strings and _cut_at_stop(tokenizer.decode(out[row][-64:]), s.stop_strings)[1]:
                done[row], reasons[row] = True, "stop_string"
        if all(done):
            break
        step_input = torch.where(torch.tensor(done, device=device), pad, nxt).view(-1, 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    results = []
    for row_ids, d, reason in zip(out, dropped, reasons):
        text, _ = _cut_at_stop(tokenizer.decode(row_ids), s.stop_strings)
        results.append(GenerationResult(text, row_ids, d, reason))
    return results


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int = 100) -> None:
    """The sampling flags, shared by every CLI that generates text."""
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), higher = more random")
    g.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set of tokens with this mass")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")


def settings_from_args(args: argparse.Namespace, **extra) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed, **extra)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Device, dtype and tokenizer flags, shared by every CLI that loads a model."""
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cuda, mps or cpu (default: $LLM_DEVICE, else the best available)")
    g.add_argument("--precision", default=None, choices=PRECISIONS, help="inference precision of the weights; int8 is the fastest on CPU (default: $LLM_PRECISION or fp32)")
    g.add_argument("--bpe-dir", default=None, help="folder with GPT-2's encoder.json + vocab.bpe for offline use (default: $LLM_BPE_DIR)")


def main(argv: Sequence[str] | None = None) -> int:
    from llm.checkpoint import CheckpointError
    from llm.device import pick_device
    from llm.download import DownloadError
    from llm.tokenizer import TokenizerError, get_tokenizer
    from llm.weights import BASE_ENV, load_model, resolve_base

    p = argparse.ArgumentParser(prog="python -m llm.generate", description="Continue a prompt with a GPT-2 model, streaming the text.")
    p.add_argument("--base", default=None, help=f"preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or checkpoint directory (default: ${BASE_ENV}, else gpt2)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--json", action="store_true", help="print one JSON object (completion, completion_ids, ...) instead of streaming")
    add_generation_args(p)
    add_runtime_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(format="note: %(message)s", level=logging.WARNING, stream=sys.stderr)
    try:
        settings = settings_from_args(args)
        tokenizer = get_tokenizer(args.bpe_dir)
        # task="lm": a classifier's checkpoint continues no text; it is refused before its weights are read.
        model, _ = load_model(resolve_base(args.base), pick_device(args.device), args.precision, hint=BASE_HINT, task="lm")
    except (CheckpointError, DownloadError, TokenizerError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = GenerationResult("", [])
    pieces = stream_text(model, tokenizer, args.prompt, settings, result=result)
    if args.json:
        for _ in pieces:
            pass
        print(json.dumps({"prompt": args.prompt, "completion": result.text, "completion_ids": result.ids,
                          "stopped_by": result.stopped_by, "prompt_tokens_dropped": result.prompt_tokens_dropped}))
    else:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
