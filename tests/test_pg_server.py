"""Self-test of tests/pg_server.py: a real PostgreSQL server that can go away and come back."""
from __future__ import annotations

import asyncio

import pytest
from pg_server import postgres_server, postgres_url  # noqa: F401  (pytest fixtures)
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine


async def _select_1(engine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT 1"))).scalar_one()


def test_select_stop_start(postgres_server, postgres_url):
    async def scenario():
        engine = create_async_engine(postgres_url)  # plain engine: its pool recovers by itself
        try:
            assert await _select_1(engine) == 1

            postgres_server.stop()  # the database goes away mid-session
            # the pooled connection fails with DBAPIError; a new connect attempt raises the bare
            # ConnectionRefusedError (an OSError, not wrapped by SQLAlchemy)
            with pytest.raises((DBAPIError, OSError)):
                await asyncio.wait_for(_select_1(engine), 10)

            postgres_server.start()  # ... and comes back on the same port, same data
            assert await _select_1(engine) == 1
        finally:
            await engine.dispose()

    port = postgres_server.port
    asyncio.run(scenario())
    assert postgres_server.port == port and postgres_server.running


def test_each_test_gets_a_fresh_database(postgres_url):
    async def scenario():
        engine = create_async_engine(postgres_url)
        try:
            async with engine.begin() as conn:
                tables = (await conn.execute(text(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"))).scalar_one()
                assert tables == 0  # nothing left over from other tests
                await conn.execute(text("CREATE TABLE leftover (x int)"))
        finally:
            await engine.dispose()

    asyncio.run(scenario())
