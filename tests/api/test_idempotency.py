"""Idempotency-Key on POST /v1/specs, /v1/datasets and /v1/jobs: a retry gets the first answer
and creates nothing; another body is a 409; failures are not remembered; keys are per route
and per caller; a key still in progress is a 409 at once."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import pytest

from tests.helpers import (
    SEED_SPEC,
    assert_problem,
    npz_bytes,
    stored_files,
    table_counts,
    two_classes,
    upload,
)

KEY = "Idempotency-Key"
POINTER = "/header/Idempotency-Key"


def new_key() -> str:
    return f"test-{secrets.token_hex(8)}"


def assert_replayed(first: Any, again: Any) -> None:
    assert again.status_code == first.status_code
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids sent to the broker during the test (they are still sent)."""
    from app.jobs import state

    sent: list[str] = []
    real = state.enqueue_job

    def counting(job_id: str, **kwargs: Any) -> None:
        sent.append(job_id)
        real(job_id, **kwargs)

    monkeypatch.setattr(state, "enqueue_job", counting)
    return sent


def test_spec_retry_gets_the_first_answer(client: Any) -> None:
    key = new_key()
    before = table_counts()
    first = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})
    assert_replayed(first, again)
    assert table_counts()["specs"] == before["specs"] + 1
    # The same key with another body is refused, and creates nothing either.
    other = client.post("/v1/specs", json={**SEED_SPEC, "name": "other"}, headers={KEY: key})
    body = assert_problem(other, 409, POINTER)
    assert body["type"] == "/problems/idempotency-key-reused"
    assert table_counts()["specs"] == before["specs"] + 1


def test_dataset_retry_gets_the_first_answer(client: Any, service_env: dict[str, str]) -> None:
    from pathlib import Path

    x, y = two_classes(n=10)
    data = npz_bytes(x=x, y=y)
    key = new_key()
    root = Path(service_env["KJ_ARTIFACT_ROOT"])

    def post(name: str = "idem") -> Any:
        # Each request gets a new multipart boundary, as a retrying client's would.
        return client.post("/v1/datasets", files={"file": ("idem.npz", data)},
                           data={"name": name}, headers={KEY: key})

    before = table_counts()
    first = post()
    assert first.status_code == 201, first.text
    files = stored_files(root)
    assert_replayed(first, post())
    assert table_counts()["datasets"] == before["datasets"] + 1
    assert stored_files(root) == files  # nothing written for the retry
    assert_problem(post(name="renamed"), 409, POINTER)


def test_job_retry_gets_the_first_answer_and_is_enqueued_once(client: Any,
                                                              enqueued: list[str]) -> None:
    x, y = two_classes(n=10)
    dataset = upload(client, "idem-job", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    job = {"type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 1}
    key = new_key()
    before = table_counts()
    first = client.post("/v1/jobs", json=job, headers={KEY: key})
    assert first.status_code == 202, first.text
    assert_replayed(first, client.post("/v1/jobs", json=job, headers={KEY: key}))
    assert table_counts()["jobs"] == before["jobs"] + 1
    assert enqueued == [first.json()["id"]]
    assert_problem(client.post("/v1/jobs", json={**job, "epochs": 2}, headers={KEY: key}),
                   409, POINTER)


@pytest.mark.parametrize("key", ["", "k" * 201, "caf\xe9", "tab\there"])
def test_invalid_key_is_a_400(client: Any, key: str) -> None:
    before = table_counts()
    r = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key.encode("latin-1")})
    assert_problem(r, 400, POINTER)
    assert table_counts() == before


def test_longest_key_is_accepted(client: Any) -> None:
    r = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: "~ !" * 66 + "xy"})
    assert r.status_code == 201, r.text


def test_failed_first_request_is_not_remembered(client: Any) -> None:
    key = new_key()
    bad = {**SEED_SPEC, "layers": [{"type": "Dence", "units": 1}]}
    assert_problem(client.post("/v1/specs", json=bad, headers={KEY: key}), 422)
    fixed = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})
    assert fixed.status_code == 201, fixed.text
    assert_replayed(fixed, client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key}))


def test_job_the_broker_refused_is_accepted_and_replayed(client: Any, enqueued: list[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that cannot take the job does not fail the request: the job is recorded
    queued (the workers' sweep sends it once the broker is back), so the 202 is the answer and
    a retry with the same key replays it instead of submitting a second job."""
    from app.jobs import state

    x, y = two_classes(n=10)
    dataset = upload(client, "idem-broker", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    job = {"type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 1}
    key = new_key()
    working = state.enqueue_job

    def refuse(_job_id: str, **_kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(state, "enqueue_job", refuse)
    first = client.post("/v1/jobs", json=job, headers={KEY: key})
    assert first.status_code == 202 and first.json()["status"] == "queued", first.text
    monkeypatch.setattr(state, "enqueue_job", working)
    assert_replayed(first, client.post("/v1/jobs", json=job, headers={KEY: key}))
    assert enqueued == []  # sent by a worker's sweep, not by the replay
    client.post(f"/v1/jobs/{first.json()['id']}:cancel")


def test_same_key_on_another_route_is_another_key(client: Any) -> None:
    key = new_key()
    x, y = two_classes(n=10)
    spec = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})
    dataset = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(x=x, y=y))},
                          headers={KEY: key})
    assert spec.status_code == 201 and dataset.status_code == 201, (spec.text, dataset.text)
    job = client.post("/v1/jobs", json={"type": "fit", "spec_id": spec.json()["id"],
                                        "dataset_id": dataset.json()["id"]}, headers={KEY: key})
    assert job.status_code == 202, job.text


def test_keys_are_per_caller(client: Any) -> None:
    from app.api.deps import Caller, get_caller

    key = new_key()
    mine = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})
    client.app.dependency_overrides[get_caller] = lambda: Caller(owner="someone-else")
    try:
        theirs = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})
    finally:
        client.app.dependency_overrides.pop(get_caller)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_key_in_progress_is_a_409_at_once(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.specs import service

    inside, release = threading.Event(), threading.Event()
    real = service.create

    def held(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "create", held)
    key = new_key()
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(
        client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})))
    first.start()
    try:
        assert inside.wait(30)
        started = time.monotonic()
        second = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key})
        waited = time.monotonic() - started
    finally:
        release.set()
        first.join(30)
    body = assert_problem(second, 409, POINTER)
    assert body["type"] == "/problems/idempotency-key-in-progress"
    assert waited < 2, f"the second request waited {waited:.1f}s for the first"
    assert answers[0].status_code == 201, answers[0].text
    assert_replayed(answers[0], client.post("/v1/specs", json=SEED_SPEC, headers={KEY: key}))


def test_expired_records_are_ignored_and_removed(client: Any) -> None:
    from datetime import timedelta

    from sqlalchemy import select, update

    from app.core.db import session_scope
    from app.tables import IdempotencyRecord
    from app.tables.base import utcnow

    def age(key: str) -> None:
        with session_scope() as s:
            s.execute(update(IdempotencyRecord).where(IdempotencyRecord.key == key)
                      .values(created_at=utcnow() - timedelta(days=2)))

    reused, forgotten = new_key(), new_key()
    first = client.post("/v1/specs", json=SEED_SPEC, headers={KEY: reused})
    client.post("/v1/specs", json=SEED_SPEC, headers={KEY: forgotten})
    age(reused)
    age(forgotten)
    # An expired key starts over: another body is a new request, not a 409.
    again = client.post("/v1/specs", json={**SEED_SPEC, "name": "later"}, headers={KEY: reused})
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first.json()["id"]
    with session_scope() as s:  # and the other expired record went with that create
        keys = set(s.scalars(select(IdempotencyRecord.key)
                             .where(IdempotencyRecord.key.in_([reused, forgotten]))))
    assert keys == {reused}
