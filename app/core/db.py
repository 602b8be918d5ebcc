"""Engine and session factory. One engine per process; SQLite gets WAL and a busy timeout
because the API and the worker write to it from two processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import get_settings
from app.core.errors import not_found

RowT = TypeVar("RowT")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "savepoint")
        def _begin_before_savepoint(conn: Any, _name: Any) -> None:
            # pysqlite only emits BEGIN before DML: a SAVEPOINT issued first would open the
            # transaction itself, and releasing it would commit everything (see SQLAlchemy's
            # pysqlite notes). BEGIN IMMEDIATE first makes the savepoint a real nested one, and
            # takes the write lock before the savepoint reads: a read snapshot taken earlier
            # could not be upgraded to a write once another writer had committed.
            dbapi_conn = conn.connection.dbapi_connection
            if not dbapi_conn.in_transaction:
                dbapi_conn.execute("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def paginate(session: Session, query: Select[Any], order_by: tuple[Any, ...], limit: int,
             offset: int) -> tuple[list[Any], int]:
    """One page of `query`'s rows in `order_by` order, and how many rows there are in all."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(*order_by).limit(limit).offset(offset)).all()
    return list(rows), total


def upsert(session: Session, table: type[Any], values: dict[str, Any], keys: list[str]) -> None:
    """INSERT … ON CONFLICT (keys) DO UPDATE the other columns, on PostgreSQL and SQLite."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values)
    session.execute(stmt.on_conflict_do_update(
        index_elements=keys, set_={k: stmt.excluded[k] for k in values if k not in keys}))


def get_owned(session: Session, table: type[RowT], owner: str, ident: str, kind: str) -> RowT:
    """The row `ident` of `table` if it belongs to `owner`; otherwise 404, exactly as if it did
    not exist (a caller never learns that another owner's id is taken)."""
    row = session.get(table, ident)
    if row is None or getattr(row, "owner", None) != owner:
        raise not_found(kind, ident)
    return row


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on error. What was registered with
    `on_commit` runs once the commit is complete; if it raises, the error reaches the caller
    (the data is committed by then)."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    for callback in session.info.pop("committed", []):
        callback()


def on_commit(session: Session, callback: Any) -> None:
    """Run `callback()` once the session's transaction has committed (e.g. enqueue a task, so a
    worker never sees an id before its row exists, or delete files of a deleted row)."""
    session.info.setdefault("after_commit", []).append(callback)


def on_rollback(session: Session, callback: Any) -> None:
    """Run `callback()` if the transaction rolls back (e.g. remove files written for its rows)."""
    session.info.setdefault("after_rollback", []).append(callback)


# Both events also fire when a SAVEPOINT is released or rolled back; the callbacks belong to the
# outermost transaction.
@event.listens_for(Session, "after_commit")
def _collect_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    session.info.pop("after_rollback", None)
    # Run by session_scope once commit() has returned: a callback that raises inside the commit
    # would leave the session unable to roll back or close cleanly.
    session.info.setdefault("committed", []).extend(session.info.pop("after_commit", []))


@event.listens_for(Session, "after_rollback")
def _run_after_rollback(session: Session) -> None:
    if session.in_nested_transaction():
        return
    session.info.pop("after_commit", None)
    for callback in session.info.pop("after_rollback", []):
        callback()
