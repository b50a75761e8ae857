"""History through the real app (`chainlit run app.py`, two users, history on SQLite): one user cannot list,
open, resume, delete or rate another's thread by calling Chainlit's HTTP and socket endpoints directly with
their own session; a wrong password gets nothing."""
from __future__ import annotations

import asyncio
import uuid
from contextlib import contextmanager

import httpx
import pytest

from app_server import running_app
from llm.serving import chat, history
from test_history import _thread

pytestmark = pytest.mark.e2e
USERS = {"ana": "pw-ana-1", "ben": "pw-ben-2"}


@pytest.fixture(scope="module")
def app_with_two_users(tmp_path_factory, tokenizer):  # `tokenizer`: skips when the BPE files are unavailable
    work = tmp_path_factory.mktemp("history_app")
    url_db = f"sqlite+aiosqlite:///{work}/chat.db"
    store = history.open_store(url_db)

    async def seed():  # ben has a spam check with a rated verdict; ana has an Assistant chat
        b, b_steps = await _thread(store, "ben", chat.SPAM_MODE, [("free prize now", "🔴 spam")])
        a, a_steps = await _thread(store, "ana", chat.ASSISTANT_MODE, [("hi", "hello")])
        fid = await store.upsert_feedback(__import__("chainlit.types", fromlist=["Feedback"]).Feedback(
            forId=b_steps[0], threadId=b, value=0))
        await store.engine.dispose()
        return {"ben_thread": b, "ben_step": b_steps[0], "ben_feedback": fid, "ana_thread": a, "ana_step": a_steps[0]}

    ids = asyncio.run(seed())
    env = {"LLM_HISTORY": "1", "LLM_DATABASE_URL": url_db, "LLM_APP_USERS": ",".join(f"{u}:{p}" for u, p in USERS.items()),
           "CHAINLIT_AUTH_SECRET": "test-secret-" + uuid.uuid4().hex}
    with running_app(work, env) as url:
        yield url, ids, url_db


@contextmanager
def login(url: str, user: str, password: str):
    with httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/login", data={"username": user, "password": password})
        assert r.status_code == 200, r.text
        yield client


def feedback_rows(url_db: str) -> list[dict]:
    async def read():
        store = history.HistoryStore(url_db)
        rows = await store.execute_sql('SELECT "id", "forId", "threadId", "value" FROM feedbacks', {})
        await store.engine.dispose()
        return rows
    return asyncio.run(read())


def test_a_wrong_password_gets_nothing(app_with_two_users):
    url, ids, _ = app_with_two_users
    with httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/login", data={"username": "ana", "password": "pw-ben-2"})
        assert r.status_code == 401 and not client.cookies
        assert client.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}}).status_code == 401
        assert client.get(f"/project/thread/{ids['ana_thread']}").status_code == 401


def test_ana_sees_and_opens_only_her_own_threads(app_with_two_users):
    url, ids, _ = app_with_two_users
    with login(url, "ana", USERS["ana"]) as ana:
        listed = ana.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
        assert listed.status_code == 200 and [t["id"] for t in listed.json()["data"]] == [ids["ana_thread"]]
        assert ana.get(f"/project/thread/{ids['ana_thread']}").status_code == 200
        assert ana.get(f"/project/thread/{ids['ben_thread']}").status_code in (401, 403, 404)
        assert ana.request("DELETE", "/project/thread", json={"threadId": ids["ben_thread"]}).status_code in (401, 403, 404)
        assert ana.put("/project/thread", json={"threadId": ids["ben_thread"], "name": "mine"}).status_code in (401, 403, 404)
    with login(url, "ben", USERS["ben"]) as ben:  # ben's thread is still there, unrenamed
        mine = ben.get(f"/project/thread/{ids['ben_thread']}")
        assert mine.status_code == 200 and mine.json()["name"] != "mine"


def test_ana_cannot_rate_or_unrate_bens_messages(app_with_two_users):
    url, ids, url_db = app_with_two_users
    with login(url, "ana", USERS["ana"]) as ana:
        for forged_thread in (ids["ben_thread"], ids["ana_thread"]):  # whatever thread id she claims
            r = ana.put("/feedback", json={"sessionId": "s", "feedback": {"forId": ids["ben_step"], "value": 1,
                                                                          "threadId": forged_thread}})
            assert r.status_code == 404, r.text
        r = ana.put("/feedback", json={"sessionId": "s", "feedback": {"id": ids["ben_feedback"], "forId": ids["ana_step"],
                                                                      "value": 1, "threadId": ids["ana_thread"]}})
        assert r.status_code == 404, r.text  # overwriting ben's feedback row through her own message
        assert ana.request("DELETE", "/feedback", json={"feedbackId": ids["ben_feedback"]}).status_code == 404
        for bad in ("not-a-uuid", "' OR 1=1 --"):  # refused before any query (no error toast for anyone)
            r = ana.put("/feedback", json={"sessionId": "s", "feedback": {"forId": bad, "value": 1}})
            assert r.status_code == 404, r.text
        own = ana.put("/feedback", json={"sessionId": "s", "feedback": {"forId": ids["ana_step"], "value": 0,
                                                                        "comment": "too short", "threadId": ids["ben_thread"]}})
        assert own.status_code == 200, own.text
    rows = {r["forId"]: r for r in feedback_rows(url_db)}
    assert rows[ids["ben_step"]]["value"] == 0 and rows[ids["ben_step"]]["id"] == ids["ben_feedback"]  # untouched
    assert rows[ids["ana_step"]]["threadId"] == ids["ana_thread"]  # stored under her real thread, not the claimed one


def test_ana_cannot_resume_bens_thread_over_the_socket(app_with_two_users):
    import socketio
    url, ids, _ = app_with_two_users
    with login(url, "ana", USERS["ana"]) as ana:
        token = ana.cookies.get("access_token")
    assert token

    async def connect(thread_id):
        client = socketio.AsyncClient(reconnection=False)
        try:
            await client.connect(url, socketio_path="/ws/socket.io", transports=["websocket"], wait_timeout=10,
                                 headers={"Cookie": f"access_token={token}"},
                                 auth={"clientType": "webapp", "sessionId": str(uuid.uuid4()), "threadId": thread_id})
            return True
        except socketio.exceptions.ConnectionError:
            return False
        finally:
            await client.disconnect()

    assert asyncio.run(connect(ids["ana_thread"])) is True  # her own: resumes
    assert asyncio.run(connect(ids["ben_thread"])) is False  # his: refused
