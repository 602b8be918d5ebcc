"""An API key is shown once, when it is made (`keras-jobs keys create`, POST /v1/keys), and
stored nowhere: not in any table (only its keyed hash), not in a log line, not in a file of the
service's home; `keys list` shows it without its secret; a revoked key is refused at once."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.auth.keys import KEY_PATTERN
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

# Files of the service's home above this size are model and dataset payloads, not records.
SCANNED_FILE_BYTES = 8 * 1024**2


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`keras-jobs keys ...` in a process of its own, on the suite's database and store."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "app.cli", "keys", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done


def secrets_of(raw: str) -> list[str]:
    """The key and its secret part, each of which must be found nowhere."""
    match = KEY_PATTERN.fullmatch(raw)
    assert match is not None, raw
    return [raw, match[2]]


def database_dump() -> str:
    """Every row of every table of the suite's database, as text."""
    from sqlalchemy import inspect, text

    from app.core.db import get_engine
    from app.tables import Base

    engine = get_engine()
    tables = inspect(engine).get_table_names()
    assert set(Base.metadata.tables) <= set(tables)
    lines = []
    with engine.connect() as conn:
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                lines.append(f"{table}: {tuple(row)!r}")
    return "\n".join(lines)


def home_files(service_env: dict[str, str]) -> list[Path]:
    return [p for p in Path(service_env["KJ_HOME"]).rglob("*")
            if p.is_file() and p.stat().st_size <= SCANNED_FILE_BYTES]


def assert_stored_nowhere(raw: str, service_env: dict[str, str], logs: str) -> None:
    dump = database_dump()
    assert f"'{key_id(raw)}'" in dump  # the dump does hold the key's row
    for value in secrets_of(raw):
        assert value not in dump
        assert value not in logs
        for path in home_files(service_env):
            assert value.encode() not in path.read_bytes(), path
    # What is stored is keyed: not the plain SHA-256 a leaked table could be checked against.
    assert hashlib.sha256(raw.encode()).hexdigest() not in dump


def key_id(raw: str) -> str:
    match = KEY_PATTERN.fullmatch(raw)
    assert match is not None
    return match[1]


def use(client: Any, raw: str) -> int:
    status: int = client.get("/v1/models", headers={"Authorization": f"Bearer {raw}"}).status_code
    return status


def test_a_key_made_by_the_cli_is_stored_nowhere_and_revoked_at_once(
        client: Any, service_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name = f"cli-{secrets.token_hex(4)}"
    made = cli("create", "--tenant", "storage", "--name", name, "--scopes", "read,predict")
    *before, raw = made.stdout.strip().splitlines()
    assert KEY_PATTERN.fullmatch(raw), made.stdout
    printed = "\n".join(before) + made.stderr
    assert use(client, raw) == 200
    # A request that is refused (the key with a wrong secret, then as the wrong scheme) and one
    # that fails deeper (an unknown model) log nothing of the key either.
    assert use(client, raw[:-4] + "AAAA") == 401
    assert client.get("/v1/models", headers={"Authorization": f"Basic {raw}"}).status_code == 401
    assert client.get("/v1/models/nothing-here",
                      headers={"Authorization": f"Bearer {raw}"}).status_code == 404

    listing = cli("list", "--tenant", "storage")
    assert name in listing.stdout
    revoked = cli("revoke", name)
    logs = "\n".join([caplog.text, printed, listing.stdout, listing.stderr, revoked.stdout,
                      revoked.stderr])
    assert_stored_nowhere(raw, service_env, logs)
    # Another process revoked it: this one refuses it from its next request on.
    assert use(client, raw) == 401


def test_a_key_made_over_the_api_is_stored_nowhere_and_revoked_at_once(
        client: Any, service_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name = f"api-{secrets.token_hex(4)}"
    r = client.post("/v1/keys", json={"name": name, "tenant": "storage",
                                      "scopes": ["read"], "expires_in_days": 1})
    assert r.status_code == 201, r.text
    raw = r.json()["key"]
    assert KEY_PATTERN.fullmatch(raw)
    assert r.headers["location"] == f"/v1/keys/{name}"
    assert use(client, raw) == 200
    listed = client.get("/v1/keys", params={"tenant": "storage"})
    assert name in listed.text and "key" not in listed.json()[0]
    for value in secrets_of(raw):
        assert value not in listed.text
        assert value not in client.get("/v1/audit", params={"tenant": "storage"}).text
    assert client.delete(f"/v1/keys/{name}").status_code == 200
    assert_stored_nowhere(raw, service_env, caplog.text)
    assert use(client, raw) == 401
