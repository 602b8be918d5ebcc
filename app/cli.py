"""`keras-jobs`: serve (API plus, by default, its own worker), worker, migrate; and the
client's commands (specs, datasets, jobs, models; keras_jobs/cli.py)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys

from app.core.config import get_settings
from app.core.logs import configure_logging, uvicorn_log_config
from app.core.metrics_dir import remove_dir, use_fresh_dir

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
    # Before the worker and the API processes start: they all write their metrics there, and
    # /metrics in any API process adds them up.
    metrics_dir = use_fresh_dir(settings.home, "serve")
    upgrade(settings.resolved_database_url)
    workers = max(1, min(args.workers, os.cpu_count() or 1))
    if workers != args.workers:
        log.warning("--workers %d: this machine has %d cores; running %d API processes",
                    args.workers, os.cpu_count() or 1, workers)
    worker = None if args.no_worker else start_worker(args.concurrency)
    try:
        uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port,
                    workers=workers, log_level=settings.log_level.lower(),
                    log_config=uvicorn_log_config(settings.log_level, settings.log_format))
    finally:
        if worker is not None:
            stop_worker(worker)
        remove_dir(metrics_dir)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    settings.ensure_dirs()
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    metrics_dir = None
    if port:  # before the pool forks: every child writes its metrics into this folder
        os.environ["KJ_WORKER_METRICS_PORT"] = str(port)
        metrics_dir = use_fresh_dir(settings.home, "worker")
    from worker.celery_app import app

    if metrics_dir is not None:
        from worker.observe import start_metrics_server

        start_metrics_server(port, args.metrics_host, metrics_dir)
    # The banner is not a log line: left out when every line must be JSON.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    argv = [*quiet, "worker", f"--loglevel={settings.log_level}", "-Q", settings.queue,
            "--pool", "prefork", "--concurrency", str(args.concurrency)]
    if settings.embedded_broker:
        # The SQLAlchemy transport has no fanout exchange: no remote control, gossip or mingle.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    try:
        app.worker_main(argv)
    finally:
        if metrics_dir is not None:
            remove_dir(metrics_dir)
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    """TensorBoard over the store's tensorboard/ folder (one run per fit job that asked for
    it). Replaces this process, so signals reach TensorBoard itself."""
    import importlib.util

    from app.core.storage import ArtifactStore

    if importlib.util.find_spec("tensorboard") is None:
        print("keras-jobs tensorboard: the tensorboard package is not installed "
              "(pip install tensorboard)", file=sys.stderr)
        return 1
    logdir = get_settings().resolved_artifact_root / ArtifactStore.tensorboard_key()
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only store: TensorBoard shows the runs that are there
        pass
    os.execv(sys.executable, [sys.executable, "-m", "tensorboard.main", "--logdir",
                              str(logdir), "--host", args.host, "--port", str(args.port)])


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
    worker.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus "
                        "metrics on this port (default: KJ_WORKER_METRICS_PORT; 0: off)")
    worker.add_argument("--metrics-host", default="127.0.0.1",
                        help="address of the metrics endpoint (0.0.0.0 in a container)")
    worker.set_defaults(func=cmd_worker)
    board = sub.add_parser("tensorboard", help="run TensorBoard over the fit jobs' event files")
    board.add_argument("--host", default="127.0.0.1")
    board.add_argument("--port", type=int, default=6006)
    board.set_defaults(func=cmd_tensorboard)
    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest")
    migrate.set_defaults(func=cmd_migrate)
    from keras_jobs.cli import add_commands  # the client's: specs, datasets, jobs, models

    add_commands(parser, sub)
    args = parser.parse_args(argv)
    configure_logging(get_settings().log_level, get_settings().log_format)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
