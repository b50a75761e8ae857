"""The app's chat rules (llm/serving/chat.py) without Chainlit, on a real serving runtime with stand-in
spam verdicts and a tiny random instruction model: verdict formatting, pastes, files (with progress
and cancellation), bad input, settings, history and streaming answers."""
from __future__ import annotations

import asyncio
import csv
import io
import os
import threading

import pytest
from conftest import KeywordClassifier, tiny_instruction_model

from llm.serving import chat
from llm.serving.chat import ASSISTANT_MODE, SPAM_MODE, InputError


def run(coro):
    return asyncio.run(coro)


def test_mode_for_profiles():
    assert chat.mode_for("Assistant") == ASSISTANT_MODE
    assert chat.mode_for("Spam check") == SPAM_MODE
    assert chat.mode_for(None) == SPAM_MODE  # the default profile
    assert chat.mode_for("nonsense") == SPAM_MODE


def test_format_verdict_has_label_probability_and_cue():
    assert chat.format_verdict("spam", 0.9734) == "🔴 **Spam — 97.3%** spam probability"
    assert chat.format_verdict("ham", 0.0123) == "🟢 **Ham — 1.2%** spam probability"


def test_format_verdict_names_the_band_and_never_says_100_percent():
    assert chat.format_verdict("spam", 0.9996, "spam") == "🔴 **Spam — > 99.9%** spam probability"
    assert chat.format_verdict("ham", 0.0004, "ham") == "🟢 **Ham — < 0.1%** spam probability"
    assert chat.format_verdict("spam", 0.72, "likely spam") == "🟠 **Likely spam — 72.0%** spam probability"
    assert chat.format_verdict("ham", 0.35, "unsure") == "🟡 **Unsure — 35.0%** spam probability (counted as ham)"


def test_a_probability_never_reads_as_the_threshold_it_fell_short_of():
    from llm.spam import Verdict
    assert chat.format_verdict(*Verdict.of(0.499816, 0.5)) == (
        "🟡 **Unsure — 49.98%** spam probability (counted as ham)")  # not "50.0% ... (counted as ham)"
    assert chat.format_verdict(*Verdict.of(0.4999999, 0.5)).startswith("🟡 **Unsure — < 50.0%**")
    assert chat.format_verdict(*Verdict.of(0.5, 0.5)).startswith("🟠 **Likely spam — 50.0%**")
    assert chat.format_verdict(*Verdict.of(0.7, 0.8)).startswith("🟡 **Unsure — 70.0%**")


def test_user_text_in_a_reply_is_shown_as_typed_never_as_markdown():
    """A message's Markdown (links, images, emphasis, table pipes) must not become the bot's: escaped, after the cut."""
    shown = chat.literal("FREE prize [x](http://evil.co) ![a](http://t.co/p.png) *now* a|b <b>")
    assert shown == ("FREE prize \\[x\\]\\(http\\:\u2060//evil\\.co\\) \\!\\[a\\]\\(http\\:\u2060//t\\.co/p\\.png\\) "
                     "\\*now\\* a\\|b \\<b\\>")
    # bare addresses too: the renderer links any "https://" or "www." in text, so a word joiner splits each
    assert chat.literal("go to https://bit.ly/x or WWW.evil.co") == "go to https\\:\u2060//bit\\.ly/x or WWW\u2060\\.evil\\.co"
    assert chat.literal("x" * 30 + "[", 24) == "x" * 23 + "…"  # cut first, so no escape is cut in half
    assert chat.literal("two\nlines") == "two lines"
    from llm.spam import Explanation
    why = chat.explanation_text(Explanation(0.9, [("co-op", 0.3), ("well-known", -0.2)]))
    assert "**co\\-op** +30 pts" in why and "**well\\-known** −20 pts" in why  # a hyphen stays a hyphen


def test_the_verdict_line_uses_the_classifier_threshold_and_bands(make_runtime):
    class Calibrated(KeywordClassifier):
        threshold = 0.3

        def classify(self, texts):
            self.calls.append(list(texts))
            return [("?", 0.35 if "maybe" in t else 0.25) for t in texts]  # the runtime relabels at the threshold

    reply = run(chat.spam_reply(make_runtime(spam=Calibrated), "maybe a prize\nsee you")).content
    assert "🟠 **Likely spam — 35.0%**" in reply and "🟡 **Unsure — 25.0%** spam probability (counted as ham)" in reply
    assert reply.startswith("**2 messages: 1 spam, 1 ham**")


def test_single_message_gets_one_verdict(make_runtime):
    reply = run(chat.spam_reply(make_runtime(), "WINNER!! Claim your £900 prize now, call 09061701461")).content
    assert reply == "🔴 **Spam — 97.3%** spam probability"


def test_several_lines_are_classified_together_in_one_batch(make_runtime):
    clf = KeywordClassifier()
    reply = run(chat.spam_reply(make_runtime(spam=lambda: clf), "Claim your prize\n\n  see you at 7  \nok | fine")).content
    assert clf.calls == [["Claim your prize", "see you at 7", "ok | fine"]]  # one batched call, blank lines dropped
    assert reply.startswith("**3 messages: 1 spam, 2 ham**")
    assert reply.count("🔴") == 1 and reply.count("🟢") == 2
    assert "ok \\| fine" in reply  # pipes escaped so the markdown table holds


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_paste_is_refused_clearly(text):
    with pytest.raises(InputError, match="Paste an SMS"):
        chat.check_spam_text(text)


def test_huge_paste_is_refused_clearly():
    with pytest.raises(InputError, match="100,000 characters.*20,000"):
        chat.check_spam_text("x" * 100_000)
    with pytest.raises(InputError, match="4,000"):
        chat.check_instruction("x" * 100_000)
    with pytest.raises(InputError, match="lines"):
        chat.check_spam_text("hi\n" * (chat.MAX_TEXTS + 1))


def test_csv_upload_gets_label_and_probability_columns(make_runtime):
    data = "id,Message\n1,Win a prize now\n2,see you later\n3,\n".encode()
    result = run(chat.classify_upload(make_runtime(), "inbox.csv", data))
    rows = list(csv.DictReader(io.StringIO(result.csv_bytes.decode())))
    assert [r["id"] for r in rows] == ["1", "2", "3"]  # original columns kept
    assert [(r["label"], r["spam_probability"]) for r in rows] == [("spam", "0.9730"), ("ham", "0.0120"), ("", "")]
    assert result.filename == "inbox-labelled.csv" and result.n_rows == 2 and result.n_spam == 1
    assert "1 empty row skipped" in result.summary
    assert "| 1 | 🔴 **Spam — 97.3%** spam probability | Win a prize now |" in result.summary  # row 1, shown in the chat
    assert "see you later" not in result.summary and "**inbox-labelled.csv**" in result.summary  # full name, not cut


def test_a_file_summary_lists_the_likeliest_spam_rows_first_and_counts_the_rest(make_runtime):
    data = ("\n".join(["text"] + [f"see you at {i}" if i % 2 else f"Win a prize {i}" for i in range(20)]) + "\n").encode()
    result = run(chat.classify_upload(make_runtime(), "many.csv", data))
    table = [line for line in result.summary.splitlines() if line.startswith("| ") and "Spam" in line]
    assert len(table) == chat.UPLOAD_SPAM_SHOWN and "…and 5 more spam rows in the file." in result.summary


def test_txt_upload_one_message_per_line_with_progress(make_runtime):
    clf = KeywordClassifier()
    lines = [f"message {i}" for i in range(2 * chat.UPLOAD_CHUNK + 5)]
    progress = []

    async def note(done, total, seconds_left):
        progress.append((done, total))
        assert seconds_left >= 0

    result = run(chat.classify_upload(make_runtime(spam=lambda: clf, classify_batch=16), "a.TXT",
                                      "\n".join(lines).encode(), note))
    assert sum(len(c) for c in clf.calls) == len(lines) and max(len(c) for c in clf.calls) == 16
    assert progress == [(chat.UPLOAD_CHUNK, len(lines)), (2 * chat.UPLOAD_CHUNK, len(lines)), (len(lines), len(lines))]
    assert "2,000 / 2,000 messages classified (100%)" in chat.progress_text("a.txt", 2000, 2000, 0)
    rows = list(csv.DictReader(io.StringIO(result.csv_bytes.decode())))
    assert rows[0] == {"text": "message 0", "label": "ham", "spam_probability": "0.0120"}


def test_csv_without_text_column_is_refused_clearly():
    with pytest.raises(InputError, match=r"no text column \(columns found: id, amount\).*`text`"):
        chat.read_upload("pay.csv", b"id,amount\n1,20\n")


def test_csv_row_with_an_unquoted_comma_is_refused_not_cut_short():
    data = b"text\nWINNER!! Claim your prize now, call 09061701461\nsee you\n\"a, quoted\"\nb,c,d\n"
    with pytest.raises(InputError, match=r"data row 1, 4 has more fields than the header's 1\. .*double quotes"):
        chat.read_upload("sms.csv", data)


def test_binary_upload_is_refused_clearly():
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    with pytest.raises(InputError, match="binary"):
        chat.read_upload("photo.csv", png)
    with pytest.raises(InputError, match=r"only \.csv, \.tsv and \.txt"):
        chat.read_upload("photo.png", png)


def test_empty_file_is_refused_clearly():
    with pytest.raises(InputError, match="no messages"):
        chat.read_upload("empty.txt", b"\n\n")


def test_generation_settings_from_panel():
    s = chat.generation_settings(None)
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens) == (0.0, None, None, 256)
    s = chat.generation_settings({"temperature": 0.7, "top_k": 40, "top_p": 0.9, "max_new_tokens": 64})
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens) == (0.7, 40, 0.9, 64)


@pytest.mark.parametrize("sent", [{"temperature": "hot", "top_k": [1], "top_p": None, "max_new_tokens": float("nan")},
                                  {"temperature": 1e9, "top_k": -5, "top_p": 7, "max_new_tokens": 10**9},
                                  {"temperature": True, "top_k": "40", "max_new_tokens": -1}])
def test_settings_a_client_forged_still_give_valid_sampling(sent):
    """The panel's values come from the browser: nonsense falls back to the default, extremes are clamped."""
    s = chat.generation_settings(sent)
    assert 0 <= s.temperature <= 1.5 and 16 <= s.max_new_tokens <= 512
    assert s.top_k is None or 1 <= s.top_k <= 200
    assert s.top_p is None or 0 < s.top_p < 1


def test_conversation_keeps_the_previous_exchange():
    conv = chat.Conversation()
    assert conv.history() == []
    conv.add("q1", "a1")
    conv.add("q2", "")  # nothing said: not carried
    conv.add("q3", "a3")
    assert conv.history() == [("q3", "a3")]


def test_registry_loads_once_and_retries_failures():
    from llm.serving.registry import ModelRegistry, ModelSpec, ModelUnavailable
    from pathlib import Path

    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("No instruction checkpoint at checkpoints/instruct.")
        return "model"

    registry = ModelRegistry([ModelSpec("m", "assistant", lambda: Path("nowhere"),
                                        "Create it with: python -m finetune.instruct train", flaky)])
    with pytest.raises(ModelUnavailable, match="No instruction checkpoint.*python -m finetune.instruct train"):
        run(registry.get("m"))
    assert registry.status()["m"]["error"] and not registry.status()["m"]["ready"]
    assert run(registry.get("m")) == "model" and run(registry.get("m")) == "model"  # retried once, then cached
    assert calls["n"] == 2 and registry.status()["m"]["ready"]


def test_a_load_on_request_runs_in_a_thread_that_ends():
    """A thread left alive after running torch ops keeps an OpenMP team that slows every op of the engine's
    (libgomp stops spinning once it manages more threads than CPUs): the load's thread must end with it."""
    from pathlib import Path

    from llm.serving.registry import ModelRegistry, ModelSpec

    loaders = []
    registry = ModelRegistry([ModelSpec("m", "assistant", lambda: Path("x"), "Create it with: make",
                                        lambda: loaders.append(threading.current_thread()) or "model")])

    async def load_then_check():
        assert await registry.get("m") == "model"
        loaders[0].join(timeout=5)  # still awaited inside the running loop: an executor thread would stay alive
        return loaders[0].is_alive()

    assert run(load_then_check()) is False and loaders[0] is not threading.main_thread()


def test_in_own_thread_hands_back_errors_and_outlives_a_cancelled_caller():
    from llm.serving.registry import in_own_thread

    async def scenario():
        loop_errors = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
        with pytest.raises(ZeroDivisionError):
            await in_own_thread(lambda: 1 / 0)
        gate, finished = threading.Event(), threading.Event()
        task = asyncio.create_task(in_own_thread(lambda: (gate.wait(5), finished.set())))
        await asyncio.sleep(0.05)
        task.cancel()  # the caller goes away while the thread still works
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await asyncio.to_thread(finished.wait, 5)
        await asyncio.sleep(0.1)  # the thread's result reaches the loop: settling a cancelled future must not fail
        return finished.is_set(), loop_errors

    assert run(scenario()) == (True, [])


@pytest.mark.parametrize("conversations", [True, False], ids=["trained-on-conversations", "single-exchanges"])
def test_answers_stream_and_the_previous_exchange_is_carried_if_the_model_was_trained_for_it(make_runtime, tokenizer,
                                                                                            conversations):
    def assistant():
        lm = tiny_instruction_model(tokenizer)
        lm.config = {"metadata": {"conversations": {"fraction": 0.5, "max_turns": 2}}} if conversations else {}
        return lm
    runtime, conv = make_runtime(instruct=assistant), chat.Conversation()
    settings = chat.generation_settings({"max_new_tokens": 8})

    async def ask(text):
        stream = await chat.open_answer(runtime, text, settings, conv)
        pieces = [p async for p in stream]
        conv.add(text.strip(), "".join(pieces))
        return stream, pieces

    first, pieces = run(ask("  hi "))
    assert len(pieces) >= 2 and first.result.text == "".join(pieces)  # streamed piece by piece
    assert conv.history() == [("hi", "".join(pieces))]
    second, _ = run(ask("hi"))
    if conversations:
        assert second.prompt_tokens > first.prompt_tokens  # the same question, now after the previous exchange
    else:  # a model trained on single exchanges would repeat its last answer: it gets none
        assert second.prompt_tokens == first.prompt_tokens
    with pytest.raises(InputError):
        run(ask(""))


def test_generation_runs_off_the_event_loop(make_runtime):
    """While the engine decodes, the loop keeps ticking (the UI never freezes)."""
    runtime = make_runtime()
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(1)
                await asyncio.sleep(0.002)
        t = asyncio.create_task(ticker())
        stream = await chat.open_answer(runtime, "go", chat.generation_settings({"max_new_tokens": 200}),
                                        chat.Conversation())
        n = len([p async for p in stream])
        t.cancel()
        return n

    assert run(main()) > 10
    assert len(ticks) >= 5


def test_cancelling_an_upload_stops_it_between_chunks(make_runtime):
    """Stop cancels the handler's task: the file's remaining chunks are never classified."""
    clf = KeywordClassifier()
    runtime = make_runtime(spam=lambda: clf)
    data = "\n".join(f"message {i}" for i in range(20 * chat.UPLOAD_CHUNK)).encode()

    async def main():
        seen = asyncio.Event()

        async def note(done, total, seconds_left):
            seen.set()

        task = asyncio.create_task(chat.classify_upload(runtime, "big.txt", data, note))
        await seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)

    run(main())
    assert sum(len(c) for c in clf.calls) < 4 * chat.UPLOAD_CHUNK
    assert runtime.engine.stats()["texts_to_classify"] == 0


def test_login_only_when_a_password_is_configured(monkeypatch):
    monkeypatch.delenv(chat.LOGIN_PASSWORD_ENV, raising=False)
    assert not chat.login_enabled() and not chat.check_login("admin", "")
    monkeypatch.setenv(chat.LOGIN_PASSWORD_ENV, "s3cret")
    monkeypatch.setenv(chat.LOGIN_USER_ENV, "ana")
    assert chat.login_enabled()
    assert chat.check_login("ana", "s3cret")
    assert not chat.check_login("ana", "wrong") and not chat.check_login("admin", "s3cret")


def test_a_file_with_its_own_label_column_keeps_it(make_runtime):
    data = "label,text\nham,win a prize now\nspam,see you later\n".encode()
    result = run(chat.classify_upload(make_runtime(), "labelled.csv", data))
    rows = list(csv.DictReader(io.StringIO(result.csv_bytes.decode())))
    assert [(r["label"], r["predicted_label"]) for r in rows] == [("ham", "spam"), ("spam", "ham")]


def test_a_single_message_gets_the_words_behind_its_verdict(make_runtime):
    runtime = make_runtime()
    why = run(chat.explain_reply(runtime, "WINNER!! Claim your prize now"))
    assert "towards spam: **prize** +96 pts" in why and "towards ham" not in why
    assert run(chat.explain_reply(runtime, "claim your prize\nsee you")) is None  # a table of several: no reasons
    from llm.spam import Explanation
    assert "no single word" in chat.explanation_text(Explanation(0.5, [("hi", 0.001)]))
    assert "−7 pts" in chat.explanation_text(Explanation(0.1, [("mum", -0.07)]))


def test_requests_waiting_on_a_failing_load_share_one_attempt():
    import threading as th
    from pathlib import Path

    from llm.serving.registry import ModelRegistry, ModelSpec, ModelUnavailable

    attempts, gate = [], th.Event()

    def broken():
        attempts.append(1)
        gate.wait(5)
        raise RuntimeError("truncated checkpoint")

    registry = ModelRegistry([ModelSpec("m", "assistant", lambda: Path("x"), "Create it with: make", broken)])

    async def many():
        tasks = [asyncio.create_task(registry.get("m")) for _ in range(5)]
        await asyncio.sleep(0.2)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(many())
    assert all(isinstance(r, ModelUnavailable) for r in results)
    assert len(attempts) == 1  # not five loads of the same broken file in a row


def test_the_login_secret_changes_when_who_may_log_in_changes(monkeypatch, tmp_path):
    """A token signed for the local identity (or for a removed user) must not survive turning passwords on."""
    for var in (chat.AUTH_SECRET_ENV, chat.AUTH_BASE_ENV, chat.LOGIN_USERS_ENV, chat.LOGIN_PASSWORD_ENV):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "data/.chainlit_auth_secret"
    chat.ensure_auth_secret(path)
    local = os.environ[chat.AUTH_SECRET_ENV]
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() not in ("", local)
    chat.ensure_auth_secret(path)
    assert os.environ[chat.AUTH_SECRET_ENV] == local  # a restart keeps logins
    monkeypatch.setenv(chat.LOGIN_USERS_ENV, "ana:pw1,ben:pw2")
    chat.ensure_auth_secret(path)
    both = os.environ[chat.AUTH_SECRET_ENV]
    monkeypatch.setenv(chat.LOGIN_USERS_ENV, "ana:pw1")
    chat.ensure_auth_secret(path)
    assert len({local, both, os.environ[chat.AUTH_SECRET_ENV]}) == 3


def test_a_resumed_conversation_leaves_out_stopped_answers_and_chainlits_stop_notice():
    steps = [{"type": "assistant_message", "output": "Paris.", "metadata": chat.answer_metadata("Capital?"), "createdAt": "1"},
             {"type": "assistant_message", "output": "Once upon … _⏹️ Stopped._", "createdAt": "2",
              "metadata": {**chat.answer_metadata("A story?"), "stopped": True}}]
    assert chat.resumed_conversation(steps).exchanges == [("Capital?", "Paris.")]
    assert chat.is_chainlit_stop_notice({"type": "assistant_message", "output": chat.CHAINLIT_STOP_TEXT})
    assert not chat.is_chainlit_stop_notice({"type": "user_message", "output": chat.CHAINLIT_STOP_TEXT})
