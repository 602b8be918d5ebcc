"""`get_settings()`: the settings of this process's application state (app/core/state.py).
What each setting means is app/core/settings.py."""

from __future__ import annotations

from app.core.settings import Settings
from app.core.state import current

__all__ = ["Settings", "get_settings"]


def get_settings() -> Settings:
    return current().settings
