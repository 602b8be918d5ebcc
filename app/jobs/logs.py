"""What a job's process logs (Keras and TensorFlow warnings, the traceback of a failure), kept
with the job in the artifact store and bounded: past the bound the oldest lines are dropped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.logs import RedactSecrets
from app.core.storage import ArtifactStore

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class BoundedFileHandler(logging.Handler):
    """Appends to a file; once it holds twice `max_bytes`, keeps only the last `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self._write_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
            with self._write_lock:
                with self.path.open("ab") as f:
                    f.write(line)
                    size = f.tell()
                if size > 2 * self.max_bytes:
                    self._trim()
        except Exception:  # noqa: BLE001 - logging must never break the job
            self.handleError(record)

    def _trim(self) -> None:
        data = self.path.read_bytes()[-self.max_bytes:]
        cut = data.find(b"\n") + 1  # start at a whole line
        tmp = self.path.with_suffix(".trim")
        tmp.write_bytes(b"[earlier lines dropped]\n" + data[cut:])
        tmp.replace(self.path)


def read_tail(path: Path, max_bytes: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


@contextmanager
def job_log(store: ArtifactStore, job_id: str, max_bytes: int) -> Iterator[None]:
    """Everything logged in this process (and Python warnings) goes to the job's log too."""
    handler = BoundedFileHandler(store.path(store.log_key(job_id)), max_bytes)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactSecrets())  # tenants read these logs through the API
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
