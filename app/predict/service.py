"""Serving: resolve what a request names to a registry version (cached, no database query per
request), load it once per process, and run requests through its dynamic batcher.

The resolution cache is dropped whenever the registry's generation changes (a file in the
artifact store replaced on every new version or label move, checked with one stat()), so every
API process sees a new version or a moved label on its next request."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# anyio's threads, as run_in_threadpool used: the pool and limit FastAPI's sync routes share.
from anyio import to_thread
from sqlalchemy.orm import Session

from app.auth import audit
from app.core.config import get_settings
from app.core.db import on_commit, session_scope, upsert
from app.core.errors import DomainError, FieldError, invalid
from app.core.state import AppState, Part, current
from app.core.storage import STORE, ArtifactStore
from app.predict.batcher import BatcherClosed, BatchPolicy, Overloaded
from app.predict.cache import LoadedModel, ModelCache, cache_key
from app.predict.rows import too_many_rows
from app.registry import service as registry
from app.registry.schemas import ServingSettings
from app.tables import ModelServing
from app.tables.base import utcnow

log = logging.getLogger(__name__)
RECENT_FILE = "serving/recent.json"
# Default queue bound, in batches: room for 16 concurrent 1,024-row requests at batch 64 (an
# MLP drains it in ~0.2 s); past it a request is refused at once rather than left waiting.
QUEUED_BATCHES = 256


@dataclass(frozen=True)
class Ref:
    """What a request names: a version, a label, or (neither) the latest version."""

    owner: str
    name: str
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class Resolved:
    id: str
    name: str
    version: int
    folder: Path
    policy: BatchPolicy


class Serving:
    """This process's serving state: resolution cache, loaded models, readiness."""

    def __init__(self, store: ArtifactStore, cache: ModelCache) -> None:
        self.store = store
        self.cache = cache
        self.ready = threading.Event()
        self._generation = store.generation()
        self._resolved: dict[Ref, Resolved] = {}
        self._recent_lock = threading.Lock()

    def cached(self, ref: Ref) -> Resolved | None:
        generation = self.store.generation()
        if generation != self._generation:
            self._resolved = {}
            self._generation = generation
        return self._resolved.get(ref)

    def resolve(self, ref: Ref) -> Resolved:
        """Blocking: asks the database. The generation is read first, so a change made while
        the query runs invalidates what it returns on the next request."""
        generation = self.store.generation()
        with session_scope() as s:
            mv = registry.resolve(s, ref.owner, ref.name, ref.version, ref.label)
            own = s.get(ModelServing, (ref.owner, ref.name))
            found = Resolved(mv.id, mv.name, mv.version, self.store.path(mv.artifact_key),
                             batch_policy(ServingSettings.model_validate(own) if own else None))
        if generation == self._generation:
            self._resolved[ref] = found
        return found

    def load(self, owner: str, found: Resolved) -> LoadedModel:
        """Blocking: load and warm (once per process); remembered as recently served."""
        try:
            loaded = self.cache.get(found.id, found.name, found.version,
                                    self.store.model_file(found.folder), found.policy)
        except Exception as exc:
            raise DomainError(503, "Model unavailable", f"Version {found.version} of "
                              f"'{found.name}' could not be loaded: {exc}",
                              type="/problems/model-unavailable") from exc
        self._note_served(owner, found.name)
        return loaded

    def _note_served(self, owner: str, name: str) -> None:
        """Which models this store's API processes served lately (start-up loads them)."""
        path = self.store.root / RECENT_FILE
        with self._recent_lock:
            recent = read_recent(path)
            recent[f"{owner}/{name}"] = time.time()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(recent))
            tmp.replace(path)


def read_recent(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def batch_policy(own: ServingSettings | None = None) -> BatchPolicy:
    """The server's batching defaults, overridden by a model's own settings."""
    s = get_settings()
    own = own or ServingSettings()
    size = own.max_batch_size or s.batch_max_size
    return BatchPolicy.build(
        max_batch_size=size,
        batch_timeout_ms=(s.batch_timeout_ms if own.batch_timeout_ms is None
                          else own.batch_timeout_ms),
        max_queued_rows=own.max_queued_rows or s.batch_queue_rows or QUEUED_BATCHES * size,
        threads=s.batch_threads)


def serving_settings(session: Session, owner: str, name: str) -> ServingSettings:
    registry.versions(session, owner, name)  # 404 for an unknown model
    own = session.get(ModelServing, (owner, name))
    return ServingSettings.model_validate(own) if own else ServingSettings()


def set_serving_settings(session: Session, owner: str, name: str,
                         settings: ServingSettings, *, actor: str) -> ServingSettings:
    """Takes effect as each API process next resolves the model (the registry's generation
    moves): versions load again with the new policy; requests in flight finish on the old.
    Recorded in the audit log as `actor`'s."""
    registry.versions(session, owner, name)
    try:
        batch_policy(settings)
    except ValueError as exc:
        raise invalid(f"These batching settings do not fit together: {exc}.",
                      [FieldError("", str(exc))]) from exc
    upsert(session, ModelServing, {"owner": owner, "name": name, **settings.model_dump(),
                                   "updated_at": utcnow()}, ["owner", "name"])
    audit.record(session, tenant=owner, actor=actor, action="serving.set",
                 target=f"model/{name}/serving", **settings.model_dump())
    on_commit(session, get_serving().store.bump_generation)
    return settings


def _serving(state: AppState) -> Serving:
    s = state.settings
    return Serving(state.get(STORE), ModelCache(s.model_cache_size, s.model_cache_bytes))


SERVING: Part[Serving] = Part("serving", _serving, close=lambda serving: serving.cache.clear())


def get_serving() -> Serving:
    """The current state's serving: its loaded models and whether start-up has loaded them."""
    return current().get(SERVING)


async def loaded_model(ref: Ref) -> LoadedModel:
    """The loaded model for `ref`; only a cache miss leaves the event loop."""
    serving = get_serving()
    found = serving.cached(ref)
    if found is None:
        found = await to_thread.run_sync(serving.resolve, ref)
    model = serving.cache.peek(cache_key(found.id, found.policy))
    if model is None:
        model = await to_thread.run_sync(serving.load, ref.owner, found)
    return model


def row_limit(model: LoadedModel) -> tuple[int, str]:
    """The most rows one request to `model` may hold, and why: KJ_MAX_PREDICT_ROWS, or its
    queue when that is smaller. Bodies are measured against it before they are parsed."""
    return min((get_settings().max_predict_rows, "a request may hold"),
               (model.batcher.policy.max_queued_rows, "this model queues"))


async def run(ref: Ref, model: LoadedModel, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Through the model's batcher. A model evicted while the request waited is loaded again
    and the request retried once; a full queue is a 503 with Retry-After."""
    limit, why = row_limit(model)
    if len(arrays[0]) > limit:  # retrying could never help
        raise too_many_rows(len(arrays[0]), limit, why)
    try:
        try:
            return await model.batcher.predict(arrays)
        except BatcherClosed:
            model = await loaded_model(ref)
            return await model.batcher.predict(arrays)
    except Overloaded as exc:
        retry = max(1, int(exc.retry_after_s + 0.999))
        raise DomainError(503, "Overloaded", f"{model.name}/{model.version} has more requests "
                          f"queued than it may hold; retry in {retry} s.",
                          type="/problems/overloaded", headers={"Retry-After": str(retry)}
                          ) from exc


def import_tensorflow() -> None:
    """TensorFlow and Keras, imported once at start-up (seconds a first request must not pay)."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401


def preload(days: float) -> list[str]:
    """Load the labelled and latest versions of the models this store served in the last
    `days` (most recent first, as many as the cache holds). Blocking; at API start-up, before
    /readyz says ready."""
    serving = get_serving()
    recent = read_recent(serving.store.root / RECENT_FILE)
    cutoff = time.time() - days * 86400
    names = [k for k, t in sorted(recent.items(), key=lambda kv: -kv[1]) if t >= cutoff]
    loaded: list[str] = []
    for key in names[:serving.cache.capacity]:
        owner, _, name = key.partition("/")
        try:
            with session_scope() as s:
                refs = [Ref(owner, name, label=label) for label in registry.labels(s, owner, name)]
            for ref in [Ref(owner, name), *refs]:
                found = serving.resolve(ref)
                serving.load(owner, found)
                loaded.append(f"{found.name}/{found.version}")
        except DomainError as exc:  # gone or broken since: it loads (or fails) on demand
            log.warning("preload of %s skipped: %s", key, exc.detail)
    serving.ready.set()
    return loaded


async def start_preload() -> None:
    days = get_settings().preload_days
    try:
        loaded = await asyncio.to_thread(preload, days)
        if loaded:
            log.info("serving ready; preloaded %s", ", ".join(loaded))
    except Exception:
        log.exception("preloading models failed; they load on first request")
        get_serving().ready.set()
