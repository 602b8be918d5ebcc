"""The application state: what a process builds once from its settings and then shares.

An `AppState` holds the settings and the parts built from them, each on first use (the API
does not pay for a Celery app it never needs before its first job, a CLI command for no
model cache at all):

  part              built by (accessor)                        closed with the state
  engine            app.core.db (get_engine)                   dispose()
  sessionmaker      app.core.db (get_sessionmaker)
  artifact store    app.core.storage (get_store)
  Celery app        app.core.broker (get_celery)               close()
  Redis clients     app.core.redis_clients (get_redis)         close()
  key table         app.auth.keys (key_table)
  rate limiter      app.auth.ratelimit (limiter)
  serving           app.predict.service (get_serving)          its model cache cleared

Each module names its part (a `Part`: how to build it from a state, how to close it) and reads
it through `current().get(PART)`, so this module knows none of them and the layers stay as
they are (the core does not import the domain). A new piece of process-wide state is one more
`Part` beside the code that uses it, never a cached factory function of its own
(tests/structure/test_state.py holds the code to that).

Whose state is current: the API's lifespan takes (or builds) it before serving, `keras-jobs
worker` builds its own before Celery starts (its pool's children inherit it by fork), other
commands build it on first use. Tests install a fresh one for a block with `fresh()`, and the
one before it comes back afterwards, whatever the block changed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.core.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Part(Generic[T]):
    """One piece of the state: `build` makes it from a state (reading that state's settings
    and parts, never the current state's), `close` releases it when its state is closed."""

    name: str
    build: Callable[[AppState], T]
    close: Callable[[T], None] | None = None


class AppState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._parts: dict[Part[Any], Any] = {}
        # Re-entrant: building one part may get another (serving needs the store).
        self._lock = threading.RLock()

    @classmethod
    def from_env(cls) -> AppState:
        return cls(Settings())

    def get(self, part: Part[T]) -> T:
        """The part, built now if this is its first use."""
        try:
            value: T = self._parts[part]
            return value
        except KeyError:
            pass
        with self._lock:
            if part not in self._parts:
                self._parts[part] = part.build(self)
            value = self._parts[part]
            return value

    def built(self, part: Part[T]) -> T | None:
        """The part if it was built (without building it)."""
        value: T | None = self._parts.get(part)
        return value

    def close(self) -> None:
        """Release the parts built so far, last built first; using the state afterwards
        builds them again."""
        with self._lock:
            parts = list(self._parts.items())
            self._parts.clear()
        for part, value in reversed(parts):
            if part.close is None or value is None:
                continue
            try:
                part.close(value)
            except Exception:  # noqa: BLE001 - one failing part must not keep the rest open
                log.warning("could not close the %s", part.name, exc_info=True)


_current: AppState | None = None
_install_lock = threading.Lock()


def current() -> AppState:
    """This process's state, built from the environment if none was installed."""
    global _current
    state = _current
    if state is None:
        with _install_lock:
            if _current is None:
                _current = AppState.from_env()
            state = _current
    return state


def install(state: AppState) -> AppState | None:
    """Make `state` the current one; returns the one it replaces (not closed: the caller
    decides)."""
    global _current
    with _install_lock:
        previous, _current = _current, state
    return previous


def rebuild() -> AppState:
    """Replace the current state with one built from the environment as it is now (a command
    that changed it, or that starts a process's own), closing the one it replaces."""
    state = AppState.from_env()
    replaced = install(state)
    if replaced is not None:
        replaced.close()
    return state


@contextmanager
def fresh(settings: Settings | None = None) -> Iterator[AppState]:
    """A new state (from the environment, unless `settings` are given) is current within the
    block; afterwards it is closed and the one before it is current again."""
    state = AppState(settings if settings is not None else Settings())
    previous = install(state)
    try:
        yield state
    finally:
        global _current
        with _install_lock:
            _current = previous
        state.close()
