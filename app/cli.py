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
    if settings.migrate_on_start:  # off where `keras-jobs migrate` runs first (compose)
        upgrade(settings.resolved_database_url)
    refusal = _auth_at_start(args.host)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
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


def _auth_at_start(host: str) -> str | None:
    """Why serving on `host` is refused, or None after saying how requests are let in. The
    API processes learn the address from KJ_BIND_HOST (KJ_AUTH=auto is open only on loopback)."""
    from app.auth.access import is_loopback, refuses_to_start
    from app.auth.keys import KEYS, key_hash

    KEYS.load()
    key_hash("")  # the home's pepper is made (or its absence warned about) now, not mid-request
    refusal = refuses_to_start(host, KEYS.any_key)
    if refusal is not None:
        return refusal
    os.environ["KJ_BIND_HOST"] = host
    get_settings.cache_clear()
    mode = get_settings().auth
    if mode == "off":
        log.warning("authentication is off (KJ_AUTH=off): every request is served, as tenant "
                    "'local'")
    elif mode == "auto" and is_loopback(host) and not KEYS.any_key:
        log.info("authentication: open on %s while no API key exists (KJ_AUTH=auto); the first "
                 "`keras-jobs keys create` turns keys on", host)
    else:
        log.info("authentication: API keys required (KJ_AUTH=%s)", mode)
    return None


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys, made on the server's own database (the first admin key comes from here)."""
    from app.auth import audit, keys
    from app.core.db import session_scope
    from app.core.errors import DomainError
    from app.core.migrate import upgrade

    settings = get_settings()
    settings.ensure_dirs()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the key is what this prints
    upgrade(settings.resolved_database_url)
    try:
        with session_scope() as s:
            if args.keys_command == "create":
                row, raw = keys.create(s, tenant=args.tenant, name=args.name,
                                       scopes=[x.strip() for x in args.scopes.split(",") if x],
                                       expires_in_days=args.expires_in_days, created_by="cli")
                audit.record(s, tenant=row.tenant, actor="cli", action="key.create",
                             target=f"key/{row.name}", scopes=row.scopes)
                expires = row.expires_at.isoformat() if row.expires_at else "never"
                print(f"created key '{row.name}' for tenant '{row.tenant}' (scopes "
                      f"{','.join(row.scopes)}; expires {expires}); it is shown only now:")
                print(raw)
            elif args.keys_command == "list":
                print(f"{'NAME':<24} {'TENANT':<16} {'SCOPES':<28} {'EXPIRES':<26} "
                      f"{'REVOKED':<26} LAST USED")
                for k in keys.list_(s, args.tenant):
                    print(f"{k.name:<24} {k.tenant:<16} {','.join(k.scopes):<28} "
                          f"{_when(k.expires_at):<26} {_when(k.revoked_at):<26} "
                          f"{_when(k.last_used_at)}")
            else:
                row = keys.revoke(s, args.name)
                audit.record(s, tenant=row.tenant, actor="cli", action="key.revoke",
                             target=f"key/{row.name}")
                print(f"revoked key '{row.name}' (tenant '{row.tenant}')")
    except DomainError as exc:
        print(f"keras-jobs keys: {exc}", file=sys.stderr)
        return 2 if exc.status == 422 else 1
    return 0


def _when(value: object) -> str:
    return "-" if value is None else str(getattr(value, "isoformat", lambda: value)())


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
    keys_ = sub.add_parser("keys", help="API keys: create, list, revoke (on the server's "
                           "database)")
    keys_sub = keys_.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key; its last line is the key")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", default="read,write,predict",
                        help="comma-separated: read, write, predict, admin (its own tenant), "
                        "operator (every tenant)")
    create.add_argument("--expires-in-days", type=float, default=None)
    listing = keys_sub.add_parser("list", help="every key (never the key itself)")
    listing.add_argument("--tenant", default=None)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    keys_.set_defaults(func=cmd_keys)
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
