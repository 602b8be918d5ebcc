"""The application state: parts built once per state from that state's settings, a fresh state
for a block and the one before it back afterwards (the session's app ready again: a test that
once replaced the serving left /readyz "starting" for every test after it), and the Redis
clients' one timeout policy."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.redis_clients import ON_REQUEST_PATH_S, WAKE_UP_S, RedisClients, broker_redis_url
from app.core.settings import Settings
from app.core.state import AppState, Part, current, fresh


def test_a_part_is_built_once_per_state_from_that_states_settings(tmp_path: Path) -> None:
    from app.core.storage import STORE, get_store

    built: list[AppState] = []
    part = Part("probe", lambda state: built.append(state) or len(built))
    mine = AppState(Settings(home=tmp_path, artifact_root=tmp_path / "mine"))
    assert mine.built(part) is None
    assert mine.get(part) == mine.get(part) == 1 and built == [mine]
    # Built from its own settings, though another state is current.
    assert mine.get(STORE).root == tmp_path / "mine" != get_store().root
    mine.close()
    assert mine.built(part) is None and mine.get(part) == 2  # built again after a close


def test_close_releases_parts_last_built_first_and_goes_on_past_a_failure() -> None:
    closed: list[str] = []

    def fail(_value: object) -> None:
        closed.append("b")
        raise RuntimeError("b cannot close")

    a = Part("a", lambda _s: "a", close=closed.append)
    b = Part("b", lambda state: state.get(a) + "b", close=fail)
    state = AppState(Settings())
    state.get(b)
    state.close()
    assert closed == ["b", "a"]


def test_fresh_installs_a_state_for_the_block_then_the_one_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.config import get_settings
    from app.core.db import ENGINE

    before = current()
    monkeypatch.setenv("KJ_QUEUE", "fresh-state-queue")
    monkeypatch.setenv("KJ_DATABASE_URL", f"sqlite:///{tmp_path / 'kj.db'}")
    with fresh() as state:
        assert current() is state is not before
        assert get_settings().queue == "fresh-state-queue"
        engine = state.get(ENGINE)
        with engine.connect():
            assert engine.pool.checkedout() == 1
    assert current() is before and get_settings().queue != "fresh-state-queue"
    assert state.built(ENGINE) is None  # closed: its engine disposed


def test_the_sessions_app_is_ready_again_after_a_fresh_state(client: Any) -> None:
    from app.predict.service import get_serving

    serving = get_serving()
    assert client.get("/readyz").status_code == 200
    with fresh():
        assert get_serving() is not serving
        # This state's serving was never preloaded (no app started with it).
        assert client.get("/readyz").json()["checks"]["serving"] == "starting"
    assert get_serving() is serving
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text


def test_whether_the_broker_is_redis_is_decided_on_the_resolved_url(tmp_path: Path) -> None:
    assert broker_redis_url(Settings(home=tmp_path, broker_url="")) is None  # embedded
    assert broker_redis_url(Settings(broker_url="sqla+sqlite:///b.db")) is None
    for url in ("redis://cache:6379/0", "rediss://cache:6380/1"):
        assert broker_redis_url(Settings(broker_url=url)) == url


def test_each_redis_wait_is_bounded_by_the_policy() -> None:
    """A Redis that accepts connections and never answers: a client on a request's path gives
    up after ON_REQUEST_PATH_S; clients are shared per timeout."""
    import redis

    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        clients = RedisClients(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        try:
            fast = clients.client(ON_REQUEST_PATH_S)
            assert clients.client(ON_REQUEST_PATH_S) is fast
            assert clients.client(WAKE_UP_S) is not fast
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                fast.ping()
            assert ON_REQUEST_PATH_S <= time.monotonic() - started < 1.0
        finally:
            clients.close()
