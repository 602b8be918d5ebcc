"""DELETE /v1/models/{name}/versions/{version}: a version can be removed (its row, its file, its
stored bytes, its place in the serving cache), but not while a label points at it or a queued
or running job reads it (409: move the label, or cancel the job, first)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import assert_problem, npz_bytes


def _stored_bytes(owner: str) -> int:
    from app.auth.quotas import stored_bytes
    from app.core.db import session_scope

    with session_scope() as s:
        return int(stored_bytes(s, owner))


def test_delete_a_version(client: Any, keras_file: bytes, service_env: dict[str, str]) -> None:
    from app.predict.service import get_serving

    name = f"deleted-{secrets.token_hex(3)}"
    for _ in range(2):
        r = client.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", keras_file)})
        assert r.status_code == 201, r.text
    assert client.put(f"/v1/models/{name}/labels/prod", json={"version": 1}).status_code == 200
    assert client.post(f"/v1/models/{name}/versions/1:predict",
                       json={"instances": [[0.0, 1.0]]}).status_code == 200
    folder = Path(service_env["KJ_ARTIFACT_ROOT"]) / "models" / "local" / name
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2"]

    # A label points at it: 409, nothing removed.
    body = assert_problem(client.delete(f"/v1/models/{name}/versions/1"), 409)
    assert "prod" in body["detail"]
    assert client.get(f"/v1/models/{name}/versions/1").status_code == 200

    # Moved off, it goes: row, file, stored bytes, loaded model.
    assert client.put(f"/v1/models/{name}/labels/prod", json={"version": 2}).status_code == 200
    r = client.get(f"/v1/models/{name}/versions/1/download")
    size = len(r.content)
    before = _stored_bytes("local")
    assert client.delete(f"/v1/models/{name}/versions/1").status_code == 204
    assert _stored_bytes("local") == before - size
    assert_problem(client.get(f"/v1/models/{name}/versions/1"), 404)
    assert_problem(client.post(f"/v1/models/{name}/versions/1:predict",
                               json={"instances": [[0.0, 1.0]]}), 404)
    assert_problem(client.delete(f"/v1/models/{name}/versions/1"), 404)
    assert not [m for m in get_serving().cache.loaded() if (m.name, m.version) == (name, 1)]
    assert [v["version"] for v in client.get(f"/v1/models/{name}").json()["versions"]] == [2]
    assert [p.name for p in folder.iterdir()] == ["2"]
    assert client.post(f"/v1/models/{name}/labels/prod:predict",
                       json={"instances": [[0.0, 1.0]]}).status_code == 200


def test_a_version_a_job_reads_is_kept(client: Any, keras_file: bytes) -> None:
    name = f"used-{secrets.token_hex(3)}"
    r = client.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", keras_file)})
    assert r.status_code == 201, r.text
    x = np.zeros((4, 2), np.float32)
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(x=x, y=x[:, :1]))})
    assert dataset.status_code == 201, dataset.text
    # No worker runs in this test: the job stays queued.
    job = client.post("/v1/jobs", json={"type": "evaluate", "model": f"{name}/1",
                                        "dataset_id": dataset.json()["id"], "x": "x", "y": "y"})
    assert job.status_code == 202, job.text
    body = assert_problem(client.delete(f"/v1/models/{name}/versions/1"), 409)
    assert job.json()["id"] in body["detail"]
    assert client.post(f"/v1/jobs/{job.json()['id']}:cancel").status_code == 202
    assert client.delete(f"/v1/models/{name}/versions/1").status_code == 204


def test_client_and_cli_delete_a_version(client: Any, keras_file: bytes) -> None:
    import os
    import subprocess
    import sys

    from keras_jobs.client import Client
    from keras_jobs.errors import KerasJobsError
    from tests.helpers import live_server

    name = f"cli-{secrets.token_hex(3)}"
    for _ in range(3):
        r = client.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", keras_file)})
        assert r.status_code == 201, r.text
    assert client.put(f"/v1/models/{name}/labels/prod", json={"version": 3}).status_code == 200
    with live_server() as address:
        url = f"http://{address}"
        http = Client(url, api_key=os.environ["KJ_API_KEY"])
        http.delete_version(name, 1)
        with pytest.raises(KerasJobsError, match="prod"):
            http.delete_version(name, 3)
        env = {**os.environ, "KJ_URL": url, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, "-m", "app.cli", "models", "delete-version", name,
                               "2"], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"deleted {name}/2" in done.stdout
        assert [v["version"] for v in http.model(name)["versions"]] == [3]
        http.close()
