"""The continuous-batching engine (llm/serving/engine.py) on a tiny random GPT-2 and the real tokenizer.

What batching must not change: with requests joining and leaving at staggered times, every greedy
output equals the same prompt generated alone (and by the library's single-stream `generate`); a
seeded sampled request gives the same text whatever its neighbours; cancelling one stream leaves the
others' outputs unchanged; stop strings and <|endoftext|> end each row on its own.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from llm.config import GPTConfig
from llm.generate import GenerationSettings, generate
from llm.model import GPT
from llm.serving.engine import EngineBusy, GenerationEngine, _decode_mask
from llm.serving.kv import slot_bytes, slots_for
from llm.serving.limits import EngineLimits

CONFIG = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128)
TEXTS = ["Hello there", "The quick brown fox jumps over the lazy dog and keeps on running far away",
         "One", "Once upon a time in a land far away there lived", "Spam spam spam spam spam spam",
         "What is the capital of France? Tell me in one word please, if you can."]


class LM:
    """What the engine needs of an instruction model: .model and .tokenizer."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer


class EotAt:
    """The real tokenizer, with another token id standing in for <|endoftext|> (to end rows on demand)."""

    def __init__(self, tokenizer, eot_id: int):
        self._tok, self.eot_id = tokenizer, eot_id

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(CONFIG).eval()
    with torch.no_grad():  # a sharper random model: greedy text varies instead of repeating one token
        for p in m.parameters():
            p.mul_(4)
    return m


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.encode(t) for t in TEXTS]


def run_staggered(engine, lm, prompts, settings, gap=0.004):
    """Each prompt from its own thread, started `gap` seconds apart: requests join a running batch."""
    out = [None] * len(prompts)

    def worker(i):
        time.sleep(gap * i)
        s = settings[i] if isinstance(settings, list) else settings
        out[i] = engine.generate(lm, prompts[i], s)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_greedy_batched_equals_alone_and_the_library(model, tokenizer, prompts):
    lm = LM(model, tokenizer)
    s = GenerationSettings(max_new_tokens=24)
    library = [generate(model, tokenizer, p, s) for p in prompts]
    alone_engine = GenerationEngine(EngineLimits(max_running=1))
    alone = [alone_engine.generate(lm, p, s) for p in prompts]
    engine = GenerationEngine(EngineLimits(max_running=3, prefill_chunk=5))  # queueing, slot reuse, chunked prefill
    batched = run_staggered(engine, lm, prompts, s)
    for lib, a, b in zip(library, alone, batched):
        assert b.ids == a.ids == lib.ids
        assert b.text == a.text == lib.text and b.stopped_by == lib.stopped_by
    assert engine.steps < sum(len(r.ids) for r in batched)  # steps were shared: the rows really ran together
    alone_engine.close(), engine.close()


def test_seeded_sampling_is_the_same_whatever_the_neighbours(model, tokenizer, prompts):
    lm = LM(model, tokenizer)
    sampled = GenerationSettings(max_new_tokens=20, temperature=1.0, top_k=40, top_p=0.9, seed=7)
    engine = GenerationEngine(EngineLimits(max_running=4, prefill_chunk=8))
    alone = engine.generate(lm, prompts[1], sampled).ids
    neighbours = [GenerationSettings(max_new_tokens=20, temperature=0.7, seed=i) for i in range(len(prompts))]
    neighbours[1] = sampled
    crowded = run_staggered(engine, lm, prompts, neighbours)
    assert crowded[1].ids == alone
    assert generate(model, tokenizer, prompts[1], sampled).ids == alone  # and the library agrees
    engine.close()


def test_cancelling_one_stream_leaves_the_others_unchanged(model, tokenizer, prompts):
    lm = LM(model, tokenizer)
    s = GenerationSettings(max_new_tokens=30)
    expected = [generate(model, tokenizer, p, s).ids for p in prompts[:3]]
    engine = GenerationEngine(EngineLimits(max_running=4))
    results, done = {}, threading.Event()
    cancelled_after = []

    def sink_for(i):
        def sink(kind, value):
            if kind == "text" and i == 0 and not cancelled_after:
                cancelled_after.append(1)
                engine.cancel(seqs[0])
            if kind == "done":
                results[i] = value
                if len(results) == 3:
                    done.set()
        return sink

    seqs = {}
    for i in range(3):
        seqs[i] = engine.submit(lm, prompts[i], s, sink_for(i))
    assert done.wait(30)
    assert results[0].stopped_by == "cancelled" and len(results[0].ids) < 30
    assert results[1].ids == expected[1] and results[2].ids == expected[2]
    assert engine.stats()["running"] == 0  # every slot given back
    engine.close()


def test_stop_strings_and_end_of_text_end_each_row_on_its_own(model, tokenizer, prompts):
    s = GenerationSettings(max_new_tokens=24)
    free = [generate(model, tokenizer, p, s) for p in prompts[:3]]
    eot_id = free[0].ids[5]  # row 0 "ends its text" at its 6th token (or earlier if that id comes sooner)
    tok = EotAt(tokenizer, eot_id)
    stop = free[1].text[8:11]  # row 1 stops at a string from its own greedy text
    settings = [s, GenerationSettings(max_new_tokens=24, stop_strings=(stop,)), s]
    expected = [generate(model, tok, p, st) for p, st in zip(prompts[:3], settings)]
    engine = GenerationEngine(EngineLimits(max_running=3))
    got = run_staggered(engine, LM(model, tok), prompts[:3], settings, gap=0)
    assert got[0].stopped_by == "eot" and got[0].ids == expected[0].ids and eot_id not in got[0].ids
    assert got[1].stopped_by == "stop_string" and stop not in got[1].text and got[1].text == expected[1].text
    assert got[2].ids == expected[2].ids  # the third row ran on to its own end
    engine.close()


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(model, tokenizer, prompts):
    lm = LM(model, tokenizer)
    engine = GenerationEngine(EngineLimits(max_running=2, prefill_chunk=4))
    long_prompt = tokenizer.encode(" ".join(TEXTS))  # ~60 tokens: ~15 chunks
    s = GenerationSettings(max_new_tokens=40)
    steps_at = {}

    def sink(kind, value):
        if kind == "text" and "first" not in steps_at:
            steps_at["first"] = engine.steps

    short = threading.Thread(target=lambda: engine.generate(lm, prompts[2], s))
    short.start()
    time.sleep(0.05)  # the short one is decoding
    before = engine.steps
    result = engine.generate(lm, long_prompt, s)
    short.join()
    assert result.ids == generate(model, tokenizer, long_prompt, s).ids
    assert engine.steps > before  # the running stream kept decoding while the long prompt was prefilled
    engine.close()


def test_the_queue_is_bounded_and_slots_are_reused(model, tokenizer, prompts):
    lm = LM(model, tokenizer)
    engine = GenerationEngine(EngineLimits(max_running=1, max_waiting=2))
    gate = threading.Event()
    done = []
    first = engine.submit(lm, prompts[0], GenerationSettings(max_new_tokens=100),
                          lambda k, v: (gate.wait(5), done.append(v)) if k == "done" else None)
    while engine.stats()["running"] == 0:
        time.sleep(0.001)
    engine.submit(lm, prompts[1], GenerationSettings(max_new_tokens=2), lambda k, v: k == "done" and done.append(v))
    engine.submit(lm, prompts[2], GenerationSettings(max_new_tokens=2), lambda k, v: k == "done" and done.append(v))
    with pytest.raises(EngineBusy, match="2 requests are already waiting"):
        engine.submit(lm, prompts[3], GenerationSettings(max_new_tokens=2), lambda k, v: None)
    engine.cancel(first)
    gate.set()
    deadline = time.monotonic() + 10
    while len(done) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(done) == 3 and engine.stats()["slots"] == 1  # three requests through one slot
    engine.close()


def test_kv_memory_is_bounded_and_stated():
    mini = GPTConfig(n_layer=10, n_head=8, n_embd=512, n_positions=1024)
    gpt2 = GPTConfig(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    assert slot_bytes(mini, torch.float32) == 40 * 2**20  # what the README states
    assert slot_bytes(gpt2, torch.float32) == 72 * 2**20
    assert slots_for(mini, torch.float32, max_running=32, budget_mb=2048) == 32  # 1.25 GiB
    assert slots_for(gpt2, torch.float32, max_running=32, budget_mb=2048) == 28
    assert slots_for(gpt2, torch.float32, max_running=32, budget_mb=10) == 1  # never zero


def test_decode_mask_lets_each_row_see_its_own_positions():
    mask = _decode_mask(torch.tensor([1, 4]), 5, torch.bfloat16)
    assert mask.shape == (2, 1, 1, 5) and mask.dtype == torch.bfloat16
    assert torch.equal(mask[:, 0, 0] == 0, torch.tensor([[True, True, False, False, False], [True] * 5]))
    assert torch.isinf(mask[0, 0, 0, 2:]).all()


def test_classification_interleaves_with_decoding(model, tokenizer, prompts):
    """A long classification job does not hold up a running chat: decode steps run between its batches."""
    lm = LM(model, tokenizer)
    engine = GenerationEngine(EngineLimits(max_running=2, classify_batch=4))
    seen = []

    class SlowClassifier:
        def classify(self, texts):
            seen.append(("classify", engine.steps))
            time.sleep(0.005)
            return [("spam" if "win" in t else "ham", 0.9 if "win" in t else 0.1) for t in texts]

    async def main():
        chat = engine.stream(lm, prompts[0], GenerationSettings(max_new_tokens=30))
        verdicts = asyncio.create_task(engine.classify(SlowClassifier(), [f"win {i}" if i % 2 else f"hi {i}" for i in range(40)]))
        text = "".join([p async for p in chat])
        return text, await verdicts

    text, verdicts = asyncio.run(main())
    assert [v[0] for v in verdicts] == ["ham", "spam"] * 20  # each text its own verdict, in order
    assert len(seen) == 10  # 40 texts, 4 per forward
    steps = [s for _, s in seen]
    assert steps != sorted(set(steps))[:1] * len(steps) and len(set(steps)) > 3  # decode steps ran between batches
    engine.close()


def test_stream_async_iterator_and_cancel_on_exit(model, tokenizer, prompts):
    lm = LM(model, tokenizer)
    engine = GenerationEngine(EngineLimits(max_running=2))

    async def main():
        full = engine.stream(lm, prompts[1], GenerationSettings(max_new_tokens=12))
        text = "".join([p async for p in full])
        assert full.result.text == text and full.prompt_tokens == len(prompts[1])
        early = engine.stream(lm, prompts[0], GenerationSettings(max_new_tokens=120))
        async for _ in early:
            break  # the consumer leaves: the request is cancelled and its slot freed
        for _ in range(200):
            if engine.stats()["running"] == 0:
                return True
            await asyncio.sleep(0.01)
        return False

    assert asyncio.run(main())
    engine.close()


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_other_precisions_batch_too(model, tokenizer, prompts, tmp_path, precision):
    """int8 and bf16 weights decode in batches; greedy rows equal the same precision generating alone."""
    from llm.checkpoint import save_checkpoint
    from llm.weights import load_model

    quantized, _ = load_model(save_checkpoint(model, tmp_path / "m"), "cpu", precision)
    s = GenerationSettings(max_new_tokens=16)
    engine = GenerationEngine(EngineLimits(max_running=4))
    got = run_staggered(engine, LM(quantized, tokenizer), prompts[:4], s, gap=0)
    alone = [generate(quantized, tokenizer, p, s) for p in prompts[:4]]
    agree = sum(g.ids == a.ids for g, a in zip(got, alone))
    assert agree >= 3, [(g.ids, a.ids) for g, a in zip(got, alone)]  # low precision: rounding may differ by batch
    engine.close()


def test_a_forward_pass_stays_within_the_token_budget_and_jobs_take_turns():
    """Rows x the longest row <= classify_tokens per pass (at least one row, however long), and a short job
    submitted behind a long one is served at the next pass, not after the long one."""
    engine = GenerationEngine(EngineLimits(classify_batch=32, classify_tokens=100))
    passes = []

    class Counted:
        @staticmethod
        def row_tokens(text):
            return len(text)

        def classify(self, texts):
            passes.append(list(texts))
            return [("ham", 0.1)] * len(texts)

    clf = Counted()

    async def main():
        with engine._lock:  # the scheduler waits until both jobs are in line (the lock is re-entrant)
            long_job = asyncio.ensure_future(engine.classify(clf, ["x" * 40] * 7 + ["y" * 300] + ["x" * 10] * 3))
            await asyncio.sleep(0)
            short_job = asyncio.ensure_future(engine.classify(clf, ["z" * 30]))
            await asyncio.sleep(0)
        return await long_job, await short_job

    long_results, short_results = asyncio.run(asyncio.wait_for(main(), 10))
    assert len(long_results) == 11 and len(short_results) == 1
    assert all(len(p) * max(map(len, p)) <= 100 or len(p) == 1 for p in passes), passes
    assert ["y" * 300] in passes  # over the budget alone: still classified, on its own
    assert "z" * 30 in passes[1]  # the short job was served at the second pass, not after the long one
    assert asyncio.run(engine.classify(clf, [])) == []  # nothing to do: done at once, never queued
    assert asyncio.run(engine.classify(clf, ["after"])) == [("ham", 0.1)]  # and the engine goes on
    engine.close()


def test_one_rows_broken_sampling_ends_that_row_only(model, tokenizer, prompts, monkeypatch):
    import llm.serving.engine as eng_mod
    real = eng_mod.sample_next

    def flaky(logits, s, generator):
        if s.seed == 666:
            raise RuntimeError("probability tensor contains inf")
        return real(logits, s, generator)

    monkeypatch.setattr(eng_mod, "sample_next", flaky)
    lm = LM(model, tokenizer)
    engine = GenerationEngine(EngineLimits(max_running=4))
    good = GenerationSettings(max_new_tokens=12)
    bad = GenerationSettings(max_new_tokens=12, temperature=1.0, seed=666)
    out = {}

    def run(i, s):
        try:
            out[i] = engine.generate(lm, prompts[i], s, timeout=30).ids
        except RuntimeError as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(0, good)), threading.Thread(target=run, args=(1, bad))]
    [t.start() for t in threads], [t.join() for t in threads]
    assert isinstance(out[1], RuntimeError)
    assert out[0] == generate(model, tokenizer, prompts[0], good).ids
    engine.close()


def test_a_tiny_temperature_is_greedy_not_a_crash(model, tokenizer, prompts):
    engine = GenerationEngine(EngineLimits(max_running=2))
    got = engine.generate(LM(model, tokenizer), prompts[0], GenerationSettings(max_new_tokens=8, temperature=1e-300))
    assert got.ids == generate(model, tokenizer, prompts[0], GenerationSettings(max_new_tokens=8)).ids
    engine.close()


def test_a_kv_cache_that_cannot_be_allocated_is_an_error_not_a_hang(model, tokenizer, prompts, monkeypatch):
    import llm.serving.engine as eng_mod

    def no_memory(*args, **kwargs):
        raise MemoryError("cannot allocate the KV cache")

    monkeypatch.setattr(eng_mod, "SlotCache", no_memory)
    engine = GenerationEngine(EngineLimits(max_running=2))
    with pytest.raises(MemoryError):
        engine.generate(LM(model, tokenizer), prompts[0], GenerationSettings(max_new_tokens=4), timeout=10)
    engine.close()


def test_close_fails_what_is_queued_and_refuses_more(model, tokenizer, prompts):
    engine = GenerationEngine(EngineLimits(max_running=1))
    events = []
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(LM(model, tokenizer), prompts[0], GenerationSettings(max_new_tokens=4), lambda k, v: events.append(k))


def test_classify_queue_space_comes_back_on_cancel_and_a_bad_text_fails_only_its_job():
    engine = GenerationEngine(EngineLimits(classify_batch=8))

    class Picky:
        def classify(self, texts):
            if any("bad" in t for t in texts):
                raise ValueError("cannot classify 'bad'")
            return [("ham", 0.1)] * len(texts)

    clf = Picky()

    async def main():
        good = asyncio.create_task(engine.classify(clf, ["fine", "also fine"]))
        broken = asyncio.create_task(engine.classify(clf, ["bad one"]))
        results = await asyncio.gather(good, broken, return_exceptions=True)
        return results

    good, broken = asyncio.run(main())
    assert good == [("ham", 0.1)] * 2 and isinstance(broken, ValueError)
    gate = threading.Event()

    class Slow:
        def classify(self, texts):
            gate.wait(5)
            return [("ham", 0.1)] * len(texts)

    engine.submit_classify(Slow(), ["x"], lambda k, v: None)
    queued = engine.submit_classify(Slow(), ["y"] * 100, lambda k, v: None)
    before = engine.stats()["texts_to_classify"]
    engine.cancel(queued)
    assert engine.stats()["texts_to_classify"] == before - 100  # freed at once, not when it reaches the head
    gate.set()
    engine.close()
