"""Instruction data, batching and the instruction-following model the app calls.

    data:   fetch_data / read_entries (validate) / split_entries (85/10/5 in file order, like the book)
    batch:  encode_example + collate (targets shifted by one, -100 after <|endoftext|>, optional prompt masking)
    model:  InstructionModel.load(...).stream(instruction, input, settings, history) / .respond(...)

The prompt template itself lives in `llm/prompt.py`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from llm.checkpoint import CheckpointError
from llm.generate import GenerationResult, GenerationSettings, stream_text
from llm.prompt import STOP_STRINGS, format_prompt, template_metadata

log = logging.getLogger("llm")

DATA_ENV = "LLM_INSTRUCTION_DATA"
ALPACA_ENV = "LLM_ALPACA_DATA"
CHECKPOINT_ENV = "LLM_INSTRUCT_CHECKPOINT"
DEFAULT_CHECKPOINT = "checkpoints/instruct"
DATA_URL = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
ALPACA_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
CREATE_HINT = "Create it with: python -m finetune.instruct train --out checkpoints/instruct"
IGNORE_INDEX = -100
FIELDS = ("instruction", "input", "output")


class InstructionDataError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def fetch_data(path: str | os.PathLike | None = None, *, alpaca: bool = False, data_dir: str | os.PathLike = "data/instruction") -> Path:
    """The data file: `path`, else $LLM_INSTRUCTION_DATA ($LLM_ALPACA_DATA with alpaca=True), else download it."""
    env, url = (ALPACA_ENV, ALPACA_URL) if alpaca else (DATA_ENV, DATA_URL)
    return local_or_download(path, env, url, data_dir, "instruction data")


def local_or_download(path: str | os.PathLike | None, env: str, url: str, data_dir: str | os.PathLike, what: str,
                      sha256: str | None = None) -> Path:
    """`path`, else $env, else `url` downloaded into data_dir (checked against sha256 when given)."""
    from llm.download import download

    chosen = path or os.environ.get(env)
    if chosen:
        src = Path(chosen).expanduser()
        if not src.is_file():
            raise InstructionDataError(f"{what} file {src} does not exist (from --data or ${env}).")
        return src
    return download(url, Path(data_dir) / url.rsplit("/", 1)[1], sha256=sha256,
                    offline_hint=f"pass a local copy with --data PATH or ${env}=PATH.")


def read_json_list(path: str | os.PathLike, what: str) -> list:
    """The JSON list in `path`, or InstructionDataError saying what is wrong (`what`: the objects it should hold)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InstructionDataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise InstructionDataError(f"{path} must hold a JSON list of {what} objects")
    return data


def read_entries(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Valid entries (instruction/input/output strings, instruction and output non-empty) and one problem line per bad entry."""
    data = read_json_list(path, "{instruction, input, output}")
    good, problems = [], []
    for i, e in enumerate(data):
        if not isinstance(e, dict):
            problems.append(f"entry {i}: not an object")
            continue
        e = {**e, "input": e.get("input", "")}
        bad = [f for f in FIELDS if not isinstance(e.get(f), str)]
        if bad:
            problems.append(f"entry {i}: {', '.join(bad)} missing or not a string")
        elif not e["instruction"].strip() or not e["output"].strip():
            problems.append(f"entry {i}: empty instruction or output")
        else:
            good.append({f: e[f] for f in FIELDS})
    if not good:
        raise InstructionDataError(f"{path} has no valid entries ({len(problems)} bad)")
    return good, problems


def split_entries(entries: Sequence[dict], train: float = 0.85, test: float = 0.10) -> dict[str, list[dict]]:
    """In file order, like the book: 85% train, 10% test, the rest (5%) validation (935/110/55 for 1,100)."""
    n_train, n_test = int(len(entries) * train), int(len(entries) * test)
    return {"train": list(entries[:n_train]), "test": list(entries[n_train:n_train + n_test]),
            "val": list(entries[n_train + n_test:])}


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------

@dataclass
class Example:
    ids: list[int]  # prompt + response tokens, without the final <|endoftext|>
    prompt_len: int


def encode_example(tokenizer, entry: dict, history: Sequence[dict] = ()) -> Example:
    """Prompt + response; with `history` (earlier entries), their turns come first, as the app sends a follow-up
    (`turn_ids`), and count as prompt: the loss is on the last response only."""
    prompt = [t for past in history for t in turn_ids(tokenizer, past["instruction"], past["output"])]
    prompt += tokenizer.encode(format_prompt(entry["instruction"], entry.get("input", "")))
    return Example(prompt + tokenizer.encode(entry["output"]), len(prompt))


def turn_ids(tokenizer, instruction: str, response: str) -> list[int]:
    """One earlier exchange as it precedes a follow-up question: its prompt, its response, <|endoftext|>."""
    return tokenizer.encode(format_prompt(instruction) + response) + [tokenizer.eot_id]


def collate(examples: Sequence[Example], eot_id: int, mask_prompt: bool = False,
            max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (B, T) and padded per batch.

    Each sequence is prompt + response + <|endoftext|>; targets are the inputs shifted by one.
    Inputs are padded with <|endoftext|>; every target after the first <|endoftext|> is -100
    (ignored by the loss), and so are the prompt's targets with `mask_prompt`. `max_length` caps T.
    """
    width = max(len(e.ids) for e in examples)  # len(ids + [eot]) - 1
    inputs = torch.full((len(examples), width), eot_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        seq = e.ids + [eot_id]
        inputs[row, :len(seq) - 1] = torch.tensor(seq[:-1])
        targets[row, :len(seq) - 1] = torch.tensor(seq[1:])
        if mask_prompt:
            targets[row, :max(e.prompt_len - 1, 0)] = IGNORE_INDEX
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return inputs, targets


def token_loss_sum(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the targets that are not -100.

    Logits are computed only where a target counts: with prompt masking that skips most of the
    50k-way LM head, the costliest layer of a small GPT-2.
    """
    import torch.nn.functional as F

    keep = y != IGNORE_INDEX
    h = model.hidden_states(x)[keep]
    return F.cross_entropy(model.lm_head(h).float(), y[keep], reduction="sum")


def batched_loss(model, examples: Sequence[Example], eot_id: int, device, *, batch_size: int = 8, mask_prompt: bool = True,
                 max_length: int | None = None) -> float:
    """Mean cross-entropy per target token over `examples` (no gradients)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            x, y = collate(examples[i:i + batch_size], eot_id, mask_prompt, max_length)
            y = y.to(device)
            total += token_loss_sum(model, x.to(device), y).item()
            count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------
# the model the app calls
# ---------------------------------------------------------------------------------------------

def default_settings() -> GenerationSettings:
    return GenerationSettings(max_new_tokens=256, stop_strings=STOP_STRINGS)


def with_template_stops(settings: GenerationSettings | None) -> GenerationSettings:
    """`settings` (or the defaults) plus the template's stop strings, so no header is ever echoed."""
    s = settings or default_settings()
    stops = tuple(s.stop_strings) + tuple(x for x in STOP_STRINGS if x not in s.stop_strings)
    return GenerationSettings(**{**s.__dict__, "stop_strings": stops})


def checkpoint_path(checkpoint: str | os.PathLike | None = None) -> Path:
    """The flag, else $LLM_INSTRUCT_CHECKPOINT, else checkpoints/instruct."""
    return Path(checkpoint or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT)


class InstructionModel:
    """An instruction-tuned GPT-2: load once, then `stream` or `respond` per request."""

    def __init__(self, model, tokenizer, config: dict | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config or {}

    @classmethod
    def load(cls, checkpoint: str | os.PathLike | None = None, device=None, precision: str | None = None,
             bpe_dir: str | None = None) -> "InstructionModel":
        from llm.device import pick_device
        from llm.tokenizer import get_tokenizer
        from llm.weights import load_model

        path = checkpoint_path(checkpoint)
        if not path.exists():  # a file is left to load_model, which says what it is (a pickle, say)
            raise CheckpointError(f"No instruction checkpoint at {path}. {CREATE_HINT}")
        # task="lm": a spam classifier's checkpoint is refused before its weights are read.
        model, config = load_model(path, pick_device(device), precision, hint=CREATE_HINT, task="lm")
        check_template(config, path)
        return cls(model, get_tokenizer(bpe_dir), config)

    @property
    def follows_conversations(self) -> bool:
        """Whether this checkpoint was trained with earlier exchanges before the instruction (`finetune.instruct
        train --history-fraction`). One trained on single exchanges answers a follow-up with its last answer
        again, so the app gives it no history."""
        return bool((self.config.get("metadata") or {}).get("conversations"))

    def prompt_ids(self, instruction: str, input: str = "", history: Sequence[tuple[str, str]] | None = None,
                   max_new_tokens: int = 256) -> list[int]:
        """The current prompt after as many recent (instruction, response) turns as fit the context."""
        tok = self.tokenizer
        ids = tok.encode(format_prompt(instruction, input))
        budget = self.model.config.n_positions - min(max_new_tokens, self.model.config.n_positions - 1)
        for past_instruction, past_response in reversed(list(history or [])):  # newest first; oldest dropped first
            turn = turn_ids(tok, past_instruction, past_response)
            if len(turn) + len(ids) > budget:
                break
            ids = turn + ids
        return ids

    def stream(self, instruction: str, input: str = "", settings: GenerationSettings | None = None,
               history: list[tuple[str, str]] | None = None, should_stop: Callable[[], bool] | None = None,
               result: GenerationResult | None = None) -> Iterator[str]:
        s = with_template_stops(settings)
        ids = self.prompt_ids(instruction, input, history, s.max_new_tokens)
        yield from stream_text(self.model, self.tokenizer, ids, s, should_stop=should_stop, result=result)

    def respond(self, instruction: str, input: str = "", settings: GenerationSettings | None = None,
                history: list[tuple[str, str]] | None = None, should_stop: Callable[[], bool] | None = None) -> str:
        return "".join(self.stream(instruction, input, settings, history, should_stop)).strip()

    def respond_batch(self, entries: Sequence[dict], settings: GenerationSettings | None = None,
                      batch_size: int = 16, progress: bool = False,
                      histories: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[str]:
        """Responses for many {instruction, input} entries (each after its history, if given), in length-sorted batches."""
        from tqdm import tqdm

        from llm.generate import generate_batch

        s = with_template_stops(settings)
        prompts = [self.prompt_ids(e["instruction"], e.get("input", ""), histories[i] if histories else None, s.max_new_tokens)
                   for i, e in enumerate(entries)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out = [""] * len(prompts)
        for i in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch", disable=not progress):
            idx = order[i:i + batch_size]
            for j, r in zip(idx, generate_batch(self.model, self.tokenizer, [prompts[j] for j in idx], s)):
                out[j] = r.text.strip()
        return out


def check_template(config: dict, path) -> None:
    """Refuse a checkpoint trained with another prompt template; note one that records none."""
    recorded = config.get("metadata", {}).get("prompt_template")
    if recorded is None:
        log.warning("%s records no prompt template; assuming the Alpaca template of llm/prompt.py", path)
    elif recorded != template_metadata():
        name = recorded.get("name") if isinstance(recorded, dict) else recorded  # any JSON value may be there
        raise CheckpointError(f"{path} was trained with another prompt template ({repr(name)[:40]}) than "
                              f"llm/prompt.py ({template_metadata()['name']!r}); retrain it. {CREATE_HINT}")
