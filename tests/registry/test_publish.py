"""Two publishers racing for the next version of one model: both succeed, with distinct
numbers, each folder holding its own file, and the loser's other work in its transaction kept
(only the failed attempt's savepoint is undone). On PostgreSQL and on SQLite."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import reset_caches


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, client: Any,
             tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.param
        return
    from app.core.migrate import upgrade

    saved = {k: os.environ.get(k) for k in ("KJ_DATABASE_URL", "KJ_ARTIFACT_ROOT")}
    os.environ["KJ_DATABASE_URL"] = f"sqlite:///{tmp_path / 'kj.db'}"
    os.environ["KJ_ARTIFACT_ROOT"] = str(tmp_path / "artifacts")
    reset_caches()
    upgrade(os.environ["KJ_DATABASE_URL"])
    try:
        yield request.param
    finally:
        for key, value in saved.items():
            os.environ.update({key: value}) if value is not None else os.environ.pop(key, None)
        reset_caches()


def test_racing_publishers_take_distinct_versions(database: str) -> None:
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.core.storage import get_store
    from app.registry.service import publish_version
    from app.tables import Spec

    store = get_store()
    name = f"race-{secrets.token_hex(3)}"
    first_published, release = threading.Event(), threading.Event()
    versions: dict[str, int] = {}
    errors: list[BaseException] = []
    spec_name = f"kept-{secrets.token_hex(3)}"

    def publish(who: str, before: Any = None, after: Any = None) -> None:
        try:
            with session_scope() as s, store.staging() as staging:
                if before:
                    before(s)
                store.model_file(staging).write_bytes(who.encode())
                versions[who] = publish_version(s, store, "local", name, staging,
                                                 actor="tests").version
                if after:
                    after()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def hold_open() -> None:  # the first publisher holds its uncommitted row
        first_published.set()
        assert release.wait(20)

    def other_work(s: Any) -> None:  # the second publisher's transaction has work of its own
        assert first_published.wait(20)
        s.add(Spec(owner="local", name=spec_name, spec={}, keras_config={}, summary={},
                   total_params=0, trainable_params=0))
        s.flush()

    first = threading.Thread(target=publish, args=("first", None, hold_open))
    second = threading.Thread(target=publish, args=("second", other_work))
    first.start()
    second.start()
    time.sleep(1.0)
    # The second waits behind the first's uncommitted row (PostgreSQL) or write lock (SQLite).
    assert "second" not in versions and not errors
    release.set()
    first.join(30)
    second.join(30)
    assert not errors, errors
    assert versions == {"first": 1, "second": 2}
    for who, version in versions.items():
        folder = store.path(store.model_key("local", name, version))
        assert store.model_file(folder).read_bytes() == who.encode()
    with session_scope() as s:
        assert s.scalar(select(Spec.id).where(Spec.name == spec_name)) is not None
