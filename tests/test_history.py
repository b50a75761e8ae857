"""Chat history on a real database (llm/serving/history.py): the schema's migrations, Chainlit's data layer on
SQLite (a real file) and on PostgreSQL (a real server this test run starts: tests/pg_server.py), what a resumed
thread gives back, who may touch which feedback, and what happens when the database goes away mid-session."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import User

from llm.serving import chat, history
from pg_server import postgres_server, postgres_url  # noqa: F401 - fixtures

BASE_TIME = datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/data/chat.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/data/chat.db"
    return request.getfixturevalue("postgres_url")


def _step(thread_id, kind, output, n, metadata=None, step_id=None):
    return {"id": step_id or str(uuid.uuid4()), "threadId": thread_id, "name": "user" if kind == "user_message" else "Assistant",
            "type": kind, "output": output, "streaming": False, "metadata": metadata or {}, "autoCollapse": False,
            "defaultOpen": False, "isError": False, "input": "", "start": None, "end": None,
            "createdAt": (BASE_TIME + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")}


async def _create_step(store, step):
    await history.HistoryStore.create_step.__wrapped__(store, step)  # outside a websocket session: not queued


async def _thread(store, user: str, mode: str, exchanges, settings=None):
    """A thread as the app leaves it: the user, the thread's metadata (profile, settings), messages and replies."""
    persisted = await store.create_user(User(identifier=user))
    thread_id = str(uuid.uuid4())
    await store.update_thread(thread_id, user_id=persisted.id, name=exchanges[0][0][:40],
                              metadata={"chat_profile": mode, "settings": settings or {}}, tags=[mode])
    step_ids = []
    for i, (said, answered) in enumerate(exchanges):
        await _create_step(store, _step(thread_id, "user_message", said, 2 * i))
        meta = chat.answer_metadata(said) if mode == chat.ASSISTANT_MODE else {
            "kind": chat.VERDICT_KIND, "texts": [said], "labels": ["ham" if "ham" in answered else "spam"], "p_spam": [0.5]}
        step_ids.append(str(uuid.uuid4()))
        await _create_step(store, _step(thread_id, "assistant_message", answered, 2 * i + 1, meta, step_ids[-1]))
    return thread_id, step_ids


def test_migrations_create_the_schema_once_and_record_the_version(db_url):
    assert run(history.migrate(db_url)) == [v for v, _, _ in history.MIGRATIONS]
    assert run(history.migrate(db_url)) == []  # up to date: nothing applied twice

    async def versions():
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine
        engine = create_async_engine(db_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version, description FROM schema_version"))).all()
        await engine.dispose()
        return rows
    assert [r[0] for r in run(versions())] == [v for v, _, _ in history.MIGRATIONS]


def test_every_field_chainlit_writes_has_a_column(db_url):
    """Chainlit's documented schema lacked autoCollapse (2.12 writes it): every step write failed until migration 2."""
    from chainlit.element import ElementDict
    from chainlit.step import StepDict
    from sqlalchemy import inspect
    from sqlalchemy.ext.asyncio import create_async_engine

    async def columns():
        await history.migrate(db_url)
        engine = create_async_engine(db_url)
        async with engine.connect() as conn:
            cols = await conn.run_sync(lambda c: {t: {col["name"] for col in inspect(c).get_columns(t)}
                                                  for t in ("steps", "elements")})
        await engine.dispose()
        return cols
    cols = run(columns())
    assert set(StepDict.__annotations__) - {"feedback"} <= cols["steps"]  # feedback is joined in on reads
    assert set(ElementDict.__annotations__) - {"path"} <= cols["elements"]  # path is a local file, never stored


def test_a_thread_in_each_mode_comes_back_with_its_messages_mode_and_settings(db_url):
    async def scenario():
        store = history.open_store(db_url)
        settings = {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "max_new_tokens": 64}
        a, _ = await _thread(store, "ana", chat.ASSISTANT_MODE,
                             [("What is the capital of France?", "Paris."), ("And of Italy?", "Rome.")], settings)
        s, _ = await _thread(store, "ana", chat.SPAM_MODE, [("WINNER!! Claim your prize", "🔴 **Spam — 97.0%** spam probability")])
        return store, await store.get_thread(a), await store.get_thread(s)

    store, assistant, spam = run(scenario())
    assert store.failures == 0, store.last_error
    assert [st["output"] for st in assistant["steps"]] == ["What is the capital of France?", "Paris.", "And of Italy?", "Rome."]
    assert chat.resumed_mode(assistant) == chat.ASSISTANT_MODE and chat.resumed_mode(spam) == chat.SPAM_MODE
    assert chat.resumed_conversation(assistant["steps"]).exchanges[-1] == ("And of Italy?", "Rome.")
    assert chat.panel_settings(assistant["metadata"]["settings"])["temperature"] == 0.7
    assert assistant["tags"] == [chat.ASSISTANT_MODE]  # a list again (SQLite refuses a list parameter: stored as JSON)
    assert isinstance(assistant["steps"][1]["metadata"], dict)  # JSON columns decoded on the way out
    assert assistant["steps"][1]["streaming"] is False  # not 0: the web client showed no reply for SQLite's 0/1


def test_the_mode_is_read_from_the_replies_when_the_profile_was_never_saved():
    steps = [{"type": "assistant_message", "output": "Paris.", "metadata": chat.answer_metadata("Capital?"),
              "createdAt": "2026-11-26T09:00:01Z"}]
    assert chat.resumed_mode({"metadata": {}, "steps": steps}) == chat.ASSISTANT_MODE
    assert chat.resumed_mode({"metadata": None, "steps": []}) == chat.SPAM_MODE


def test_each_user_lists_only_their_own_threads_and_feedback_checks_the_owner(db_url):
    async def scenario():
        store = history.open_store(db_url)
        a, a_steps = await _thread(store, "ana", chat.ASSISTANT_MODE, [("hi", "hello")])
        b, b_steps = await _thread(store, "ben", chat.SPAM_MODE, [("free prize", "🔴 spam")])
        ana, ben = await store.get_user("ana"), await store.get_user("ben")
        listed = {who.identifier: await store.list_threads(Pagination(first=20), ThreadFilter(userId=who.id))
                  for who in (ana, ben)}
        fid = await store.upsert_feedback(Feedback(forId=b_steps[0], threadId=b, value=0, comment="it was ham"))
        assert [t["id"] for t in listed["ana"].data] == [a] and [t["id"] for t in listed["ben"].data] == [b]
        assert await store.thread_of_step(a_steps[0], "ana") == a
        assert await store.thread_of_step(b_steps[0], "ana") is None  # ana may not rate ben's verdict
        assert await store.owns_feedback(fid, "ben") and not await store.owns_feedback(fid, "ana")
        assert await store.get_thread_author(b) == "ben"
        assert store.failures == 0, store.last_error

    run(scenario())


def test_the_versions_of_a_message_saved_at_once_land_in_the_order_they_were_made(sqlite_url):
    """Chainlit saves each send/update/remove of a message in a task nobody awaits. Here the thread upsert that starts
    each save is slow for the earlier versions (as on a busy database): the stored message must still be its last
    version, and a removed message must stay removed."""
    store = history.open_store(sqlite_url)
    thread_id, _ = run(_thread(store, "ana", chat.SPAM_MODE, [("hello", "🟢 ham")]))
    update_thread, delays = store.update_thread, iter([0.2, 0.1, 0.0, 0.2])

    async def slow_update_thread(*args, **kwargs):
        await asyncio.sleep(next(delays, 0.0))
        return await update_thread(*args, **kwargs)

    store.update_thread = slow_update_thread
    summary, notice = str(uuid.uuid4()), str(uuid.uuid4())

    async def scenario():
        saves = [_create_step(store, _step(thread_id, "assistant_message", text, 5, step_id=summary))
                 for text in ("⏳ Reading a.csv…", "⏳ a.csv: 64 / 100", "a.csv: 100 messages classified")]
        saves += [_create_step(store, _step(thread_id, "assistant_message", "⏳ Busy", 6, step_id=notice)),
                  history.HistoryStore.delete_step.__wrapped__(store, notice)]
        await asyncio.gather(*(asyncio.create_task(s) for s in saves))
        return {s["id"]: s["output"] for s in (await store.get_thread(thread_id))["steps"]}

    stored = run(scenario())
    assert stored[summary] == "a.csv: 100 messages classified" and notice not in stored
    assert store._step_writes == {}  # nothing kept once the writes are done


def test_a_database_that_goes_read_only_mid_session_is_counted_and_recovers(sqlite_url, tmp_path):
    """The fault as SQLite users meet it (a read-only file; tests run as root, where chmod does not stop writes,
    so the file is opened read-only): nothing raises, each failure is counted, later writes work again."""
    store = history.open_store(sqlite_url)
    thread_id, _ = run(_thread(store, "ana", chat.SPAM_MODE, [("hello", "🟢 ham")]))
    path = sqlite_url.split(":///", 1)[1]
    good_engine = store.engine
    read_only = history.HistoryStore(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    store.engine, store.async_session = read_only.engine, read_only.async_session
    run(_create_step(store, _step(thread_id, "user_message", "lost while read-only", 10)))
    assert store.failures >= 1 and "readonly" in store.last_error.replace("-", "").lower()
    store.engine, store.async_session = good_engine, history.HistoryStore(sqlite_url).async_session
    run(_create_step(store, _step(thread_id, "user_message", "saved again", 11)))
    outputs = [s["output"] for s in run(store.get_thread(thread_id))["steps"]]
    assert "saved again" in outputs and "lost while read-only" not in outputs


def test_postgres_stopped_mid_session_then_back(postgres_server, postgres_url):
    async def scenario():
        store = history.open_store(postgres_url)
        thread_id, _ = await _thread(store, "ana", chat.SPAM_MODE, [("hello", "🟢 ham")])
        postgres_server.stop()
        try:
            await _create_step(store, _step(thread_id, "user_message", "lost while down", 10))  # must not raise
            assert store.failures >= 1
        finally:
            postgres_server.start()
        failures = store.failures
        await _create_step(store, _step(thread_id, "user_message", "saved again", 11))
        await _create_step(store, _step(thread_id, "user_message", "and again", 12))
        outputs = [s["output"] for s in (await store.get_thread(thread_id))["steps"]]
        assert "saved again" in outputs and "and again" in outputs and "lost while down" not in outputs
        return store.failures - failures

    assert run(scenario()) == 0  # the pool's dead connections are replaced before use: nothing after is lost


def test_an_unreachable_database_turns_history_off_instead_of_stopping_the_app(caplog):
    assert history.open_store("postgresql+asyncpg://nobody:secret@127.0.0.1:1/none") is None
    assert "history is off" in caplog.text and "secret" not in caplog.text and "LLM_DATABASE_URL" in caplog.text


def test_history_is_configured_by_the_environment(monkeypatch):
    monkeypatch.delenv(history.DATABASE_ENV, raising=False)
    monkeypatch.setenv(history.HISTORY_ENV, "1")
    assert history.database_url() == history.DEFAULT_DATABASE
    monkeypatch.setenv(history.DATABASE_ENV, "postgresql+asyncpg://u@h/db")
    assert history.database_url() == "postgresql+asyncpg://u@h/db"
    monkeypatch.setenv(history.HISTORY_ENV, "0")
    assert history.database_url() is None


def test_feedback_is_exported_in_both_formats_and_read_back_by_the_trainers(db_url, tmp_path):
    from finetune import feedback
    from finetune.spam_data import read_labelled
    from llm.instruct import read_entries

    async def scenario():
        store = history.open_store(db_url)
        s, s_steps = await _thread(store, "ana", chat.SPAM_MODE, [("Your parcel is held, pay £1.99 at evri-pay.top", "🟢 ham"),
                                                                 ("see you at 7", "🟢 ham")])
        a, a_steps = await _thread(store, "ana", chat.ASSISTANT_MODE,
                                   [("Name a primary colour.", "Green."), ("Name a primary colour.", "Red."),
                                    ("What is 2 + 2?", "5"), ("Write a haiku.", "No.")])
        fb = [(s_steps[0], s, 0, ""), (s_steps[1], s, 1, ""),   # a missed scam; a right verdict
              (a_steps[0], a, 0, "too dull"), (a_steps[2], a, 0, "Better: 4"),  # asked again -> "Red."; corrected
              (a_steps[3], a, 0, "")]                           # no better answer: left out
        for step, thread, value, comment in fb:
            await store.upsert_feedback(Feedback(forId=step, threadId=thread, value=value, comment=comment or None))
        return store

    store = run(scenario())
    assert store.failures == 0, store.last_error
    summary = feedback.export(db_url, tmp_path / "fb")
    assert summary["spam_rows"] == 1 and summary["preferences"] == 2 and summary["answers_without_a_better_one"] == 1
    rows = read_labelled(tmp_path / "fb/spam_corrections.csv")  # what `finetune.spam train --extra-train` reads
    assert rows == [("spam", "Your parcel is held, pay £1.99 at evri-pay.top")]
    records = json.loads((tmp_path / "fb/preferences.json").read_text(encoding="utf-8"))
    assert {(e["instruction"], e["chosen"], e["rejected"]) for e in records} == {
        ("Name a primary colour.", "Red.", "Green."), ("What is 2 + 2?", "4", "5")}
    entries, _ = read_entries(tmp_path / "fb/preferences.json")  # what `finetune.instruct train --data` reads
    assert sorted(e["output"] for e in entries) == ["4", "Red."]
    assert feedback.export(db_url, tmp_path / "fb2", include_confirmed=True)["spam_rows"] == 2


def test_feedback_on_the_run_that_holds_a_reply_counts_for_the_reply(db_url, tmp_path):
    """What the web client does (seen in a browser): the 👎 goes to the `on_message` run step, the reply's parent."""
    from finetune import feedback

    async def scenario():
        store = history.open_store(db_url)
        persisted = await store.create_user(User(identifier="ana"))
        thread = str(uuid.uuid4())
        await store.update_thread(thread, user_id=persisted.id, metadata={"chat_profile": chat.ASSISTANT_MODE})
        run_id = str(uuid.uuid4())
        await _create_step(store, {**_step(thread, "run", "", 1, step_id=run_id), "name": "on_message"})
        await _create_step(store, {**_step(thread, "assistant_message", "Green.", 2, chat.answer_metadata("A colour?")),
                                   "parentId": run_id})
        await store.upsert_feedback(Feedback(forId=run_id, threadId=thread, value=0, comment="Better: Red."))
        assert await store.thread_of_step(run_id, "ana") == thread
    run(scenario())
    assert feedback.export(db_url, tmp_path / "fb")["preferences"] == 1


def test_export_of_a_missing_database_is_one_clear_error(tmp_path, capsys):
    from finetune import feedback
    code = feedback.main(["export", "--database", f"sqlite+aiosqlite:///{tmp_path}/none.db", "--out-dir", str(tmp_path / "o")])
    assert code == 2 and "cannot read the history database" in capsys.readouterr().err


def test_a_failed_write_tells_the_user_once_with_a_toast_and_the_chat_goes_on(tmp_path, monkeypatch):
    """The notice the user sees: a toast to the session whose write failed, at most one per NOTICE_EVERY_S."""
    from unittest.mock import AsyncMock, Mock

    from chainlit.context import ChainlitContext, context_var
    from chainlit.emitter import BaseChainlitEmitter
    from chainlit.session import WebsocketSession

    run(history.migrate(f"sqlite+aiosqlite:///{tmp_path}/chat.db"))
    store = history.HistoryStore(f"sqlite+aiosqlite:///file:{tmp_path}/chat.db?mode=ro&uri=true")  # read-only
    session = Mock(spec=WebsocketSession)
    session.id = "s1"
    emitter = AsyncMock(spec=BaseChainlitEmitter)

    async def burst():  # a message and its reply: several writes fail in a row
        token = context_var.set(ChainlitContext(session, emitter=emitter))
        try:
            return [await store.execute_sql("INSERT INTO steps (id) VALUES (:id)", {"id": "x"}) for _ in range(3)]
        finally:
            context_var.reset(token)
            await store.engine.dispose()
    assert run(burst()) == [None, None, None]  # nothing raised
    assert store.failures == 3
    emitter.send_toast.assert_awaited_once_with(history.NOT_SAVED, "warning")


def test_a_migration_that_fails_half_way_leaves_nothing_behind(sqlite_url, monkeypatch):
    run(history.migrate(sqlite_url))
    broken = (99, "a broken migration", ['CREATE TABLE half_done (x INT)', 'CREATE TABLE oops ('])
    monkeypatch.setattr(history, "MIGRATIONS", history.MIGRATIONS + [broken])
    with pytest.raises(Exception):
        run(history.migrate(sqlite_url))

    async def tables():
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine
        engine = create_async_engine(sqlite_url)
        async with engine.connect() as conn:
            names = {r[0] for r in (await conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))).all()}
            versions = {r[0] for r in (await conn.execute(text("SELECT version FROM schema_version"))).all()}
        await engine.dispose()
        return names, versions
    names, versions = run(tables())
    assert "half_done" not in names and 99 not in versions  # all of a version or none of it: the next start retries


def test_stopped_answers_and_plain_remarks_never_become_preference_data():
    from finetune import feedback
    answer = lambda i, out, value, comment=None, **meta: {"id": str(i), "thread": "t", "output": out, "value": value,  # noqa: E731
                                                          "comment": comment, "metadata": {**chat.answer_metadata("Q?"), **meta}}
    replies = [answer(1, "Bad.", 0, "too short"), answer(2, "Half a sto … _⏹️ Stopped._", None, stopped=True)]
    assert feedback.preferences(replies) == ([], 1)  # a remark is not an answer; the stopped one is not "later"
    assert feedback.better_answer("Better: Paris.") == "Paris." and feedback.better_answer("better:") is None
