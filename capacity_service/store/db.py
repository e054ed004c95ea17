"""Engines for SQLite (WAL, busy timeout, immediate transactions) and PostgreSQL, and
`Database`: the transactions every part of the store runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from capacity_service.store.vocabulary import StoreError

SQLITE_BUSY_MS = 30_000


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for `url`; nothing connects until it is used. PostgreSQL keeps up to
    `pool_size` connections open and makes no more: a connection opened and closed per
    request would cost more than the request (a server process per connection)."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=0)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it)
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit no longer waits for fsync; the database stays consistent
    # through crashes, and only a power loss can drop the last commits
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


READ_ONLY = "capacity_read_only"  # execution option of the engine that only reads


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock up front: two claimers never both read "queued".
    # Read-only transactions begin DEFERRED: under WAL they never wait for a writer.
    if connection.get_execution_options().get(READ_ONLY):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def utc_now() -> datetime:
    """This machine's time, for the stamps a row keeps (created, started, finished); the
    leases are timed by the database's clock instead (`Database.clock`)."""
    return datetime.now(UTC)


def database_now_sql(engine: Engine) -> Any:
    """SQL for the database's clock in seconds since the epoch."""
    if engine.dialect.name == "sqlite":
        return text("(julianday('now') - 2440587.5) * 86400.0")
    return text("extract(epoch from clock_timestamp())")


class Database:
    """One SQL database (SQLite or PostgreSQL): its engine and its transactions."""

    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.engine: Engine = make_engine(url, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        reader = self.engine.execution_options(**{READ_ONLY: True})
        self._read_sessions = sessionmaker(reader, expire_on_commit=False)
        self._db_now = database_now_sql(self.engine)

    @contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on error. A read-only one
        never waits for the write lock on SQLite."""
        session = self._read_sessions() if read_only else self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as error:
            session.rollback()
            raise StoreError(f"database error: {error.__class__.__name__}: {error}") from error
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """StoreError unless the database answers."""
        with self.session(read_only=True) as session:
            session.execute(text("SELECT 1"))

    def clock(self, session: Session) -> float:
        """The database's time in seconds since the epoch: leases and backoffs are timed
        by it, so workers on machines whose clocks disagree still agree on them."""
        return float(session.execute(select(self._db_now)).scalar_one())
