"""The per-key rate limits hold across API processes: two `keras-jobs serve` processes sharing
the suite's Redis count one key's requests together, so the request past the limit is refused
with 429 and Retry-After whichever process receives it."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import SEED_SPEC, assert_problem, make_key
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.slow

WRITES_PER_MIN = 5
PREDICTS_PER_MIN = 3
# Requests of one round go out within this many seconds; a round is not begun closer than this
# to the end of a minute (the limits count fixed one-minute windows).
ROUND_S = 15
Apis = tuple[ServeProcess, ServeProcess]


@pytest.fixture(scope="module")
def apis(service_env: dict[str, str], client: Any,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apis]:
    """Two API processes on the suite's database and Redis, with small limits."""
    env = {**os.environ, **service_env, "TF_CPP_MIN_LOG_LEVEL": "2", "KJ_AUTH": "required",
           "KJ_RATE_LIMIT_WRITES_PER_MIN": str(WRITES_PER_MIN),
           "KJ_RATE_LIMIT_PREDICT_PER_MIN": str(PREDICTS_PER_MIN)}
    log_dir = tmp_path_factory.mktemp("rate-limit")
    args = ("--no-worker", "--host", "127.0.0.1")
    pair = (ServeProcess(env, log_dir, *args, ready="/healthz", timeout=180).start(),
            ServeProcess(env, log_dir, *args, ready="/healthz", timeout=180).start())
    try:
        for api in pair:
            api.wait_ready()
        yield pair
    finally:
        for api in pair:
            api.stop()


def _window() -> int:
    return int(time.time() // 60)


def _start_of_a_round() -> int:
    """Wait, if need be, until a round fits in what is left of this minute; the window."""
    left = 60 - time.time() % 60
    if left < ROUND_S:
        time.sleep(left + 0.5)
    return _window()


def _round(apis: Apis, key: str, send: Any, limit: int) -> list[httpx.Response] | None:
    """`limit` + 2 requests by one key, alternating between the processes, in one window;
    None if the window rolled over meanwhile (the counts start again)."""
    window = _start_of_a_round()
    answers = []
    for i in range(limit + 2):
        with httpx.Client(base_url=apis[i % 2].url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            answers.append(send(http))
    return answers if _window() == window else None


def _check(answers: list[httpx.Response], limit: int, ok: int, kind: str) -> None:
    for r in answers[:limit]:
        assert r.status_code == ok, r.text
    for r in answers[limit:]:  # the next two: one to each process
        body = assert_problem(r, 429)
        assert body["type"] == "/problems/rate-limit"
        assert body["limit"] == limit
        assert f"limit {limit} per minute" in body["detail"] and kind in body["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= 61


def _with_one_retry(apis: Apis, tenant: str, send: Any, limit: int,
                    scopes: list[str]) -> tuple[list[httpx.Response], str]:
    for attempt in range(2):
        key = make_key(tenant, f"{tenant}-{attempt}-{secrets.token_hex(2)}", scopes)
        answers = _round(apis, key, send, limit)
        if answers is not None:
            return answers, key
    raise AssertionError("the minute rolled over twice during a round")


def test_writes_past_the_limit_are_429_whichever_process_gets_them(
        apis: Apis, service_env: dict[str, str]) -> None:
    import redis

    tenant = f"rate-{secrets.token_hex(4)}"
    answers, key = _with_one_retry(
        apis, tenant, lambda http: http.post("/v1/specs", json=SEED_SPEC),
        WRITES_PER_MIN, ["read", "write"])
    _check(answers, WRITES_PER_MIN, 201, "write")
    # Refused requests are not counted: the key used its limit, no more.
    assert answers[WRITES_PER_MIN].json()["current"] == WRITES_PER_MIN
    # The count is kept in Redis, shared by both processes.
    key_id = key.split("_")[1]
    counted = redis.Redis.from_url(service_env["KJ_BROKER_URL"]).get(
        f"kj:rate:write:{key_id}:{_window()}")
    assert counted is not None and int(counted) == WRITES_PER_MIN
    with httpx.Client(base_url=apis[0].url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        # Refused requests created nothing; reads are not limited.
        for _ in range(WRITES_PER_MIN + 2):
            listed = http.get("/v1/specs")
            assert listed.status_code == 200, listed.text
        assert listed.json()["total"] == WRITES_PER_MIN
    # The limit is per key: another key of the same tenant still writes.
    other = make_key(tenant, f"{tenant}-other", ["write"])
    r = httpx.post(f"{apis[1].url}/v1/specs", json=SEED_SPEC, timeout=60,
                   headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 201, r.text


def test_predictions_past_the_limit_are_429_whichever_process_gets_them(
        apis: Apis, tmp_path: Path) -> None:
    import keras

    tenant = f"rate-{secrets.token_hex(4)}"
    model = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(1)])
    model.save(tmp_path / "m.keras")
    uploader = make_key(tenant, f"{tenant}-up", ["write"])
    r = httpx.post(f"{apis[0].url}/v1/models/limited/versions", timeout=60,
                   files={"file": ("m.keras", (tmp_path / "m.keras").read_bytes())},
                   headers={"Authorization": f"Bearer {uploader}"})
    assert r.status_code == 201, r.text
    # Both processes load the model first, so a round is quick.
    warm = make_key(tenant, f"{tenant}-warm", ["predict"])
    for api in apis:
        r = httpx.post(f"{api.url}/v1/models/limited:predict", timeout=60,
                       json={"instances": [[0.0, 1.0]]},
                       headers={"Authorization": f"Bearer {warm}"})
        assert r.status_code == 200, r.text

    answers, _key = _with_one_retry(
        apis, tenant,
        lambda http: http.post("/v1/models/limited:predict", json={"instances": [[0.0, 1.0]]}),
        PREDICTS_PER_MIN, ["predict"])
    _check(answers, PREDICTS_PER_MIN, 200, "predict")
