"""Fixtures of the notebook client's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keras_jobs import Client
from tests.helpers import live_server


@pytest.fixture(scope="session")
def keras_first() -> None:
    """Keras imported before the API starts (see tests/e2e/test_batch_predict.py)."""
    import keras  # noqa: F401


@pytest.fixture(scope="module")
def kj(client: Any) -> Iterator[Client]:
    """A keras_jobs.Client against the test app served over real HTTP."""
    with live_server() as url, Client(f"http://{url}") as kj:
        yield kj
