"""A refused request takes nothing from the rate limit's count: after 801 writes against a limit
of 600, the 429s say 600 (they said 1801: each refusal took a lease of its own), in Redis
(shared by the API processes, in leases) and in a process's own count."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from app.core.errors import DomainError
from app.core.state import fresh

LIMIT = 600
SENT = 801


@pytest.fixture(params=["redis", "local"])
def counted_in(request: pytest.FixtureRequest, service_env: dict[str, str],
               monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "local":  # the embedded broker: no Redis to count in
        monkeypatch.setenv("KJ_BROKER_URL", "sqla+sqlite:///unused.db")
    with fresh():
        yield request.param
    monkeypatch.undo()


def _one_window(key_id: str) -> tuple[int, list[DomainError]] | None:
    """SENT writes by `key_id`: (let through, refusals); None if a minute began meanwhile."""
    from app.auth import ratelimit

    if 60 - time.time() % 60 < 10:
        time.sleep(60 - time.time() % 60 + 0.5)
    window = int(time.time() // 60)
    passed, refused = 0, []
    for _ in range(SENT):
        try:
            ratelimit.hit(key_id, "write", LIMIT)
            passed += 1
        except DomainError as exc:
            refused.append(exc)
    return (passed, refused) if int(time.time() // 60) == window else None


def test_refused_requests_are_not_counted(counted_in: str) -> None:
    from app.auth import ratelimit

    for _ in range(2):
        key_id = f"key_{secrets.token_hex(6)}"
        result = _one_window(key_id)
        if result is not None:
            break
    else:
        raise AssertionError("a minute began during both rounds")
    passed, refused = result
    assert passed == LIMIT and len(refused) == SENT - LIMIT
    assert {e.status for e in refused} == {429}
    assert {e.extra["current"] for e in refused} == {LIMIT}, refused[-1].extra
    assert f"made {LIMIT} write requests this minute" in refused[-1].detail
    if counted_in == "redis":
        client = ratelimit.limiter().client
        assert client is not None
        counted = client.get(f"kj:rate:write:{key_id}:{int(time.time() // 60)}")
        assert int(counted) == LIMIT
