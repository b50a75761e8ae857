"""A real, throwaway PostgreSQL server for tests, started by the test run itself.

Usage in a test module (tests/ is on sys.path, like ``from conftest import ...``)::

    from pg_server import postgres_server, postgres_url  # noqa: F401  (pytest fixtures)

    def test_something(postgres_url):      # a fresh, empty database for this test
        engine = create_async_engine(postgres_url)
        ...

    def test_outage(postgres_server, postgres_url):
        postgres_server.stop()              # the database goes away ...
        postgres_server.start()             # ... and comes back: same cluster, same port

``postgres_server`` (session scope) is a started :class:`PostgresServer`; ``postgres_url`` (function
scope) is a SQLAlchemy async URL (``postgresql+asyncpg://postgres@127.0.0.1:PORT/DBNAME``) of a
database created just for the test and dropped afterwards.  Both skip the test, with the reason,
when the PostgreSQL binaries are missing or the server does not come up within ~20 s.

The binaries are looked up in ``$PG_BIN``, then next to ``pg_ctl`` on PATH, then in
``/usr/lib/postgresql/<newest>/bin``.  PostgreSQL refuses to run as root, so when the tests run as
root, initdb and pg_ctl run as the ``postgres`` system user (else ``nobody``) through ``runuser``
(or ``setpriv``), and the temporary data and socket directories are handed to that user.
Authentication is ``trust`` (no password), the server listens on 127.0.0.1 only, with fsync off.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

START_TIMEOUT_S = 20  # how long pg_ctl waits for the server to accept connections
CMD_TIMEOUT_S = 60  # hard limit on any single subprocess (initdb, pg_ctl, psql)
SUPERUSER = "postgres"

__all__ = ["PostgresServer", "PostgresUnavailable", "find_pg_bin", "postgres_server", "postgres_url"]


class PostgresUnavailable(RuntimeError):
    """The server cannot be set up or started here (missing binaries, start failure, timeout)."""


def _version_key(path: str) -> tuple:
    name = Path(path).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:  # /usr/local/bin/pg_ctl may be a symlink into /usr/lib/postgresql/<v>/bin
        candidates.append(Path(pg_ctl).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    for d in candidates:
        if all((d / exe).is_file() and os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


class PostgresServer:
    """One throwaway cluster in a temporary directory; ``start``/``stop`` as often as wanted."""

    def __init__(self, bin_dir: Path | None = None, port: int | None = None, user: str = SUPERUSER):
        self.bin_dir = Path(bin_dir) if bin_dir else find_pg_bin()
        self.port = port
        self.user = user  # database superuser name (not the OS user)
        self.dbname = "postgres"
        self.base: Path | None = None
        self._initialized = False
        self._running = False
        self._os_user = self._pick_os_user()
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ public API
    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy async URL of the default database."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def dsn_for(self, dbname: str | None = None) -> str:
        """Plain libpq/asyncpg DSN (``asyncpg.connect(dsn)``, ``psql dsn``)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname or self.dbname}"

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> "PostgresServer":
        """initdb on first use, then start the server and wait until it accepts connections.

        Raises PostgresUnavailable (with the tail of the server log) on failure.  After stop(),
        brings the same cluster back on the same port."""
        if self._running:
            return self
        if self.bin_dir is None:
            raise PostgresUnavailable(
                "PostgreSQL binaries not found (set PG_BIN, or install postgresql: initdb/pg_ctl/postgres)")
        if not self._initialized:
            self._initdb()
        out = self._base() / "pg_ctl.out"
        # pg_ctl's output goes to a file, not a pipe: the daemonized postmaster must not hold a pipe we wait on.
        with open(out, "wb") as fh:
            try:
                rc = subprocess.run(
                    self._as_os_user([str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S),
                                      "-D", str(self.data_dir), "-l", str(self.log_path)]),
                    stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                    cwd=self._base(), env=self._env(), timeout=START_TIMEOUT_S + 10,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        if rc != 0:
            self._stop_quietly("immediate")
            raise PostgresUnavailable(
                f"PostgreSQL did not start (pg_ctl rc={rc}, -1 = no answer within {START_TIMEOUT_S}s) on port {self.port};\n"
                f"pg_ctl: {_tail(out, 5)}\nserver log:\n{_tail(self.log_path)}")
        self._running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``); the cluster and its data stay for start()."""
        if not self._initialized:
            return
        try:
            r = self._run([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-t", "15", "-m", mode, "-D", str(self.data_dir)],
                          timeout=25)
            ok = r.returncode == 0 or not self._pid_file_exists()
        except subprocess.TimeoutExpired:
            ok = False
        if not ok and mode != "immediate":
            self._stop_quietly("immediate")
        self._running = False

    def cleanup(self) -> None:
        """Stop the server if needed and remove the temporary directory."""
        if self._running or (self._initialized and self._pid_file_exists()):
            self._stop_quietly("fast")
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
        self.base = None
        self._initialized = False
        self._running = False

    def execute(self, sql: str) -> None:
        """Run an admin statement (autocommit) on the default database, e.g. CREATE DATABASE."""
        psql = self._psql()
        if psql:
            r = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn_for(), "-c", sql],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               env=self._env(), timeout=CMD_TIMEOUT_S)
            if r.returncode != 0:
                raise RuntimeError(f"psql failed ({r.returncode}) on {sql!r}: {r.stderr.strip()}")
            return
        self._execute_asyncpg(sql)

    def create_database(self, name: str | None = None) -> str:
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # FORCE: PG 13+, ends leftover connections

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ internals
    def _base(self) -> Path:
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="pgtest-", dir=self._tmp_root()))
        return self.base

    def _tmp_root(self) -> str | None:
        # As root the server runs as another user, which must be able to reach the directory:
        # a private $TMPDIR (e.g. under /root) would not do, so fall back to /tmp.
        root = tempfile.gettempdir()
        if self._os_user is not None:
            p = Path(root).resolve()
            for d in [p, *p.parents]:
                if not (d.stat().st_mode & 0o001):
                    return "/tmp"
        return root

    @staticmethod
    def _pick_os_user() -> pwd.struct_passwd | None:
        """None when already unprivileged; else the user the server runs as."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists")

    def _as_os_user(self, cmd: list[str]) -> list[str]:
        u = self._os_user
        if u is None:
            return cmd
        if shutil.which("runuser"):
            return ["runuser", "-u", u.pw_name, "--", *cmd]
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={u.pw_uid}", f"--regid={u.pw_gid}", "--init-groups", "--", *cmd]
        raise PostgresUnavailable("running as root, and neither runuser nor setpriv is available to drop privileges")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGHOST/PGDATA/...
        env.update(LC_ALL="C", LANG="C")
        if self._os_user is not None:
            env.update(HOME=self._base().as_posix(), USER=self._os_user.pw_name, LOGNAME=self._os_user.pw_name)
        return env

    def _run(self, cmd: list[str], timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run(self._as_os_user(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=self._base(), env=self._env(), timeout=timeout)

    def _initdb(self) -> None:
        base = self._base()
        self.socket_dir.mkdir(exist_ok=True)
        if self._os_user is not None:
            for p in (base, self.socket_dir):
                os.chown(p, self._os_user.pw_uid, self._os_user.pw_gid)
        try:
            r = self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", self.user,
                           "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        except subprocess.TimeoutExpired:
            raise PostgresUnavailable(f"initdb timed out after {CMD_TIMEOUT_S}s") from None
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            raise PostgresUnavailable(f"initdb failed (rc={r.returncode}):\n{tail}")
        if self.port is None:
            self.port = _free_port()
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": "50",
            "max_wal_senders": "0",
            "wal_level": "minimal",
            "autovacuum": "off",
            "log_min_messages": "warning",
        }
        # Appending keeps the file's owner; settings in postgresql.conf survive stop()/start().
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\n# pg_server.py (test server)\n")
            fh.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._initialized = True

    def _pid_file_exists(self) -> bool:
        return self.base is not None and (self.data_dir / "postmaster.pid").exists()

    def _stop_quietly(self, mode: str) -> None:
        try:
            self._run([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-t", "10", "-m", mode, "-D", str(self.data_dir)],
                      timeout=20)
        except (subprocess.TimeoutExpired, OSError):
            pass
        self._running = False

    def _psql(self) -> str | None:
        if self.bin_dir and (self.bin_dir / "psql").is_file():
            return str(self.bin_dir / "psql")
        return shutil.which("psql")

    def _execute_asyncpg(self, sql: str) -> None:
        import asyncio
        import threading

        import asyncpg

        errors: list[BaseException] = []

        async def go():
            conn = await asyncpg.connect(self.dsn_for(), timeout=10)
            try:
                await conn.execute(sql, timeout=CMD_TIMEOUT_S)
            finally:
                await conn.close()

        def runner():  # own thread, own event loop: safe even if the caller is inside a running loop
            try:
                asyncio.run(go())
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        t = threading.Thread(target=runner, daemon=True)
        t.start()
        t.join(CMD_TIMEOUT_S + 15)
        if t.is_alive():
            raise TimeoutError(f"asyncpg timed out on {sql!r}")
        if errors:
            raise errors[0]

    def _atexit(self) -> None:
        # Safety net for interrupted runs: never leave a postmaster or a temp dir behind.
        try:
            self.cleanup()
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------------- pytest fixtures
@pytest.fixture(scope="session")
def postgres_server():
    """A started throwaway PostgreSQL server for the whole session (skips if it cannot run here)."""
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL test server: {e}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    """A SQLAlchemy async URL of a fresh, empty database, dropped after the test."""
    if not postgres_server.running:  # an earlier test stopped it and left it down
        postgres_server.start()
    name = postgres_server.create_database()
    try:
        yield postgres_server.url_for(name)
    finally:
        try:
            if not postgres_server.running:
                postgres_server.start()
            postgres_server.drop_database(name)
        except Exception:  # noqa: BLE001 - a leftover database in a throwaway cluster is harmless
            pass
