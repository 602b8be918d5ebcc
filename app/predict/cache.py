"""Loaded models, kept per API process: each a Servable with its own dynamic batcher, warmed
with one batch of every allowed size before it takes traffic; its largest batch bounded by
what its layers output per row (KJ_SERVING_MEMORY_PER_VERSION_BYTES). Bounded by a count and by the
weights' memory; least recently used evicted first."""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import get_settings
from app.core.metrics import CACHE_EVICTIONS, LOADED_MODELS, batch_observer
from app.predict.batcher import Batcher, BatchPolicy
from app.predict.servable import Servable
from app.specs.activations import check_servable

log = logging.getLogger(__name__)


def cache_key(version_id: str, policy: BatchPolicy) -> str:
    return f"{version_id}:{hash(policy)}"


def within_memory(policy: BatchPolicy, bytes_per_row: int, budget: int) -> BatchPolicy:
    """`policy` with its batches capped so that one traced batch of a model whose layers
    output `bytes_per_row` stays within `budget` bytes (at least one row). Requests larger
    than the cap are split by the batcher; warm-up traces only the sizes kept."""
    cap = max(1, budget // max(1, bytes_per_row))
    if cap >= policy.max_batch_size:
        return policy
    sizes = tuple(s for s in policy.allowed_batch_sizes if s < cap)
    return dataclasses.replace(policy, max_batch_size=cap, allowed_batch_sizes=(*sizes, cap))


@dataclass
class LoadedModel:
    key: str  # the version's id and its batching policy
    name: str
    version: int
    servable: Servable
    batcher: Batcher


@dataclass
class CacheStats:
    loads: int = 0
    evictions: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # version id → last load error


class ModelCache:
    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def peek(self, key: str) -> LoadedModel | None:
        """The loaded model, or None; cheap enough for the event loop (no I/O, no waiting)."""
        found = self._items.get(key)
        if found is not None:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
        return found

    def loading(self, version_id: str) -> bool:
        return any(k.startswith(f"{version_id}:") for k in list(self._loading))

    def get(self, version_id: str, name: str, version: int, path: Path,
            policy: BatchPolicy) -> LoadedModel:
        """Load (once per process, however many requests ask at once) and warm; blocking.
        A version is kept once per batching policy: new settings load it anew."""
        key = cache_key(version_id, policy)
        found = self.peek(key)
        if found is not None:
            return found
        with self._lock:
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            found = self.peek(key)
            if found is not None:
                return found
            try:
                loaded = self._load(key, name, version, path, policy)
            except Exception as exc:
                self.stats.failures[version_id] = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self.stats.failures.pop(version_id, None)
                self.stats.loads += 1
                self._items[key] = loaded
                self._evict()
                LOADED_MODELS.set(len(self._items))
            return loaded

    def _load(self, key: str, name: str, version: int, path: Path,
              policy: BatchPolicy) -> LoadedModel:
        servable = Servable(path)
        found = servable.activations
        check_servable(found)  # one stored past the limits is never traced, not even a row
        policy = within_memory(policy, found.bytes_per_row,
                               get_settings().serving_memory_per_version_bytes)
        batcher = Batcher(servable, policy, name=f"{name}/{version}",
                          on_batch=batch_observer(name))
        batcher.warm_up(servable.example())  # every allowed batch size traced now
        gc.freeze()  # the model lives long: keep full collections from walking it
        log.info("loaded %s/%s (%d bytes of weights)", name, version, servable.nbytes)
        return LoadedModel(key, name, version, servable, batcher)

    def _evict(self) -> None:
        """Drop least recently used models past the count or the memory budget (never the one
        just loaded). Requests still queued on an evicted model's batcher fail with
        BatcherClosed; the serving layer retries them once on a fresh load."""
        def over() -> bool:
            used = sum(m.servable.nbytes for m in self._items.values())
            return len(self._items) > self.capacity or used > self.max_bytes

        while len(self._items) > 1 and over():
            _key, evicted = self._items.popitem(last=False)
            evicted.batcher.shutdown()
            self.stats.evictions += 1
            CACHE_EVICTIONS.inc()
            log.info("evicted %s/%s from the model cache", evicted.name, evicted.version)

    def drop(self, version_id: str) -> None:
        """Unload a deleted version (every batching policy it was loaded with)."""
        with self._lock:
            for key in [k for k in self._items if k.startswith(f"{version_id}:")]:
                self._items.pop(key).batcher.shutdown()
            LOADED_MODELS.set(len(self._items))

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._items.values())

    def clear(self) -> None:
        with self._lock:
            for item in self._items.values():
                item.batcher.shutdown()
            self._items.clear()
            LOADED_MODELS.set(0)
