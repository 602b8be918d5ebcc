from __future__ import annotations

from pathlib import Path

import pytest

from app.core.broker import celery_config
from app.core.config import Settings


def test_embedded_defaults_live_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KJ_HOME", str(tmp_path))
    s = Settings()
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'keras-jobs.db'}"
    assert s.resolved_broker_url == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert s.resolved_artifact_root == tmp_path / "artifacts"
    assert s.embedded_broker
    # kombu's SQLAlchemy transport hands transport options to create_engine: none for it.
    assert celery_config(s)["broker_transport_options"] == {}


def test_servers_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KJ_DATABASE_URL", "postgresql+psycopg://u:p@db/kj")
    monkeypatch.setenv("KJ_BROKER_URL", "redis://cache:6379/0")
    monkeypatch.setenv("KJ_VISIBILITY_TIMEOUT_S", "3600")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://u:p@db/kj"
    assert not s.embedded_broker
    conf = celery_config(s)
    assert conf["broker_transport_options"] == {
        "visibility_timeout": 3600, "priority_steps": [0, 3, 6, 9],
        "queue_order_strategy": "priority"}
    assert not conf["worker_cancel_long_running_tasks_on_connection_loss"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_max_tasks_per_child"] == 1
