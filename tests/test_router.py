"""The mode router without Chainlit: verdict formatting, pastes, files, bad input, settings,
history and the off-loop streaming bridge (including Stop)."""
from __future__ import annotations

import asyncio
import csv
import io
import threading
import time

import pytest

from llm import router
from llm.router import ASSISTANT_MODE, SPAM_MODE, InputError


class KeywordClassifier:
    """Stands in for SpamClassifier's contract (classify(list[str]) -> [(label, p_spam)]), recording calls."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def classify(self, texts):
        self.calls.append(list(texts))
        return [("spam", 0.973) if "prize" in t.lower() else ("ham", 0.012) for t in texts]


class WordModel:
    """Stands in for InstructionModel.stream: yields words, polls should_stop, records its arguments."""

    def __init__(self, words=("Hello", " there", " friend"), delay=0.0):
        self.words, self.delay, self.calls = words, delay, []

    def stream(self, instruction, input="", settings=None, history=None, should_stop=None):
        self.calls.append({"instruction": instruction, "settings": settings, "history": history})
        for w in self.words:
            if should_stop is not None and should_stop():
                return
            time.sleep(self.delay)
            yield w


def test_mode_for_profiles():
    assert router.mode_for("Assistant") == ASSISTANT_MODE
    assert router.mode_for("Spam check") == SPAM_MODE
    assert router.mode_for(None) == SPAM_MODE  # the default profile
    assert router.mode_for("nonsense") == SPAM_MODE


def test_format_verdict_has_label_probability_and_cue():
    assert router.format_verdict("spam", 0.9734) == "🔴 **Spam — 97.3%** spam probability"
    assert router.format_verdict("ham", 0.0123) == "🟢 **Ham — 1.2%** spam probability"


def test_single_message_gets_one_verdict():
    clf = KeywordClassifier()
    reply = router.spam_reply(clf, "WINNER!! Claim your £900 prize now, call 09061701461")
    assert reply == "🔴 **Spam — 97.3%** spam probability"


def test_several_lines_are_classified_together_in_one_batch():
    clf = KeywordClassifier()
    reply = router.spam_reply(clf, "Claim your prize\n\n  see you at 7  \nok | fine")
    assert clf.calls == [["Claim your prize", "see you at 7", "ok | fine"]]  # one batched call, blank lines dropped
    assert reply.startswith("**3 messages: 1 spam, 2 ham**")
    assert reply.count("🔴") == 1 and reply.count("🟢") == 2
    assert "ok \\| fine" in reply  # pipes escaped so the markdown table holds


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_paste_is_refused_clearly(text):
    with pytest.raises(InputError, match="Paste an SMS"):
        router.spam_reply(KeywordClassifier(), text)


def test_huge_paste_is_refused_clearly():
    with pytest.raises(InputError, match="100,000 characters.*20,000"):
        router.check_spam_text("x" * 100_000)
    with pytest.raises(InputError, match="4,000"):
        router.check_instruction("x" * 100_000)
    with pytest.raises(InputError, match="lines"):
        router.check_spam_text("hi\n" * (router.SPAM_MAX_LINES + 1))


def test_csv_upload_gets_label_and_probability_columns():
    clf = KeywordClassifier()
    data = "id,Message\n1,Win a prize now\n2,see you later\n3,\n".encode()
    result = router.classify_upload(clf, "inbox.csv", data)
    rows = list(csv.DictReader(io.StringIO(result.csv_bytes.decode())))
    assert [r["id"] for r in rows] == ["1", "2", "3"]  # original columns kept
    assert [(r["label"], r["spam_probability"]) for r in rows] == [("spam", "0.9730"), ("ham", "0.0120"), ("", "")]
    assert result.filename == "inbox-labelled.csv" and result.n_rows == 2 and result.n_spam == 1
    assert "1 empty rows skipped" in result.summary


def test_txt_upload_one_message_per_line_batched():
    clf = KeywordClassifier()
    lines = [f"message {i}" for i in range(router.BATCH + 5)]
    progress = []
    result = router.classify_upload(clf, "a.TXT", "\n".join(lines).encode(), progress=lambda d, t: progress.append((d, t)))
    assert [len(c) for c in clf.calls] == [router.BATCH, 5]
    assert progress[-1] == (len(lines), len(lines))
    rows = list(csv.DictReader(io.StringIO(result.csv_bytes.decode())))
    assert rows[0] == {"text": "message 0", "label": "ham", "spam_probability": "0.0120"}


def test_csv_without_text_column_is_refused_clearly():
    with pytest.raises(InputError, match=r"no text column \(columns found: id, amount\).*`text`"):
        router.classify_upload(KeywordClassifier(), "pay.csv", b"id,amount\n1,20\n")


def test_csv_row_with_an_unquoted_comma_is_refused_not_cut_short():
    data = b"text\nWINNER!! Claim your prize now, call 09061701461\nsee you\n\"a, quoted\"\nb,c,d\n"
    with pytest.raises(InputError, match=r"data row 1, 4 has more fields than the header's 1\. .*double quotes"):
        router.classify_upload(KeywordClassifier(), "sms.csv", data)


def test_binary_upload_is_refused_clearly():
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    with pytest.raises(InputError, match="binary"):
        router.classify_upload(KeywordClassifier(), "photo.csv", png)
    with pytest.raises(InputError, match="only .csv and .txt"):
        router.classify_upload(KeywordClassifier(), "photo.png", png)


def test_empty_file_is_refused_clearly():
    with pytest.raises(InputError, match="no messages"):
        router.classify_upload(KeywordClassifier(), "empty.txt", b"\n\n")


def test_generation_settings_from_panel():
    s = router.generation_settings(None)
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens) == (0.0, None, None, 256)
    s = router.generation_settings({"temperature": 0.7, "top_k": 40, "top_p": 0.9, "max_new_tokens": 64})
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens) == (0.7, 40, 0.9, 64)


def test_conversation_keeps_the_previous_exchange():
    conv = router.Conversation()
    assert conv.history() == []
    conv.add("q1", "a1")
    conv.add("q2", "")  # nothing said: not carried
    conv.add("q3", "a3")
    assert conv.history() == [("q3", "a3")]


def test_model_cache_loads_once_and_retries_failures():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("Checkpoint directory checkpoints/instruct does not exist. Run: python -m finetune.instruct")
        return "model"

    cache = router.ModelCache(spam_loader=lambda: "spam", instruct_loader=flaky)
    with pytest.raises(router.ModelUnavailable, match="python -m finetune.instruct"):
        cache.get(ASSISTANT_MODE)
    assert cache.get(ASSISTANT_MODE) == "model" and cache.get(ASSISTANT_MODE) == "model"
    assert calls["n"] == 2


def test_stream_answer_yields_pieces_and_records_history():
    model, conv = WordModel(), router.Conversation()

    async def collect(text):
        return [p async for p in router.stream_answer(model, text, router.generation_settings({}), conv, threading.Event())]

    assert asyncio.run(collect("  hi ")) == ["Hello", " there", " friend"]
    assert conv.history() == [("hi", "Hello there friend")]
    asyncio.run(collect("and then?"))
    assert model.calls[1]["history"] == [("hi", "Hello there friend")]  # previous exchange carried
    with pytest.raises(InputError):
        asyncio.run(collect(""))


def test_generation_runs_off_the_event_loop():
    """While the worker sleeps between tokens the loop keeps ticking (the UI never freezes)."""
    model = WordModel(words=["a"] * 5, delay=0.05)
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)
        t = asyncio.create_task(ticker())
        out = [p async for p in router.stream_answer(model, "go", router.generation_settings({}), router.Conversation(),
                                                     threading.Event())]
        t.cancel()
        return out

    assert asyncio.run(main()) == ["a"] * 5
    assert len(ticks) >= 10  # ~0.25 s of generation, a tick every 10 ms


def test_stop_ends_generation_in_the_worker():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            i += 1
            time.sleep(0.002)
            yield "x"

    async def main():
        stop = threading.Event()
        got = 0
        async for _ in router.iterate_in_thread(endless, stop):
            got += 1
            if got == 3:
                stop.set()  # what @cl.on_stop does
        return got

    got = asyncio.run(main())
    n = len(produced)
    time.sleep(0.05)
    assert len(produced) == n  # the worker really stopped
    assert got < 50


def test_worker_errors_reach_the_caller():
    def broken():
        yield "a"
        raise ValueError("boom")

    async def main():
        return [p async for p in router.iterate_in_thread(broken, threading.Event())]

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(main())


def test_cancelling_the_task_stops_the_worker():
    """Chainlit's Stop also cancels the on_message task: the worker must end then too."""
    produced = []

    def endless():
        while True:
            produced.append(1)
            time.sleep(0.002)
            yield "x"

    async def consume():
        async for _ in router.iterate_in_thread(endless, threading.Event()):
            pass

    async def main():
        task = asyncio.create_task(consume())
        while len(produced) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    time.sleep(0.02)
    n = len(produced)
    time.sleep(0.05)
    assert len(produced) == n


def test_login_only_when_a_password_is_configured(monkeypatch):
    monkeypatch.delenv(router.LOGIN_PASSWORD_ENV, raising=False)
    assert not router.login_enabled() and not router.check_login("admin", "")
    monkeypatch.setenv(router.LOGIN_PASSWORD_ENV, "s3cret")
    monkeypatch.setenv(router.LOGIN_USER_ENV, "ana")
    assert router.login_enabled()
    assert router.check_login("ana", "s3cret")
    assert not router.check_login("ana", "wrong") and not router.check_login("admin", "s3cret")
