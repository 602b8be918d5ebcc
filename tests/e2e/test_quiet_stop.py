"""A worker's start and stop log what an operator needs, not Celery's noise."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import start_worker, stop_process

pytestmark = pytest.mark.slow


def _wait_for(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, path.read_text(errors="replace")[-3000:]
        time.sleep(0.2)


def test_a_worker_starts_and_stops_quietly(service_env: dict[str, str], client: object,
                                           tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    proc = start_worker(service_env, log_path)
    try:
        _wait_for(log_path, "ready.")
    finally:
        stop_process(proc)
    text = log_path.read_text(errors="replace")
    # Only JSON is accepted, so Celery's warning about running as root does not apply.
    assert "superuser privileges" not in text, text[-3000:]
    assert text.count("Warm shutdown") <= 1, text[-3000:]
    assert "exitcode 70" not in text, text[-3000:]
