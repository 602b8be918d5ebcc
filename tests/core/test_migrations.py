"""The Alembic history builds exactly the schema the ORM models describe, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.core.db import make_engine
from app.core.migrate import upgrade
from app.tables import Base


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kj.db'}"
    upgrade(url)
    upgrade(url)  # idempotent: a second start-up finds the schema at head
    assert _diff(url) == []


def test_postgres_upgrade_matches_models(pg_database: str) -> None:
    upgrade(pg_database)
    assert _diff(pg_database) == []
    engine = make_engine(pg_database)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"specs", "datasets", "jobs", "job_epochs", "model_versions",
            "alembic_version"} <= tables


@pytest.mark.parametrize("cmd", [["migrate"]])
def test_migrate_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmd: list[str]) -> None:
    from app.cli import main
    from app.core.state import fresh

    monkeypatch.setenv("KJ_HOME", str(tmp_path))
    for var in ("KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    with fresh():
        assert main(cmd) == 0
    assert _diff(f"sqlite:///{tmp_path / 'keras-jobs.db'}") == []
