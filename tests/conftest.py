"""Shared fixtures: a tiny random GPT-2 made on the spot, and the tokenizer.

When ../shared (the offline data beside the checkout) exists, the offline overrides point at it,
so tests that need the real tokenizer, data or base model run; without it they skip cleanly.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
os.environ.setdefault("LLM_HISTORY", "0")  # no chat database unless a test asks for one (tests/test_history.py)
if SHARED.is_dir():
    os.environ.setdefault("LLM_BPE_DIR", str(SHARED / "data/gpt2"))
    os.environ.setdefault("LLM_TEST_BASE", str(SHARED / "models/gpt2-mini"))
    os.environ.setdefault("LLM_SPAM_DATA", str(SHARED / "data/sms_spam/SMSSpamCollection"))
    os.environ.setdefault("LLM_INSTRUCTION_DATA", str(SHARED / "data/instruction/instruction-data.json"))

from llm.checkpoint import save_checkpoint  # noqa: E402
from llm.config import GPTConfig  # noqa: E402
from llm.model import GPT  # noqa: E402
from llm.tokenizer import TokenizerError, get_tokenizer  # noqa: E402

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128)


@pytest.fixture(scope="session")
def tokenizer():
    try:
        return get_tokenizer()
    except TokenizerError as e:
        pytest.skip(f"GPT-2 BPE files unavailable (offline, no LLM_BPE_DIR): {e}")


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random language model saved in the project format."""
    torch.manual_seed(0)
    return save_checkpoint(GPT(TINY).eval(), tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The real base model (gpt2-mini from ../shared, or $LLM_TEST_BASE)."""
    path = os.environ.get("LLM_TEST_BASE")
    if not path or not Path(path).is_dir():
        pytest.skip("no base model: set LLM_TEST_BASE (CI points it at ../shared/models/gpt2-mini)")
    return Path(path)


# ----------------------------------------------------------------------------- serving: stand-ins and runtimes
class KeywordClassifier:
    """Stands in for SpamClassifier's serving contract (rows, explain_rows, logits_of_ids, probabilities), with text
    rows instead of token rows, recording each scored batch in `calls` ("prize" carries the verdict; an explanation's
    rows are the message, then the message without each word)."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def classify(self, texts):
        self.calls.append(list(texts))
        return [("spam", 0.973) if "prize" in t.lower() else ("ham", 0.012) for t in texts]

    def rows(self, texts):
        return list(texts)

    def explain_rows(self, text):
        words = text.split()
        return words, [text] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]

    def logits_of_ids(self, rows):
        return list(rows)

    def probabilities(self, rows):
        return [p for _, p in self.classify(rows)]


def tiny_instruction_model(tokenizer, n_positions: int = 256):
    """A real InstructionModel around a tiny random GPT-2 (answers are random tokens, the path is real)."""
    from llm.instruct import InstructionModel

    torch.manual_seed(0)
    return InstructionModel(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions)).eval(), tokenizer)


@pytest.fixture
def make_runtime(tokenizer):
    """make_runtime(spam=loader, instruct=loader, **engine limits) -> a started Runtime, closed after the test."""
    from llm.serving.limits import EngineLimits
    from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID, ModelSpec
    from llm.serving.runtime import Runtime

    made = []

    def make(spam=KeywordClassifier, instruct=None, **limits):
        specs = [ModelSpec(SPAM_MODEL_ID, "spam classifier", lambda: Path("checkpoints/spam"),
                           "Create it with: python -m finetune.spam train", spam),
                 ModelSpec(INSTRUCT_MODEL_ID, "assistant", lambda: Path("checkpoints/instruct"),
                           "Create it with: python -m finetune.instruct train",
                           instruct or (lambda: tiny_instruction_model(tokenizer)))]
        runtime = Runtime(specs, EngineLimits(**limits))
        made.append(runtime)
        for model_id in (SPAM_MODEL_ID, INSTRUCT_MODEL_ID):
            runtime.registry.load(model_id)  # wait for the background load: tests start from a loaded server
        return runtime

    yield make
    for runtime in made:
        runtime.close()
