"""The serving runtime: the registry (which models) + the engine (how they run), one per process.

The chat app and the HTTP API both call these few methods; neither owns a model, a thread or a limit.

    runtime = Runtime.from_env()            # flags or $LLM_* env vars; models start loading now
    await runtime.classify(["WINNER!!"])    # -> [("spam", 0.99)]
    stream = await runtime.answer("Name three colours.", history=[], settings=GenerationSettings())
    async for piece in stream: ...          # text pieces, streamed from the batched engine
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Sequence

from llm.generate import GenerationSettings
from llm.serving.engine import GenerationEngine
from llm.serving.stream import Stream
from llm.serving.limits import EngineLimits
from llm.serving.registry import (INSTRUCT_MODEL_ID, SPAM_MODEL_ID, ModelRegistry, ModelSpec, ModelUnavailable,
                                  default_specs)

__all__ = ["Runtime", "ModelUnavailable", "ContextOverflow", "get_runtime"]


class ContextOverflow(ValueError):
    """The prompt plus the tokens asked for do not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int):
        super().__init__(f"The model reads at most {context:,} tokens; this prompt has {prompt_tokens:,} and asks for "
                         f"{max_new_tokens:,} more. Shorten the message or ask for fewer tokens.")
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context


class _RowScorer:
    """Every row the spam model scores in the engine, shaped as the engine's classify contract: token rows in,
    p_spam out. The texts of spam checks (SpamClassifier.rows) and the occlusions of explanations (explain_rows)
    are both rows, so every caller's checks and explanations share passes, and the engine's token budget counts
    a row without tokenizing it again."""

    def __init__(self, classifier):
        self.classifier = classifier

    @staticmethod
    def row_tokens(row: list[int]) -> int:
        return len(row)

    def classify(self, rows: list[list[int]]) -> list[float]:
        return self.classifier.probabilities(self.classifier.logits_of_ids(rows))


class Runtime:
    def __init__(self, specs: list[ModelSpec], limits: EngineLimits | None = None, load_now: bool = True):
        self.engine = GenerationEngine(limits or EngineLimits.from_env())
        self._scorer: _RowScorer | None = None
        self.registry = ModelRegistry([replace(s, loader=self._warmed(s.loader)) if s.model_id == INSTRUCT_MODEL_ID
                                       else s for s in specs])
        if load_now:
            self.registry.start()

    def _warmed(self, load):
        """The instruction model's loader, followed by one token through the engine: that allocates the KV
        cache and warms the kernels while the model counts as loading, not during the first user's answer."""
        def load_and_warm():
            lm = load()
            if lm is not None:
                self.engine.generate(lm, [lm.tokenizer.eot_id], GenerationSettings(max_new_tokens=1), timeout=120)
            return lm
        return load_and_warm

    @classmethod
    def from_env(cls, spam_checkpoint=None, instruct_checkpoint=None, device=None, precision=None, bpe_dir=None,
                 limits: EngineLimits | None = None, load_now: bool = True) -> "Runtime":
        specs = default_specs(spam_checkpoint, instruct_checkpoint, device, precision, bpe_dir)
        return cls(specs, limits, load_now)

    async def classify(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(label, p_spam) per text, batched with every other caller's texts by the engine."""
        return [(v.label, v.p_spam) for v in await self.verdicts(texts)]

    async def verdicts(self, texts: Sequence[str], threshold: float | None = None) -> list:
        """llm.spam.Verdict(label, p_spam, band, threshold) per text, batched like `classify`. `threshold` overrides the
        checkpoint's operating point for this call (labels and bands move; probabilities do not). Raises ValueError
        on an empty text."""
        from llm.spam import SPAM_THRESHOLD, Verdict

        classifier, scorer = await self._spam_model()
        rows = await asyncio.to_thread(classifier.rows, list(texts))  # tokenizing: off the event loop (no torch)
        p = await self.engine.classify(scorer, rows)
        t = threshold if threshold is not None else getattr(classifier, "threshold", SPAM_THRESHOLD)
        return [Verdict.of(q, t) for q in p]

    async def explain(self, texts: Sequence[str]) -> list:
        """llm.spam.Explanation per text (occlusion), its rows scored by the engine in turns with every other
        caller's work. Raises ValueError on an empty text."""
        from llm.spam import explanation

        classifier, scorer = await self._spam_model()
        # tokenizing up to 129 variants per text: off the event loop (no torch here, so no OpenMP team either)
        prepared = await asyncio.to_thread(lambda: [classifier.explain_rows(t) for t in texts])
        p = await self.engine.classify(scorer, [row for _, rows in prepared for row in rows])
        out, start = [], 0
        for words, rows in prepared:
            out.append(explanation(words, p[start:start + len(rows)]))
            start += len(rows)
        return out

    async def _spam_model(self):
        """The spam classifier (loaded or loading) and the one row scorer of it that every caller shares."""
        classifier = await self.registry.get(SPAM_MODEL_ID)
        if self._scorer is None or self._scorer.classifier is not classifier:
            self._scorer = _RowScorer(classifier)
        return classifier, self._scorer

    async def answer(self, instruction: str, history: Sequence[tuple[str, str]] = (), input: str = "",
                     settings: GenerationSettings | None = None, clamp: bool = False,
                     history_if_trained: bool = False) -> Stream:
        """Queue the assistant's answer to `instruction` (after `history`); iterate the Stream for its text.

        The oldest history is dropped first to make room. If the prompt and max_new_tokens still do not fit
        the context, `clamp` lowers max_new_tokens to what fits (the app); otherwise ContextOverflow is raised
        (the API, as OpenAI's does). The question itself is never cut. `history_if_trained` (the app) drops the
        history for a checkpoint not trained on conversations (InstructionModel.follows_conversations). Raises
        ModelUnavailable, or EngineBusy when the queue is full."""
        from llm.instruct import with_template_stops

        lm = await self.registry.get(INSTRUCT_MODEL_ID)
        if history_if_trained and not lm.follows_conversations:
            history = ()
        s = with_template_stops(settings)
        ids = lm.prompt_ids(instruction, input, list(history), s.max_new_tokens)
        context = lm.model.config.n_positions
        if len(ids) + s.max_new_tokens > context:
            if not clamp or len(ids) >= context:
                raise ContextOverflow(len(ids), s.max_new_tokens, context)
            s = replace(s, max_new_tokens=context - len(ids))
        return self.engine.stream(lm, ids, s)

    def health(self) -> dict:
        models = self.registry.status()
        return {"status": "ok" if all(m["ready"] for m in models.values()) else "degraded", "models": models,
                "engine": self.engine.stats()}

    def close(self) -> None:
        self.engine.close()


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process's runtime, created from the environment on first use (the app's entry point)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime.from_env()
    return _runtime
