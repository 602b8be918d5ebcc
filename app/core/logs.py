"""Process-wide logging: plain text (the default) or one JSON object per line
(`KJ_LOG_FORMAT=json`), with the request id and job id of the code that logged, when known.

The ids live in context variables: the API's `RequestId` middleware sets `request_id` for the
request it passes on (every task the request starts inherits it), and the worker sets `job_id`
while a job runs. A worker child runs one job at a time, in one thread, but the job starts
threads of its own (the cancel watcher) and new threads begin with an empty context; so the job
id is also kept process-wide and read when the context has none.

`uvicorn_log_config` hands the same formatter to uvicorn as a dictConfig: with `--workers N`
uvicorn spawns fresh interpreters that configure logging from that dict, not from this
process's handlers."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from app.core.redact import MARKERS, redact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
_process_job_id: str | None = None


def set_job_id(job_id: str | None) -> None:
    """The job this process runs now (None once it has ended)."""
    global _process_job_id
    _process_job_id = job_id
    _job_id.set(job_id)


def current_job_id() -> str | None:
    return _job_id.get() or _process_job_id


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message, pid, and
    request_id / job_id when known; a traceback goes into `exc_info` as one string."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        job = current_job_id()
        if job is not None:
            out["job_id"] = job
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class RedactSecrets(logging.Filter):
    """Masks URL passwords, bearer tokens and API keys in a record's message (app.core.redact),
    whoever logged it (a driver's error quoting its URL, a client's headers). Only a message
    that contains one of the markers is rewritten; the record then carries the redacted text and
    no args, so every handler after this one sees it masked too."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format is the handler's to report
            return True
        if any(marker in message for marker in MARKERS):
            masked = redact(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def stderr_handler(capture_warnings: bool = False) -> logging.Handler:
    """A handler to stderr; with `capture_warnings`, Python's warnings (printed straight to
    stderr otherwise, e.g. Celery's SecurityWarning) become log records too, so that in JSON
    they are JSON lines like the rest."""
    logging.captureWarnings(capture_warnings)
    return logging.StreamHandler(sys.stderr)


def configure_logging(level: str, fmt: str) -> None:
    """The root logger writes to stderr in `fmt` ("text" or "json"). Like basicConfig, it
    leaves a root logger that already has handlers alone (a test runner's, an embedding
    program's)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = stderr_handler(capture_warnings=fmt == "json")
    handler.addFilter(RedactSecrets())
    handler.setFormatter(formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())


def uvicorn_log_config(level: str, fmt: str) -> dict[str, Any]:
    """uvicorn's loggers hand their records to the root logger, which formats every line the
    same way (uvicorn's default config gives them handlers and formats of their own)."""
    chosen: dict[str, Any] = ({"()": "app.core.logs.JsonFormatter"} if fmt == "json"
                              else {"format": TEXT_FORMAT})
    passed_on = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": chosen},
        "filters": {"redact": {"()": "app.core.logs.RedactSecrets"}},
        "handlers": {"default": {"()": "app.core.logs.stderr_handler", "formatter": "default",
                                 "filters": ["redact"], "capture_warnings": fmt == "json"}},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {name: dict(passed_on) for name in ("uvicorn", "uvicorn.error",
                                                        "uvicorn.access")},
    }
