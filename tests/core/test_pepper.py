"""Keys are hashed with a pepper kept out of the database: KJ_KEY_PEPPER, else one generated on
first start into the home (0600); a home whose keys predate it keeps the built-in pepper (so
they keep working) and says so."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.auth.keys import BUILT_IN_PEPPER, PEPPER_FILE
from app.core.db import session_scope
from app.tables import ApiKey
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # each test runs `keras-jobs keys` in a process of its own


def make_key(name: str, **env: str) -> tuple[str, str, str]:
    """`keras-jobs keys create` in its own process: (the key, its stored hash, stderr)."""
    full = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    done = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant",
                           "local", "--name", name], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    raw = done.stdout.splitlines()[-1]
    with session_scope() as s:
        stored = s.scalar(select(ApiKey.hash).where(ApiKey.name == name))
    assert stored is not None
    return raw, stored, done.stderr


def hashed(pepper: str, raw: str) -> str:
    return hmac.new(pepper.encode(), raw.encode(), hashlib.sha256).hexdigest()


def test_a_fresh_home_gets_a_private_pepper(client: Any, service_env: dict[str, str]) -> None:
    # The suite's first key (the `client` fixture) was made on a home with no key yet.
    path = Path(service_env["KJ_HOME"]) / PEPPER_FILE
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pepper = path.read_text().strip()
    assert len(pepper) == 64 and pepper != BUILT_IN_PEPPER
    raw, stored, _ = make_key("pepper-shared")  # another process of the same home uses it
    assert stored == hashed(pepper, raw) != hashed(BUILT_IN_PEPPER, raw)


def test_a_home_with_older_keys_keeps_the_built_in_pepper(client: Any, tmp_path: Path) -> None:
    # Keys exist (the suite's) and this home has no pepper file: as a home from before the
    # pepper file, whose keys were hashed with the built-in pepper.
    raw, stored, stderr = make_key("pepper-legacy", KJ_HOME=str(tmp_path))
    assert stored == hashed(BUILT_IN_PEPPER, raw)
    assert not (tmp_path / PEPPER_FILE).exists()
    assert "built-in pepper" in stderr and "KJ_KEY_PEPPER" in stderr


def test_a_pepper_in_the_environment_wins(client: Any, tmp_path: Path) -> None:
    raw, stored, stderr = make_key("pepper-env", KJ_HOME=str(tmp_path),
                                   KJ_KEY_PEPPER="from-the-environment")
    assert stored == hashed("from-the-environment", raw)
    assert not (tmp_path / PEPPER_FILE).exists() and "built-in pepper" not in stderr
