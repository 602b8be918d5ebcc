"""Specs: validate a user's JSON, build (and compile) the Keras model once to prove it works,
store the spec with its canonical Keras config and summary."""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import get_owned, paginate
from app.core.errors import FieldError, invalid
from app.tables import Spec

# Building touches Keras's process-wide state (name counters, the default seed generator); one
# build at a time keeps concurrent requests from interleaving there.
build_lock = threading.Lock()


def create(session: Session, owner: str, body: dict[str, Any]) -> Spec:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise invalid("A spec needs a name.", [FieldError("/name", "a non-empty string of at "
                                                          "most 200 characters is required")])
    from app.specs.builder import build_compiled, describe

    with build_lock:
        model = build_compiled(body)
        keras_config = json.loads(model.to_json())
        summary = describe(model)
    spec = Spec(owner=owner, name=name, spec=body, keras_config=keras_config, summary=summary,
                total_params=summary["total_params"], trainable_params=summary["trainable_params"])
    session.add(spec)
    session.flush()
    return spec


def get(session: Session, owner: str, spec_id: str) -> Spec:
    return get_owned(session, Spec, owner, spec_id, "Spec")


def list_(session: Session, owner: str, limit: int, offset: int) -> tuple[list[Spec], int]:
    return paginate(session, select(Spec).where(Spec.owner == owner),
                    (Spec.created_at.desc(), Spec.id), limit, offset)
