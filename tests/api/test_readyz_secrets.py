"""/readyz names what is unreachable without showing a password: here a broker URL whose
password holds an unencoded '/', which the URL parser quotes in its error as the "port"."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.state import fresh

BROKER_PASSWORD = "br0ker/s3cretPW"
DB_PASSWORD = "db-pa55w0rd"


def test_readyz_does_not_show_passwords(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    monkeypatch.setenv("KJ_HOME", str(tmp_path))
    monkeypatch.delenv("KJ_ARTIFACT_ROOT", raising=False)
    # Nothing listens on port 1: both checks fail, each with its driver's error.
    monkeypatch.setenv("KJ_DATABASE_URL", f"postgresql+psycopg://kj:{DB_PASSWORD}@127.0.0.1:1/kj")
    monkeypatch.setenv("KJ_BROKER_URL", f"redis://:{BROKER_PASSWORD}@127.0.0.1:1/0")
    with fresh():
        # No lifespan (no `with`): the checks alone, without migrating or loading TensorFlow.
        r = TestClient(create_app()).get("/readyz")
    monkeypatch.undo()
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["broker"].startswith("error: ") and checks["database"].startswith("error: ")
    assert "***" in checks["broker"], checks["broker"]  # the quoted piece, masked
    for piece in (BROKER_PASSWORD, *BROKER_PASSWORD.split("/"), DB_PASSWORD):
        assert piece not in r.text, f"{piece!r} shown by /readyz: {r.text}"
