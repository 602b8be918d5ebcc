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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.core.config import get_settings
from app.core.logs import configure_logging, uvicorn_log_config
from app.core.metrics_dir import remove_dir, use_fresh_dir

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.tables import ApiKey

log = logging.getLogger("keras_jobs")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if `serve` dies without cleaning up (e.g. SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_worker(concurrency: int = 1) -> subprocess.Popen[bytes]:
    """The embedded worker: a separate process (exec'd, so nothing of this one is forked), in
    a session of its own: a terminal's Ctrl-C reaches `serve` only, which then stops the worker
    once (reaching the worker too, it began a second warm shutdown: "Warm shutdown" twice)."""
    cmd = [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(concurrency)]
    return subprocess.Popen(cmd, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)


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
    """API keys: through a running server's /v1/keys when `--url` is given (with an admin's or
    operator's key), else on the database of this process's KJ_HOME (the first admin key comes
    from here, before any key exists)."""
    if getattr(args, "url_given", False):
        return _keys_on_server(args)
    return _keys_on_database(args)


def _keys_on_server(args: argparse.Namespace) -> int:
    from keras_jobs.client import Client
    from keras_jobs.errors import KerasJobsError

    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        with Client(args.url, args.api_key) as client:
            if args.keys_command == "create":
                key = client.create_key({"tenant": args.tenant, "name": args.name,
                                         "scopes": _scopes(args.scopes),
                                         "expires_in_days": args.expires_in_days})
                _print_created(key, key["key"])
            elif args.keys_command == "list":
                _print_keys(client.keys(args.tenant))
            else:
                key = client.revoke_key(args.name)
                print(f"revoked key '{key['name']}' (tenant '{key['tenant']}')")
    except (KerasJobsError, OSError, ValueError) as exc:
        print(f"keras-jobs keys: {exc}", file=sys.stderr)
        return 1
    return 0


def _keys_on_database(args: argparse.Namespace) -> int:
    from sqlalchemy import make_url

    from app.auth import keys
    from app.core.db import session_scope
    from app.core.errors import DomainError
    from app.core.migrate import upgrade

    settings = get_settings()
    # Said because a wrong KJ_HOME silently makes a new, empty home (and keys nobody checks).
    database = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    print(f"keras-jobs keys: on the database of KJ_HOME={settings.home} ({database}); "
          "--url URL acts on a running server instead", file=sys.stderr)
    settings.ensure_dirs()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the key is what this prints
    upgrade(settings.resolved_database_url)
    try:
        with session_scope() as s:
            if args.keys_command == "create":
                hidden = _local_rows_hidden_by(s, args.tenant)
                row, raw = keys.create(s, tenant=args.tenant, name=args.name,
                                       scopes=_scopes(args.scopes),
                                       expires_in_days=args.expires_in_days, created_by="cli")
                if hidden:
                    print(f"note: the {hidden} specs, datasets, jobs and model versions made "
                          "before keys belong to tenant 'local' and stay there: keys of tenant "
                          f"'{row.tenant}' do not see them. A key made with --tenant local "
                          "(or --scopes operator) reaches them.", file=sys.stderr)
                _print_created(_key_fields(row), raw)
            elif args.keys_command == "list":
                _print_keys([_key_fields(k) for k in keys.list_(s, args.tenant)])
            else:
                row = keys.revoke(s, args.name, actor="cli")
                print(f"revoked key '{row.name}' (tenant '{row.tenant}')")
    except DomainError as exc:
        print(f"keras-jobs keys: {exc}", file=sys.stderr)
        return 2 if exc.status == 422 else 1
    return 0


def _local_rows_hidden_by(session: Session, tenant: str) -> int:
    """How many rows of tenant 'local' (open mode's) exist when `tenant`'s first key is made:
    they stay with 'local', out of the new key's sight."""
    from sqlalchemy import func, select

    from app.auth import keys
    from app.tables import Dataset, Job, ModelVersion, Spec

    if tenant == "local" or keys.list_(session, tenant):
        return 0
    return sum(session.scalar(select(func.count()).select_from(t).where(t.owner == "local"))
               or 0 for t in (Spec, Dataset, Job, ModelVersion))


def _scopes(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _key_fields(row: ApiKey) -> dict[str, object]:
    """A key row as the server's JSON has it (one printer for both paths)."""
    return {"name": row.name, "tenant": row.tenant, "scopes": row.scopes,
            "expires_at": row.expires_at, "revoked_at": row.revoked_at,
            "last_used_at": row.last_used_at}


def _print_created(key: Mapping[str, Any], raw: str) -> None:
    expires = "never" if key["expires_at"] is None else _when(key["expires_at"])
    print(f"created key '{key['name']}' for tenant '{key['tenant']}' (scopes "
          f"{','.join(key['scopes'])}; expires {expires}); it is shown only now:")
    print(raw)


def _print_keys(rows: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<24} {'TENANT':<16} {'SCOPES':<28} {'EXPIRES':<26} "
          f"{'REVOKED':<26} LAST USED")
    for k in rows:
        print(f"{k['name']:<24} {k['tenant']:<16} {','.join(k['scopes']):<28} "
              f"{_when(k['expires_at']):<26} {_when(k['revoked_at']):<26} "
              f"{_when(k['last_used_at'])}")


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
    keys_ = sub.add_parser("keys", help="API keys: create, list, revoke (with --url: through "
                           "that server, as an admin; without: on KJ_HOME's database)")
    keys_sub = keys_.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="make a key; its last line is the key")
    create.add_argument("--tenant", required=True,
                        help="the key's tenant; what was made before any key existed (open "
                        "mode) belongs to tenant 'local'")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", default="read,write,predict",
                        help="comma-separated: read, write, predict, admin (its own tenant), "
                        "operator (every tenant)")
    create.add_argument("--expires-in-days", type=float, default=None)
    listing = keys_sub.add_parser("list", help="every key (never the key itself)")
    listing.add_argument("--tenant", default=None)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    for keys_command in (create, listing, revoke):
        keys_command.add_argument("--url", default=argparse.SUPPRESS,
                                  help="act through this server's /v1/keys (default: on the "
                                  "database of KJ_HOME)")
        keys_command.add_argument("--api-key", default=argparse.SUPPRESS,
                                  help="an admin's or operator's key, with --url (default: "
                                  "$KJ_API_KEY)")
    keys_.set_defaults(func=cmd_keys)
    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest")
    migrate.set_defaults(func=cmd_migrate)
    from keras_jobs.cli import add_commands  # the client's: specs, datasets, jobs, models

    add_commands(parser, sub)
    args = parser.parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    args.url_given = any(w == "--url" or w.startswith("--url=") for w in words)
    configure_logging(get_settings().log_level, get_settings().log_format)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
