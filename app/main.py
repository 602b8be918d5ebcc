"""The FastAPI application: routers, problem+json errors, schema upgrade at start-up."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from app import __version__
from app.api import problems
from app.api.admin import router as admin_router
from app.api.auth import Authenticate, document_security
from app.api.db_waits import BoundedDatabaseWaits
from app.api.json_depth import JsonDepthLimit
from app.api.metrics import router as metrics_router
from app.api.request_id import RequestId
from app.api.serving_route import find_serving_routes_first
from app.core.broker import check_broker
from app.core.config import get_settings
from app.core.db import probe
from app.core.migrate import upgrade
from app.core.redact import redact, secrets_in_urls
from app.core.state import current
from app.core.storage import get_store
from app.datasets.router import router as datasets_router
from app.jobs.router import router as jobs_router
from app.plots.router import router as plots_router
from app.predict.router import router as predict_router
from app.predict.served import ServedModels
from app.predict.service import get_serving, import_tensorflow, start_preload
from app.predict.v2_router import router as v2_router
from app.registry.router import router as models_router
from app.registry.router import use_served
from app.specs.router import router as specs_router
from app.ui.router import router as ui_router

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    # The process's application state (app/core/state.py), taken here: an API process of
    # `serve` builds it now; `serve` running its one API process in itself, or a test, installed
    # it before. Handlers read the current state through the accessors.
    settings = current().settings
    serving = get_serving()
    settings.ensure_dirs()
    if settings.migrate_on_start:  # off where `keras-jobs migrate` runs first (compose)
        await run_in_threadpool(upgrade, settings.resolved_database_url)
    await run_in_threadpool(_remove_stale_staging, settings.staging_max_age_s)
    # TensorFlow is imported before the server accepts requests (imported from two threads at
    # once, its modules can be seen half-initialised); the recently served models then load
    # in the background, and /readyz says ready once they have. No user pays for either.
    await run_in_threadpool(import_tensorflow)
    # TensorFlow brings millions of long-lived objects: out of the collector's sight, a full
    # collection no longer stalls every request in flight for tens of milliseconds.
    gc.freeze()
    preload = asyncio.create_task(start_preload())
    yield
    preload.cancel()
    serving.cache.clear()


# Checking a large spec is seconds of pure-Python work on a request thread. CPython lets a
# waiting thread in only once per switch interval (5 ms by default), and a request thread waits
# for it after each blocking call (a database round trip, a chunk written to disk): beside a
# 451-layer check, a small `.keras` upload took 4-5 s at 5 ms and 0.2-0.4 s at 1 ms. The cost is
# more frequent switches between busy threads.
SWITCH_INTERVAL_S = 0.001


def create_app() -> FastAPI:
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    app = FastAPI(
        title="keras-jobs",
        version=__version__,
        description="Train and serve Keras models over HTTP: model specs, datasets, fit and "
        "evaluate jobs on Celery workers, TensorFlow Serving-style predict.",
        lifespan=lifespan,
        # /docs is served by app/ui from the package (FastAPI's own pages load from a CDN).
        docs_url=None, redoc_url=None,
    )
    problems.install(app)
    app.add_middleware(JsonDepthLimit)
    app.add_middleware(Authenticate)
    app.add_middleware(BoundedDatabaseWaits)  # around everything that reads the database
    app.add_middleware(RequestId)  # outermost: every request gets an id
    for router in (specs_router, datasets_router, jobs_router, models_router, predict_router,
                   v2_router, plots_router, ui_router, metrics_router, admin_router):
        app.include_router(router)
    find_serving_routes_first(app)  # :predict and /infer without the router's scan
    use_served(app, ServedModels())
    _document_problems(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        # async: answered on the event loop, so it still answers while requests stuck on a
        # sick database hold every thread of the pool. It touches nothing else on purpose.
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={
        **problems.responses(503),
        200: {"description": "Ready: the checks, and how many model versions are loaded"}})
    def readyz() -> Any:
        checks: dict[str, str] = {}
        settings = get_settings()
        secrets = secrets_in_urls(settings.resolved_database_url, settings.resolved_broker_url)
        for name, check in (("database", _check_db), ("broker", check_broker),
                            ("artifact_store", lambda: get_store().check())):
            try:
                check()
                checks[name] = "ok"
            except Exception as exc:  # report every failing part, not just the first
                # Driver errors may quote a URL or a piece of its password: never shown.
                checks[name] = f"error: {redact(str(exc), secrets)}"
        serving = get_serving()
        checks["serving"] = "ok" if serving.ready.is_set() else "starting"
        # Public: a count only, never whose models (names belong to their tenants).
        loaded = len(serving.cache.loaded())
        if any(v != "ok" for v in checks.values()):
            return problems.problem(503, "Not ready", "Some dependencies are unreachable, or "
                                    "the models to serve are still loading.", "/readyz",
                                    extra={"checks": checks, "loaded_model_count": loaded})
        return {"status": "ready", "checks": checks, "loaded_model_count": loaded}

    return app


def _document_problems(app: FastAPI) -> None:
    """The OpenAPI document names the Problem schema that every route's error responses use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_security(
                problems.add_problem_schemas(FastAPI.openapi(app)), app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _remove_stale_staging(max_age_s: float) -> None:
    """Staging folders of uploads killed mid-way (API process killed): only those untouched
    for `max_age_s`, so an upload another API process is receiving right now stays."""
    removed = get_store().remove_stale_staging(max_age_s)
    if removed:
        log.info("removed %d staging folder(s) left by killed uploads", len(removed))


def _check_db() -> None:
    # Its own short bound: a frozen database is "error" within seconds, never a hung probe.
    probe(get_settings().db_ping_timeout_s)
