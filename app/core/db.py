"""Engine and session factory. One engine per process; SQLite gets WAL and a busy timeout
because the API and the worker write to it from two processes. Every wait on the database is
bounded (KJ_DB_*_TIMEOUT_S; on the API's request path each wait for an answer by
KJ_DB_REQUEST_WAIT_S), so an unreachable or frozen database fails a request quickly."""

from __future__ import annotations

import inspect
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import Engine, Select, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.core.errors import not_found
from app.core.state import AppState, Part, current

RowT = TypeVar("RowT")
T = TypeVar("T")
log = logging.getLogger(__name__)


# The client gives up on a PostgreSQL connection this long after the server should have
# cancelled the statement itself (statement_timeout): time for the cancellation to arrive.
ANSWER_GRACE_S = 1.0
# Set by `waits_at_most`: a shorter bound on each wait for the server, for callers that need
# an answer sooner than a statement may take (the pool's pre-ping, /readyz's probe).
_wait_bound: ContextVar[float | None] = ContextVar("kj_db_wait_bound", default=None)


@contextmanager
def waits_at_most(seconds: float) -> Iterator[None]:
    """Within this block (this thread or task), each wait of a PostgreSQL connection for the
    server gives up after `seconds` (the connection is then closed and the pool replaces it)."""
    outer = _wait_bound.get()
    token = _wait_bound.set(seconds if outer is None else min(outer, seconds))
    try:
        yield
    finally:
        _wait_bound.reset(token)


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """An engine whose every wait is bounded (KJ_DB_*_TIMEOUT_S of `settings`, else the
    current ones): connecting, a statement, a free pool slot, and on PostgreSQL any answer from
    the server, so a sick database costs a request a few seconds and a 503, never a thread
    that hangs."""
    settings = settings or get_settings()
    if url.startswith("sqlite"):
        return _sqlite_engine(url, settings)
    return _postgres_engine(url, settings)


def _sqlite_engine(url: str, settings: Settings) -> Engine:
    busy_s = settings.db_statement_timeout_s
    engine = create_engine(url, pool_timeout=settings.db_pool_timeout_s,
                           connect_args={"timeout": busy_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={_ms(busy_s)}")
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


def _postgres_engine(url: str, settings: Settings) -> Engine:
    answer_s = settings.db_statement_timeout_s + ANSWER_GRACE_S
    connect_args = {
        "connect_timeout": settings.db_connect_timeout_s,
        "options": f"-c statement_timeout={_ms(settings.db_statement_timeout_s)}",
        # A vanished peer (host down, network cut) is dropped by the kernel: unacknowledged
        # data after tcp_user_timeout, an idle pooled connection after the keepalive probes.
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 5,
        "keepalives_count": 3, "tcp_user_timeout": _ms(answer_s),
    }
    engine = create_engine(url, pool_pre_ping=True, pool_timeout=settings.db_pool_timeout_s,
                           connect_args=connect_args)
    if engine.dialect.driver == "psycopg":
        _bound_answers(engine, answer_s)
        _bound_pings(engine, settings.db_ping_timeout_s)
    return engine


def _bound_pings(engine: Engine, ping_s: float) -> None:
    """A live server answers the pool's pre-ping in milliseconds: a pooled connection whose
    peer went silent is given up after `ping_s`, not after a statement's bound (the request
    then gets a fresh connection, or a 503 within the connect timeout)."""
    ping = engine.dialect.do_ping

    def bounded_ping(dbapi_connection: Any) -> bool:
        with waits_at_most(ping_s):
            return ping(dbapi_connection)

    setattr(engine.dialect, "do_ping", bounded_ping)  # noqa: B010 - an instance's method


def _bound_answers(engine: Engine, answer_s: float) -> None:
    """Give up on a connection that has not answered within `answer_s`.

    None of the server-side or kernel timeouts sees a peer that accepted the bytes and went
    silent (a frozen proxy or pooler, a stopped server process): the kernel acknowledges the
    query, so tcp_user_timeout and keepalives are satisfied, and statement_timeout never starts
    because the server never got the query. Every wait of a psycopg connection (query, fetch,
    commit, the pool's pre-ping) goes through `Connection.wait`, which takes a deadline since
    psycopg 3.3; the connection is closed when it expires, so the pool discards it."""
    import psycopg

    if "timeout" not in inspect.signature(psycopg.Connection.wait).parameters:
        log.warning("psycopg %s cannot bound a wait for the server; use psycopg >= 3.3",
                    psycopg.__version__)
        return

    class BoundedConnection(psycopg.Connection[Any]):
        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            if timeout is not None:  # the caller's own deadline (e.g. notifies)
                return super().wait(gen, interval=interval, timeout=timeout)
            shorter = _wait_bound.get()
            bound = answer_s if shorter is None else min(answer_s, shorter)
            try:
                return super().wait(gen, interval=interval, timeout=bound)
            except psycopg.errors._WaitTimeout as exc:
                self.pgconn.finish()  # mid-protocol: the connection cannot be reused
                raise psycopg.OperationalError(
                    f"the database did not answer within {bound:g} s") from exc

    gate = ConnectGate(psycopg.OperationalError)

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return gate.connect(lambda: BoundedConnection.connect(*cargs, **cparams))


class ConnectGate:
    """Once a new connection has failed, one attempt at a time tries the database until one
    succeeds; the others fail at once. Without it, every request of a burst against a silent
    database waits its own connect timeout in turn for a pool slot (50 requests: 8 s), where
    one wait tells them all."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error
        self.down = False
        self._trying = threading.Lock()

    def connect(self, make: Callable[[], T]) -> T:
        if not self.down:
            try:
                return make()
            except self.error:
                self.down = True
                raise
        if not self._trying.acquire(blocking=False):
            raise self.error("the database is unreachable (the last connection failed; "
                             "another attempt is under way)")
        try:
            made = make()
            self.down = False
            return made
        finally:
            self._trying.release()


def probe(timeout_s: float) -> None:
    """Raise unless the database answers `SELECT 1` (/readyz): the pooled connection's ping and
    the answer each within `timeout_s`, a new connection within KJ_DB_CONNECT_TIMEOUT_S."""
    with waits_at_most(timeout_s), get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is unreachable, overloaded or too slow (try again later)
    rather than that a statement is wrong: no free pool slot in time, a connection that failed
    or was lost, a driver OperationalError (refused, timed out, statement cancelled, server
    shutting down, too many connections), SQLite still locked after its busy timeout."""
    import psycopg

    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    return isinstance(exc, psycopg.OperationalError)


ENGINE: Part[Engine] = Part(
    "database engine", lambda state: make_engine(state.settings.resolved_database_url,
                                                 state.settings), close=Engine.dispose)


def _sessionmaker(state: AppState) -> sessionmaker[Session]:
    return sessionmaker(bind=state.get(ENGINE), expire_on_commit=False)


SESSIONMAKER: Part[sessionmaker[Session]] = Part("session factory", _sessionmaker)


def get_engine() -> Engine:
    """The current state's engine (one per process, unless a test installs another)."""
    return current().get(ENGINE)


def get_sessionmaker() -> sessionmaker[Session]:
    return current().get(SESSIONMAKER)


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
    # PostgreSQL cannot even compare text holding a NUL: no such id exists, so say so.
    row = session.get(table, ident) if "\x00" not in ident else None
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
    try:
        for callback in session.info.pop("committed", []):
            callback()
    except BaseException:
        for undo in session.info.pop("commit_callback_failed", []):
            undo()
        raise


def on_commit(session: Session, callback: Any) -> None:
    """Run `callback()` once the session's transaction has committed (e.g. enqueue a task, so a
    worker never sees an id before its row exists, or delete files of a deleted row)."""
    session.info.setdefault("after_commit", []).append(callback)


def on_commit_callback_failure(session: Session, callback: Any) -> None:
    """Run `callback()` if the transaction committed but an `on_commit` callback then raised, so
    the caller gets an error for work that is committed (e.g. forget an answer that was
    recorded for replay: the client was told it failed)."""
    session.info.setdefault("commit_callback_failed", []).append(callback)


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
