"""An API process upgrades the schema at start-up unless KJ_MIGRATE_ON_START=false (compose runs
`keras-jobs migrate` once instead, before every replica)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from app.core.db import make_engine
from app.core.state import fresh


def tables_after_start(home: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> set[str]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    monkeypatch.setenv("KJ_HOME", str(home))
    for var in ("KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT", "KJ_MIGRATE_ON_START"):
        monkeypatch.delenv(var, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        with fresh(), TestClient(create_app()) as client:  # runs the lifespan
            assert client.get("/healthz").status_code == 200
    finally:
        monkeypatch.undo()
    engine = make_engine(f"sqlite:///{home / 'keras-jobs.db'}")
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_api_start_up_migrates_by_default(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"alembic_version", "jobs"} <= tables_after_start(tmp_path, monkeypatch)


def test_api_start_up_leaves_the_schema_when_told(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tables = tables_after_start(tmp_path, monkeypatch, KJ_MIGRATE_ON_START="false")
    assert "alembic_version" not in tables and "jobs" not in tables
