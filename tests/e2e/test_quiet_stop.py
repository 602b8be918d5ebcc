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


@pytest.mark.parametrize("stopped_when", ["ready.", "warm: TensorFlow loaded"])
def test_a_worker_starts_and_stops_quietly(service_env: dict[str, str], client: object,
                                           tmp_path: Path, stopped_when: str) -> None:
    """Stopped as soon as it takes messages, and once its pool process is warm (the parent's
    hand-back signal to an idle pool process once ended it with "exitcode 70"). On the embedded
    broker, as `keras-jobs serve` runs it (the stop took that path there only)."""
    log_path = tmp_path / "worker.log"
    proc = start_worker({**service_env, "KJ_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db"},
                        log_path)
    try:
        _wait_for(log_path, stopped_when)
    finally:
        stop_process(proc)
    text = log_path.read_text(errors="replace")
    # Only JSON is accepted, so Celery's warning about running as root does not apply.
    assert "superuser privileges" not in text, text[-3000:]
    assert text.count("Warm shutdown") <= 1, text[-3000:]
    assert "exitcode 70" not in text, text[-3000:]


def test_ctrl_c_stops_serve_with_one_warm_shutdown(service_env: dict[str, str], client: object,
                                                   tmp_path: Path) -> None:
    """Ctrl-C reaches the terminal's whole process group: `serve`, its API and its worker stop
    with one warm shutdown and no pool child's `exitcode 70` (once reported on one stop in two;
    the worker test above stops a worker as soon as it is ready, as well)."""
    import os
    import signal

    from tests.serve_process import ServeProcess

    env = {**os.environ, **service_env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    serve = ServeProcess(env, tmp_path, stop_signal=signal.SIGINT, own_group=True).start()
    try:
        _wait_for(serve.log_path, "ready.")
    finally:
        status = serve.stop(timeout=60)
    text = serve.log()
    assert status != -signal.SIGKILL, f"not stopped within 60 s:\n{text[-4000:]}"
    assert text.count("Warm shutdown") <= 1, text[-4000:]
    assert "exitcode 70" not in text, text[-4000:]


def test_a_worker_on_an_unmigrated_database_says_so_once(tmp_path: Path) -> None:
    """Started by hand before anything migrated its database, the worker's sweep says what to
    do, once, without a traceback, however many rounds fail alike."""
    import os

    env = {**os.environ, "KJ_HOME": str(tmp_path), "KJ_SWEEP_S": "0.1",
           "KJ_DATABASE_URL": f"sqlite:///{tmp_path}/never-migrated.db",
           "KJ_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db"}
    log_path = tmp_path / "worker.log"
    proc = start_worker(env, log_path)
    try:
        _wait_for(log_path, "orphan sweep failed")
        _wait_for(log_path, "celery@")  # the banner, then some twenty rounds more
        time.sleep(2)
    finally:
        stop_process(proc)
    text = log_path.read_text(errors="replace")
    assert text.count("orphan sweep failed") == 1, text[-3000:]
    assert "the database has no keras-jobs tables" in text and "keras-jobs migrate" in text
    assert "Traceback" not in text, text[-3000:]
