"""Loaded models, kept per API process, least recently used evicted first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from app.predict.servable import Servable


class ServableCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Servable] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, path: Path) -> Servable:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        # Load outside the cache lock; concurrent requests for the same version wait for one load.
        with load_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            servable = Servable(path)
            with self._lock:
                self._items[key] = servable
                self._loading.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return servable

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
