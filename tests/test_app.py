"""app.py's handlers without a browser: a mocked Chainlit context (as Chainlit's own backend tests
build it) around a mocked websocket session and emitter; the decorated handlers are called directly."""
from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import AsyncMock, Mock
from uuid import uuid4

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CHAINLIT_APP_ROOT", tempfile.mkdtemp(prefix="chainlit_unit_"))  # before `import chainlit`
sys.path.insert(0, str(ROOT))

cl = pytest.importorskip("chainlit")
from chainlit.context import ChainlitContext, context_var  # noqa: E402
from chainlit.emitter import BaseChainlitEmitter  # noqa: E402
from chainlit.session import WebsocketSession  # noqa: E402

import app  # noqa: E402
from conftest import KeywordClassifier  # noqa: E402
from llm.serving import chat  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def models(monkeypatch, make_runtime):
    """Swap the app's process-wide runtime for one with stand-in verdicts and a tiny random assistant."""
    runtime = make_runtime()
    monkeypatch.setattr(app, "runtime", runtime)
    return runtime


@contextmanager
def chainlit_context(chat_profile=None, session_id=None):
    s = Mock(spec=WebsocketSession)
    s.id = session_id or f"test-{uuid4()}"
    s.chat_profile, s.chat_settings, s.user, s.user_env = chat_profile, {}, None, {}
    s.client_type, s.thread_id = "webapp", "thread"
    s.persist_file = AsyncMock(return_value={"id": "file-1"})
    em = AsyncMock(spec=BaseChainlitEmitter)
    em.set_chat_settings = Mock()  # called synchronously by ChatSettings.send
    token = context_var.set(ChainlitContext(s, emitter=em))
    try:
        yield em
    finally:
        context_var.reset(token)


def sent_texts(em) -> list[str]:
    """Every message body the app sent or updated, in order."""
    out = []
    for name, args, _ in em.mock_calls:
        if name in ("send_step", "update_step") and args and isinstance(args[0], dict):
            out.append(args[0].get("output", ""))
    return out


async def user_says(text, elements=None):
    await app.on_message(cl.Message(content=text, type="user_message", elements=elements or []))


async def test_profiles_have_starters():
    profiles = await app.chat_profiles()
    assert [p.name for p in profiles] == ["Spam check", "Assistant"]
    assert profiles[0].default
    assert all(len(p.starters) >= 2 for p in profiles)
    assert any("WINNER" in s.message for s in profiles[0].starters)


async def test_assistant_start_sends_settings_panel(models):
    with chainlit_context("Assistant") as em:
        await app.on_chat_start()
        ids = [w["id"] for w in em.emit.await_args.args[1]]
        assert em.set_chat_settings.call_args.args[0] == chat.DEFAULT_SETTINGS
        assert ids == ["temperature", "top_k", "top_p", "max_new_tokens"]
        assert sent_texts(em) == []  # model available: no warning, starters stay visible


async def test_spam_check_verdict(models):
    with chainlit_context("Spam check") as em:
        await app.on_chat_start()
        await user_says("WINNER!! Claim your £900 prize now, call 09061701461")
    assert sent_texts(em)[-1].startswith("🔴 **Spam — 97.3%** spam probability")


async def test_spam_check_verdict_then_the_words_behind_it(models):
    with chainlit_context("Spam check") as em:
        await user_says("WINNER!! Claim your £900 prize now")
    texts = sent_texts(em)
    assert texts[-2] == "🔴 **Spam — 97.3%** spam probability"  # sent at once
    assert texts[-1].startswith(texts[-2]) and "**prize** +96 pts" in texts[-1]  # then updated with the reasons


async def test_spam_check_several_lines(models):
    with chainlit_context("Spam check") as em:
        await user_says("claim your prize\nsee you soon")
    assert "2 messages: 1 spam, 1 ham" in sent_texts(em)[-1]


async def test_assistant_streams_tokens_and_carries_history(models):
    sid = f"test-{uuid4()}"
    with chainlit_context("Assistant", sid) as em:
        await app.on_chat_start()
        await app.on_settings_update({**chat.DEFAULT_SETTINGS, "max_new_tokens": 16})
        await user_says("Say hello")
        first = em.stream_start.await_args.args[0]["output"]  # the first piece opens the stream
        rest = [c.kwargs["token"] for c in em.send_token.await_args_list]
        answer = em.send_step.await_args.args[0]["output"]
        assert rest and answer == first + "".join(rest)
        conversation = app.cl.user_session.get("conversation")
        assert conversation.history() == [("Say hello", answer)]
        await user_says("Again")
        assert conversation.history()[0][0] == "Again"


async def test_assistant_uses_chat_settings(models, monkeypatch):
    seen = []
    real = chat.open_answer

    async def spy(runtime, text, settings, conversation):
        seen.append(settings)
        return await real(runtime, text, settings, conversation)

    monkeypatch.setattr(chat, "open_answer", spy)
    with chainlit_context("Assistant"):
        await app.on_chat_start()
        await app.on_settings_update({"temperature": 0.8, "top_k": 20, "top_p": 0.9, "max_new_tokens": 32})
        await user_says("hi")
    s = seen[-1]
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens) == (0.8, 20, 0.9, 32)


async def a_long_answer_streaming(em) -> asyncio.Task:
    """An Assistant answer of up to 200 tokens, started and streaming (a first word is out, not only white space)."""
    await app.on_settings_update({**chat.DEFAULT_SETTINGS, "max_new_tokens": 200})
    task = asyncio.create_task(user_says("go on for a long time"))
    while not any(str(c.kwargs.get("token", "")).strip() for c in em.send_token.await_args_list) and not task.done():
        await asyncio.sleep(0.001)
    assert not task.done(), task.exception()
    return task


async def test_stop_button_stops_generation(models):
    with chainlit_context("Assistant") as em:
        task = await a_long_answer_streaming(em)
        await app.on_stop()  # what Chainlit calls when the user presses Stop
        await asyncio.wait_for(task, 5)
        stream = app.cl.user_session.get("stream")
        assert stream.result.stopped_by == "cancelled" and len(stream.result.ids) < 200
        assert models.engine.stats()["running"] == 0  # the slot was given back


async def test_stop_as_chainlit_does_it_leaves_a_finished_marked_answer_and_no_lone_notice(models):
    """Chainlit posts "Task manually stopped.", calls on_stop and cancels the handler's task."""
    with chainlit_context("Assistant") as em:
        task = await a_long_answer_streaming(em)
        await cl.Message(content=chat.CHAINLIT_STOP_TEXT).send()  # chainlit/socket.py's stop(), first line
        await app.on_stop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        last = [args[0] for name, args, _ in em.mock_calls if name in ("send_step", "update_step") and args][-1]
        assert last["output"].endswith("_⏹️ Stopped._") and last["streaming"] is False  # no "still writing" dot
        assert last["createdAt"]  # saved with a creation time: history lists it (a streamed reply had none)
        assert em.delete_step.await_count == 1 and em.delete_step.await_args[0][0]["output"] == chat.CHAINLIT_STOP_TEXT
        for _ in range(200):  # the scheduler frees the slot at its next iteration
            if models.engine.stats()["running"] == 0:
                break
            await asyncio.sleep(0.01)
        assert models.engine.stats()["running"] == 0


async def test_a_closed_tab_stops_its_answer_after_the_grace_unless_the_socket_comes_back(models, monkeypatch):
    """Reload, closed tab or a new chat: Chainlit calls on_chat_end. The answer nobody reads stops and frees its slot,
    saved as stopped; a socket that reconnects in time (the session restored under a new socket id) keeps it."""
    monkeypatch.setattr(app, "DISCONNECT_GRACE_S", 0.02)
    with chainlit_context("Assistant") as em:
        session = app.cl.context.session
        task = await a_long_answer_streaming(em)
        with models.engine._lock:  # the scheduler is paused: the answer cannot end on its own meanwhile
            session.socket_id, session.current_task = "socket-1", task
            await app.on_chat_end()
            session.socket_id = "socket-2"  # a network blip: the same session, back under a new socket
            await asyncio.sleep(0.2)
            assert not task.done()
            await app.on_chat_end()  # now it is gone for good
            await asyncio.sleep(0.2)
            assert task.done()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sent_texts(em)[-1].endswith("_⏹️ Stopped._")
        for _ in range(200):  # the scheduler frees the slot at its next iteration
            if models.engine.stats()["running"] == 0:
                break
            await asyncio.sleep(0.01)
        assert models.engine.stats()["running"] == 0 and not app.pending_stops


async def test_busy_users_are_told_how_many_are_ahead(make_runtime, monkeypatch):
    runtime = make_runtime(max_running=1)
    monkeypatch.setattr(app, "runtime", runtime)
    with chainlit_context("Assistant") as em1:
        await app.on_settings_update({**chat.DEFAULT_SETTINGS, "max_new_tokens": 200})
        first = asyncio.create_task(user_says("a long answer please"))
        while not runtime.engine.stats()["running"]:
            await asyncio.sleep(0.001)
    with chainlit_context("Assistant") as em2:
        await app.on_settings_update({**chat.DEFAULT_SETTINGS, "max_new_tokens": 4})
        await user_says("and me?")
    texts = sent_texts(em2)
    assert "you are number 1 in the queue" in texts[0]
    assert em2.delete_step.await_count == 1  # the notice goes once the answer starts
    assert texts[-1]  # and the answer came
    await asyncio.wait_for(first, 10)
    assert sent_texts(em1)[-1]


@pytest.mark.parametrize("profile", ["Spam check", "Assistant"])
@pytest.mark.parametrize("text,expected", [("", "⚠️ "), ("   ", "⚠️ "), ("y" * 100_000, "100,000 characters")],
                         ids=["empty", "blank", "100k-paste"])
async def test_bad_text_gets_a_clear_reply(models, profile, text, expected):
    with chainlit_context(profile) as em:
        await user_says(text)
        await user_says("claim your prize")  # and the app keeps answering
    texts = sent_texts(em)
    assert any(expected in t for t in texts[:-1]), texts
    assert texts[-1]


async def test_csv_upload_returns_labelled_csv(models, tmp_path):
    f = tmp_path / "inbox.csv"
    f.write_text("id,text\n1,claim your prize\n2,hello mum\n")
    with chainlit_context("Spam check") as em:
        await user_says("", elements=[cl.File(name="inbox.csv", path=str(f), mime="text/csv")])
    assert "2 messages classified — 1 spam, 1 ham" in sent_texts(em)[-1]
    assert em.send_element.await_args.args[0]["name"] == "inbox-labelled.csv"  # a downloadable file element


async def test_labelled_csv_content_is_what_chainlit_stores(models, tmp_path):
    f = tmp_path / "inbox.txt"
    f.write_text("claim your prize\nhello mum\n")
    with chainlit_context("Spam check") as em:
        session = app.cl.context.session
        await user_says("", elements=[cl.File(name="inbox.txt", path=str(f), mime="text/plain")])
        stored = session.persist_file.await_args.kwargs
    rows = list(csv.DictReader(io.StringIO(stored["content"].decode())))
    assert [(r["text"], r["label"]) for r in rows] == [("claim your prize", "spam"), ("hello mum", "ham")]
    assert stored["mime"] == "text/csv"
    assert sent_texts(em)


@pytest.mark.parametrize("name,data,expected", [
    ("photo.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01", "binary"),
    ("pay.csv", b"id,amount\n1,20\n", "no text column"),
], ids=["binary", "no-text-column"])
async def test_bad_upload_gets_a_clear_reply(models, tmp_path, name, data, expected):
    f = tmp_path / name
    f.write_bytes(data)
    with chainlit_context("Spam check") as em:
        await user_says("", elements=[cl.File(name=name, path=str(f))])
        await user_says("claim your prize")
    texts = sent_texts(em)
    assert any(expected in t for t in texts), texts
    assert texts[-1].startswith("🔴 **Spam — 97.3%** spam probability")


async def test_an_empty_upload_is_refused_in_words_not_with_a_500(models, monkeypatch):
    """Chainlit's upload route fails on an empty file with a 500 (the browser says "Upload failed"); the app's answers
    400 with a reason, which the browser shows in its toast. A file with content still goes through."""
    from starlette.testclient import TestClient

    from chainlit.server import app as fastapi_app

    with chainlit_context("Spam check"):
        session = app.cl.context.session
    session.files_dir, session.files_spec = Path(tempfile.mkdtemp()), {}
    client = TestClient(fastapi_app)
    monkeypatch.setattr(WebsocketSession, "get_by_id", Mock(return_value=session))
    r = client.post("/project/file", params={"session_id": session.id},
                    files={"file": ("empty.csv", b"", "text/csv")})
    assert r.status_code == 400 and r.json()["detail"].startswith("empty.csv is empty: there is nothing in it")
    r = client.post("/project/file", params={"session_id": session.id},
                    files={"file": ("one.csv", b"text\nhello\n", "text/csv")})
    assert r.status_code == 200 and r.json() == {"id": "file-1"}


async def test_missing_checkpoint_tells_the_command_and_keeps_running(monkeypatch, make_runtime):
    from llm.checkpoint import CheckpointError

    def missing():
        raise CheckpointError("No spam classifier at checkpoints/spam. Create it with: python -m finetune.spam train")

    monkeypatch.setattr(app, "runtime", make_runtime(spam=missing))
    with chainlit_context("Spam check") as em:
        await app.on_chat_start()
        await user_says("hello")
    texts = sent_texts(em)
    assert len(texts) == 2 and all("python -m finetune.spam" in t for t in texts)
    with chainlit_context("Assistant") as em:
        await user_says("hi")
    assert sent_texts(em)[-1]  # the assistant still answers


async def test_a_chat_opened_while_the_model_loads_says_so_and_answers_later(monkeypatch, make_runtime):
    import threading

    release = threading.Event()

    def slow_spam():
        release.wait(10)
        return KeywordClassifier()

    runtime = make_runtime()
    runtime.registry._slots["gpt2-spam"].model = None  # as on a fresh server: the spam model is still loading
    runtime.registry._slots["gpt2-spam"].spec.loader = slow_spam
    runtime.registry.start()
    monkeypatch.setattr(app, "runtime", runtime)
    with chainlit_context("Spam check") as em:
        await asyncio.wait_for(app.on_chat_start(), 2)  # returns at once: the input is never blocked
        assert "still loading" in sent_texts(em)[0]
        asked = asyncio.create_task(user_says("claim your prize"))
        await asyncio.sleep(0.05)
        assert not asked.done()  # the message waits for the model...
        release.set()
        await asyncio.wait_for(asked, 10)
    assert sent_texts(em)[-1].startswith("🔴 **Spam — 97.3%** spam probability")  # ...and is answered once it is there


async def test_ready_route(models):
    from starlette.testclient import TestClient

    from chainlit.server import app as fastapi_app

    client = TestClient(fastapi_app)
    r = client.get("/ready")
    assert r.headers["content-type"] == "application/json"
    assert r.status_code == 200 and set(r.json()["models"]) == {"gpt2-spam", "gpt2-instruct"}
    assert r.json()["engine"]["max_running"] >= 1
    models.registry._slots["gpt2-spam"].model = None  # a model that is not loaded: not ready
    r = client.get("/ready")
    assert r.status_code == 503 and not r.json()["models"]["gpt2-spam"]["ready"]
    assert client.get("/health").json() == {"status": "ok"}
