"""The folder where the processes of one `keras-jobs serve` (or one worker) keep their
Prometheus metrics, so that a scrape of any of them reports the sum of all.

prometheus_client's multiprocess mode: each process writes its counters and histograms into
memory-mapped files of its own in `PROMETHEUS_MULTIPROC_DIR`, and the process that answers a
scrape reads them all (app.core.metrics). The library decides between that and plain in-memory
values when it is first imported, from the environment, so the folder is set here before
anything imports it: this module must not import prometheus_client itself.

Each folder is fresh: counters left by an earlier run would otherwise be counted again. Its
name holds the host and the pid of the process that made it, so several services sharing
KJ_HOME (containers on one volume, each its own pid 1) never share or wipe one another's."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def use_fresh_dir(home: Path, role: str) -> Path:
    """Make `home/metrics/<role>-<host>-<pid>` (emptied) this process's metrics folder, for
    it and every process it starts. Folders that earlier runs on this host left are removed."""
    host = socket.gethostname()
    parent = home / "metrics"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f"{role}-{host}-*"):
        pid = old.name.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = parent / f"{role}-{host}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    os.environ[ENV] = str(path)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported already: make metrics created from now on use the files
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def current_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
