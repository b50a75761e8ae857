"""Chat history in a real database: Chainlit's SQLAlchemy data layer, its schema versioned, its failures told.

    LLM_DATABASE_URL   where conversations, users and feedback live (default: sqlite+aiosqlite:///data/chat.db,
                       created with its schema on first start). PostgreSQL:
                       postgresql+asyncpg://user:password@host:5432/dbname  (what several app instances share)
    LLM_HISTORY=0      keep nothing (no data layer: no sidebar, no feedback buttons)

The schema is this module's job: `MIGRATIONS` is an ordered list; `migrate` records each applied version in
`schema_version` and applies the missing ones in order, each in its own transaction, at start-up. A new column
is a new migration at the end of the list, never an edit of an old one.

`HistoryStore` is Chainlit's `SQLAlchemyDataLayer` with four fixes:
  - SQLite takes no Python list or dict as a parameter (thread `tags`, step `modes`): they are stored as JSON text;
  - JSON columns come back as strings from SQLite (and from asyncpg), booleans as 0/1 from SQLite: both are
    decoded on the way out;
  - the base class logs and swallows every database error, so a conversation could stop being saved without
    anyone knowing. Here each failure is counted (`failures`, `last_error`) and the user whose write failed is
    told once per `NOTICE_EVERY_S` with a toast; the chat goes on, and later writes are tried again as usual;
  - Chainlit saves a message's versions in tasks nobody awaits, which could land out of order: the writes of one
    message are applied in the order they were made.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.data.utils import queue_until_user_message
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)

DATABASE_ENV = "LLM_DATABASE_URL"
HISTORY_ENV = "LLM_HISTORY"
DEFAULT_DATABASE = "sqlite+aiosqlite:///data/chat.db"
NOTICE_EVERY_S = 30.0  # at most one "not saved" toast per session in this many seconds
NOT_SAVED = "⚠️ This conversation could not be saved to your history just now. The chat goes on; it will be saved again once the database is back."
JSON_KEYS = {"metadata", "tags", "generation", "props", "modes", "thread_metadata", "thread_tags", "step_metadata",
             "step_tags", "step_generation", "playerConfig"}


def is_uuid(value) -> bool:
    """Ids of threads, steps and feedback are UUIDs; anything else from a client is refused before a query."""
    try:
        uuid.UUID(str(value))
        return True
    except ValueError:
        return False


def database_url() -> str | None:
    """The configured database URL, or None when history is turned off."""
    if os.environ.get(HISTORY_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return os.environ.get(DATABASE_ENV) or DEFAULT_DATABASE


def _types(dialect: str) -> dict[str, str]:
    if dialect == "postgresql":
        return {"uuid": "UUID", "json": "JSONB", "list": "TEXT[]"}
    return {"uuid": "TEXT", "json": "TEXT", "list": "TEXT"}  # SQLite: JSON stored as text, decoded on read


# Version 1: the tables of docs.chainlit.io/data-layers/sqlalchemy, including the steps columns added after 2.0
# (command 2.1, defaultOpen 2.3, modes 2.9.4). Version 2: what Chainlit 2.12 writes beyond that page.
_V1 = [
    """CREATE TABLE users ("id" {uuid} PRIMARY KEY, "identifier" TEXT NOT NULL UNIQUE, "metadata" {json} NOT NULL,
       "createdAt" TEXT)""",
    """CREATE TABLE threads ("id" {uuid} PRIMARY KEY, "createdAt" TEXT, "name" TEXT, "userId" {uuid},
       "userIdentifier" TEXT, "tags" {list}, "metadata" {json},
       FOREIGN KEY ("userId") REFERENCES users("id") ON DELETE CASCADE)""",
    """CREATE TABLE steps ("id" {uuid} PRIMARY KEY, "name" TEXT NOT NULL, "type" TEXT NOT NULL,
       "threadId" {uuid} NOT NULL, "parentId" {uuid}, "streaming" BOOLEAN NOT NULL, "waitForAnswer" BOOLEAN,
       "isError" BOOLEAN, "metadata" {json}, "tags" {list}, "input" TEXT, "output" TEXT, "createdAt" TEXT,
       "command" TEXT, "start" TEXT, "end" TEXT, "generation" {json}, "showInput" TEXT, "language" TEXT,
       "indent" INT, "defaultOpen" BOOLEAN, "modes" {json},
       FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
    """CREATE TABLE elements ("id" {uuid} PRIMARY KEY, "threadId" {uuid}, "type" TEXT, "url" TEXT,
       "chainlitKey" TEXT, "name" TEXT NOT NULL, "display" TEXT, "objectKey" TEXT, "size" TEXT, "page" INT,
       "language" TEXT, "forId" {uuid}, "mime" TEXT, "props" {json},
       FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
    """CREATE TABLE feedbacks ("id" {uuid} PRIMARY KEY, "forId" {uuid} NOT NULL, "threadId" {uuid} NOT NULL,
       "value" INT NOT NULL, "comment" TEXT,
       FOREIGN KEY ("threadId") REFERENCES threads("id") ON DELETE CASCADE)""",
    'CREATE INDEX threads_user ON threads ("userId")',
    'CREATE INDEX steps_thread ON steps ("threadId")',
    'CREATE INDEX feedbacks_for ON feedbacks ("forId")',
]
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "Chainlit's documented tables: users, threads, steps, elements, feedbacks", _V1),
    (2, "Chainlit 2.12's newer columns, missing from its documented schema (every step write failed without them)",
     ['ALTER TABLE steps ADD COLUMN "autoCollapse" BOOLEAN', 'ALTER TABLE steps ADD COLUMN "icon" TEXT',
      'ALTER TABLE elements ADD COLUMN "autoPlay" BOOLEAN',
      'ALTER TABLE elements ADD COLUMN "playerConfig" {json}']),
]


async def migrate(url: str) -> list[int]:
    """Create or upgrade the schema at `url`; returns the versions applied now (empty when up to date)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":  # sqlite3 commits DDL on its own; this recipe makes BEGIN..COMMIT really atomic
        @event.listens_for(engine.sync_engine, "connect")
        def _no_autobegin(dbapi_connection, _record):
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # and takes the write lock: two starting instances queue
    applied = []
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INT PRIMARY KEY, "
                                    "description TEXT NOT NULL, applied_at TEXT NOT NULL)"))
        types = _types(engine.dialect.name)
        for version, description, statements in MIGRATIONS:
            async with engine.begin() as conn:  # one transaction per version: all of it or none of it
                if engine.dialect.name == "postgresql":  # instances starting together apply each version once
                    await conn.execute(text("SELECT pg_advisory_xact_lock(7263541)"))
                done = (await conn.execute(text("SELECT 1 FROM schema_version WHERE version = :v"), {"v": version})).first()
                if done:
                    continue
                for statement in statements:
                    await conn.execute(text(statement.format(**types)))
                await conn.execute(text("INSERT INTO schema_version VALUES (:v, :d, :t)"),
                                   {"v": version, "d": description, "t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            applied.append(version)
    finally:
        await engine.dispose()
    return applied


BOOL_KEYS = {"streaming", "waitForAnswer", "isError", "defaultOpen", "autoCollapse", "autoPlay", "step_streaming",
             "step_waitforanswer", "step_iserror"}  # SQLite gives 0/1 back; the web client wants true/false


def decode_json(value: Any) -> Any:
    """A JSON column's value as the web client wants it: text that holds a JSON object or list decoded, 'null' None."""
    if value == "null":
        return None
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class HistoryStore(SQLAlchemyDataLayer):
    """Chainlit's SQL data layer on SQLite or PostgreSQL, with JSON handled both ways and failures surfaced."""

    def __init__(self, url: str, **kwargs):
        super().__init__(url, **kwargs)
        # A pooled connection that died with the server is tested and replaced before use (pre-ping), so the first
        # message after PostgreSQL comes back is saved too.
        self.engine = create_async_engine(url, pool_pre_ping=True)
        self.async_session = async_sessionmaker(bind=self.engine, expire_on_commit=False)
        self.sqlite = url.startswith("sqlite")
        self.failures = 0
        self.last_error: str | None = None
        self._noticed: dict[str, float] = {}  # session id -> when it was last told
        self._step_writes: dict[str, list] = {}  # step id -> [lock, writes waiting or running] (_in_order)

    def _bind(self, parameters: dict) -> dict:
        # A dict (step "modes") is JSON on both; a list (thread "tags") is a TEXT[] on PostgreSQL, JSON on SQLite.
        return {k: json.dumps(v) if isinstance(v, dict) or (self.sqlite and isinstance(v, list)) else v
                for k, v in parameters.items()}

    def clean_result(self, obj):
        if isinstance(obj, dict):
            return {k: decode_json(v) if k in JSON_KEYS else bool(v) if k in BOOL_KEYS and isinstance(v, int)
                    else self.clean_result(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.clean_result(item) for item in obj]
        if isinstance(obj, uuid.UUID):
            return str(obj)
        return obj

    async def execute_sql(self, query: str, parameters: dict):
        async with self.async_session() as session:
            try:
                await session.begin()
                result = await session.execute(text(query), self._bind(parameters))
                await session.commit()
                if result.returns_rows:
                    return self.clean_result([dict(row._mapping) for row in result.fetchall()])
                return result.rowcount
            except Exception as e:  # noqa: BLE001 - the base class's contract: log, return None, never raise
                await session.rollback()
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.error("history: a database write or read failed (%s); query: %s", self.last_error,
                          " ".join(query.split())[:120])
                await self._tell_user()
                return None

    # ------------------------------------------------------------------ one step's writes land in the order made
    # Chainlit saves each send/update/remove of a message in a task of its own that nobody awaits, and a save first
    # upserts the thread (several queries), so a message sent and updated at once could be stored as the older
    # version (an upload's "Reading..." instead of its summary, a verdict without its "Why"). The writes of one step
    # take a lock in the order they were made (tasks start in creation order; asyncio's lock is first come, first
    # served), so the last version written is the last one made.
    @contextlib.asynccontextmanager
    async def _in_order(self, step_id):
        entry = self._step_writes.setdefault(step_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._step_writes[step_id]

    @queue_until_user_message()
    async def create_step(self, step_dict):  # also what update_step calls
        async with self._in_order(step_dict.get("id")):
            await SQLAlchemyDataLayer.create_step.__wrapped__(self, step_dict)

    @queue_until_user_message()
    async def delete_step(self, step_id: str):
        async with self._in_order(step_id):
            return await SQLAlchemyDataLayer.delete_step.__wrapped__(self, step_id)

    async def _tell_user(self) -> None:
        """A toast to the session whose write failed (the write runs in a task that carries its context)."""
        try:
            from chainlit.context import context
            session_id = context.session.id
            now = time.monotonic()
            if now - self._noticed.get(session_id, -NOTICE_EVERY_S) < NOTICE_EVERY_S:
                return
            self._noticed[session_id] = now
            if len(self._noticed) > 1000:  # forget sessions told long ago
                self._noticed = {k: t for k, t in self._noticed.items() if now - t < NOTICE_EVERY_S}
            await context.emitter.send_toast(NOT_SAVED, "warning")
        except Exception:  # noqa: BLE001 - no session (a background task, a test): the log line is enough
            pass

    # ------------------------------------------------------------------ who owns what (Chainlit's /feedback checks nothing)
    async def thread_of_step(self, step_id: str, user_identifier: str) -> str | None:
        """The id of the thread holding step `step_id` when `user_identifier` wrote that thread, else None."""
        if not is_uuid(step_id):  # a client's id that is no UUID never reaches a query
            return None
        rows = await self.execute_sql('SELECT s."threadId" AS thread_id FROM steps s JOIN threads t ON t."id" = s."threadId" '
                                      'WHERE s."id" = :step AND t."userIdentifier" = :user', {"step": step_id, "user": user_identifier})
        return str(rows[0]["thread_id"]) if isinstance(rows, list) and rows else None

    async def owns_feedback(self, feedback_id: str, user_identifier: str) -> bool:
        if not is_uuid(feedback_id):
            return False
        rows = await self.execute_sql('SELECT f."id" FROM feedbacks f JOIN threads t ON t."id" = f."threadId" '
                                      'WHERE f."id" = :id AND t."userIdentifier" = :user', {"id": feedback_id, "user": user_identifier})
        return isinstance(rows, list) and bool(rows)

    async def last_profile(self, user_identifier: str) -> str | None:
        """The chat profile of the user's latest thread that recorded one (None when there is none)."""
        rows = await self.execute_sql('SELECT "metadata" FROM threads WHERE "userIdentifier" = :user '
                                      'ORDER BY "createdAt" DESC LIMIT 5', {"user": user_identifier})
        for row in rows if isinstance(rows, list) else []:
            meta = row.get("metadata")
            if isinstance(meta, dict) and meta.get("chat_profile"):
                return meta["chat_profile"]
        return None


def run_sync(coro):
    """Run a coroutine to completion from synchronous code, also when an event loop is already running."""
    import asyncio
    import concurrent.futures
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def open_store(url: str | None = None) -> HistoryStore | None:
    """The app's history store with its schema up to date, or None when history is off or the database cannot
    be reached at start-up (the app then runs without history and the log says why and what to do)."""
    url = url or database_url()
    if url is None:
        return None
    try:
        applied = run_sync(migrate(url))
    except Exception as e:  # noqa: BLE001 - a bad URL or a database that is down must not stop the chat
        log.error("history is off: cannot open the database %s (%s: %s). Check %s (or set %s=0 to run without "
                  "history), then restart.", _safe(url), type(e).__name__, str(e).splitlines()[0] if str(e) else "",
                  DATABASE_ENV, HISTORY_ENV)
        return None
    if applied:
        log.info("history: schema of %s upgraded to version %d", _safe(url), applied[-1])
    return HistoryStore(url)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    import re
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
