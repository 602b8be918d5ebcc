"""`keras-jobs`: serve (API plus, by default, its own worker), worker, migrate."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys

from app.core.config import get_settings

log = logging.getLogger("keras_jobs")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if `serve` dies without cleaning up (e.g. SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_worker(concurrency: int = 1) -> subprocess.Popen[bytes]:
    """The embedded worker: a separate process (exec'd, so nothing of this one is forked)."""
    cmd = [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(concurrency)]
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent if sys.platform == "linux" else None)


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Warm shutdown first; a job still running then is ended, and since its message was never
    acked it runs again (resuming from its checkpoint) when the service next starts."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.core.migrate import upgrade

    settings = get_settings()
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    workers = max(1, min(args.workers, os.cpu_count() or 1))
    if workers != args.workers:
        log.warning("--workers %d: this machine has %d cores; running %d API processes",
                    args.workers, os.cpu_count() or 1, workers)
    worker = None if args.no_worker else start_worker(args.concurrency)
    try:
        uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port,
                    workers=workers, log_level=settings.log_level.lower())
    finally:
        if worker is not None:
            stop_worker(worker)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import app

    settings = get_settings()
    settings.ensure_dirs()
    argv = ["worker", f"--loglevel={settings.log_level}", "-Q", settings.queue,
            "--pool", "prefork", "--concurrency", str(args.concurrency)]
    if settings.embedded_broker:
        # The SQLAlchemy transport has no fanout exchange: no remote control, gossip or mingle.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv)
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    from app.core.migrate import upgrade

    settings = get_settings()
    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    print(f"database at head: {settings.resolved_database_url.split('@')[-1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-jobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API (and, unless --no-worker, a worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true",
                       help="do not start a worker (compose runs workers as their own service)")
    serve.add_argument("--concurrency", type=int, default=1, help="jobs the embedded worker "
                       "runs at once")
    serve.add_argument("--workers", type=int, default=1, help="API processes (each loads the "
                       "models it serves; at most one per core)")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a Celery worker for training jobs")
    worker.add_argument("--concurrency", type=int, default=1,
                        help="jobs at once (one per GPU in production)")
    worker.set_defaults(func=cmd_worker)
    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest")
    migrate.set_defaults(func=cmd_migrate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=get_settings().log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
