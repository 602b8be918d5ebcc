"""The request's transaction commits before the response leaves: a client that has its 201
can read what it created, on any connection."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from tests.helpers import SEED_SPEC, auth_headers


def test_commit_happens_before_the_response_starts(client: Any) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.tables import Spec

    order: list[str] = []
    app = create_app()

    @app.middleware("http")
    async def _mark(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        order.append("response")
        return response

    def _flushing(session: Session, *_args: Any) -> None:
        if any(isinstance(row, Spec) for row in session.new):
            session.info["creates_spec"] = True

    def _committed(session: Session) -> None:
        # Only the request's transaction: the new app also preloads recently served models on
        # a thread of its own, whose reads commit too.
        if session.info.pop("creates_spec", False):
            order.append("commit")

    event.listen(Session, "before_flush", _flushing)
    event.listen(Session, "after_commit", _committed)
    try:
        with TestClient(app, headers=auth_headers()) as c:
            order.clear()
            assert c.post("/v1/specs", json=SEED_SPEC).status_code == 201
    finally:
        event.remove(Session, "before_flush", _flushing)
        event.remove(Session, "after_commit", _committed)
    assert order[:2] == ["commit", "response"], order
