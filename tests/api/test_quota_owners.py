"""The services hold every caller to the quotas and record what it changes, not only the routes:
called directly (as the worker or the CLI would), an upload past the largest upload, a version
or a dataset past the stored bytes is refused and leaves nothing, and what is kept is in the
audit log as the caller's."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import npz_bytes, stored_files, table_counts


@pytest.fixture
def tenant(client: Any) -> str:
    from app.auth import quotas
    from app.core.db import session_scope

    name = f"owners-{secrets.token_hex(4)}"
    with session_scope() as s:
        quotas.set_overrides(s, name, {"max_upload_bytes": 4096, "max_stored_bytes": 2048},
                             actor="tests")
    return name


def _received(staging: Path, payload: bytes, filename: str) -> Any:
    from app.core.storage import ReceivedFile

    path = staging / "upload.bin"
    path.write_bytes(payload)
    return ReceivedFile(path, filename, len(payload), hashlib.sha256(payload).hexdigest())


def _refused(status: int, call: Any) -> str:
    from app.core.db import session_scope
    from app.core.errors import DomainError

    with pytest.raises(DomainError) as caught, session_scope() as s:
        call(s)
    assert caught.value.status == status, caught.value
    return caught.value.detail


def test_a_direct_service_call_is_held_to_the_quotas(tenant: str, service_env: dict[str, str]
                                                      ) -> None:
    from app.core.db import session_scope
    from app.core.storage import get_store
    from app.datasets import service as datasets
    from app.registry import service as registry

    store, root = get_store(), Path(service_env["KJ_ARTIFACT_ROOT"])
    before = table_counts(), stored_files(root)
    big = npz_bytes(x=np.zeros((1024, 2), np.float32))  # past 4096 bytes
    with store.staging() as staging:
        detail = _refused(413, lambda s: datasets.create(
            s, store, tenant, staging, _received(staging, big, "big.npz"), None, actor="tests"))
    assert "max_upload_bytes" in detail
    with store.staging() as staging:
        store.model_file(staging).write_bytes(b"k" * 3000)  # past 2048 stored bytes
        detail = _refused(413, lambda s: registry.publish_version(
            s, store, tenant, "m", staging, actor="tests", job_id="job_x"))
    assert "(the model of job job_x adds 3000)" in detail and "max_stored_bytes" in detail
    assert (table_counts(), stored_files(root)) == before

    small = npz_bytes(x=np.zeros((8, 2), np.float32))
    with store.staging() as staging, session_scope() as s:
        kept = datasets.create(s, store, tenant, staging, _received(staging, small, "s.npz"),
                               None, actor="cli")
    from app.auth import audit

    with session_scope() as s:
        events, _total = audit.list_(s, tenant, "dataset.create", 10, 0)
        assert [(e.actor, e.target) for e in events] == [("cli", f"dataset/{kept.id}")]
