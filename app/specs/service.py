"""Specs: validate a user's JSON, build (and compile) the Keras model once to prove it works,
store the spec with its canonical Keras config and summary.

The model is built without weights (app.specs.limits.weightless): the API only needs its
config, shapes and parameter count, and a spec asking for billions of parameters (or layers
outputting gigabytes per row: app.specs.activations) is refused before any memory is spent.
Builds run side by side: Keras keeps its building state (name counters, the current scope,
deferred variables) per thread, so one large spec does not make a small one wait; BUILD_SLOTS
bounds how many run at once per process.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import audit
from app.core.db import get_owned, paginate
from app.core.errors import FieldError, invalid
from app.core.json_limits import check_storable, unstorable
from app.tables import Spec

# Keras keeps numbers as float32: a larger one (a learning rate of 1e308) becomes infinity in the
# built model's config, which the keras_config column cannot store.
FLOAT32_MAX = 3.4028234663852886e38

# Model builds (specs, and `.keras` uploads loading their weights) running at once per process:
# each is bounded by the spec limits, and this bounds their sum in CPU and memory.
BUILD_SLOTS = 4
build_slots = threading.BoundedSemaphore(BUILD_SLOTS)



def create(session: Session, owner: str, body: dict[str, Any], *, actor: str) -> Spec:
    """Validate and build the spec, then record it (in the audit log too, as `actor`'s)."""
    # The body is stored as sent: a NaN, an Infinity or a NUL the database refuses is a 422
    # here, pointing at the value, not a 500 at the INSERT.
    check_storable(body, max_abs=FLOAT32_MAX)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise invalid("A spec needs a name.", [FieldError("/name", "a non-empty string of at "
                                                          "most 200 characters is required")])
    from app.specs.activations import check_activations
    from app.specs.builder import build_model, compile_spec, describe
    from app.specs.limits import check_param_count, check_spec_request, weightless

    check_spec_request(body)  # size, strings and layers, on the JSON
    with build_slots:
        with weightless():
            model = build_model(body)
        pointer = "/keras_config" if "keras_config" in body else "/layers"
        check_param_count(model, pointer)
        check_activations(model, pointer)  # what its layers output per row, from shapes
        compile_spec(model, body)  # an optimizer's few scalars are real variables: outside
        keras_config = json.loads(model.to_json())
        summary = describe(model)
    _check_built(keras_config, summary)
    spec = Spec(owner=owner, name=name, spec=body, keras_config=keras_config, summary=summary,
                total_params=summary["total_params"], trainable_params=summary["trainable_params"])
    session.add(spec)
    session.flush()
    audit.record(session, tenant=owner, actor=actor, action="spec.create", target=f"spec/{spec.id}",
                 name=spec.name)
    return spec


def _check_built(keras_config: dict[str, Any], summary: dict[str, Any]) -> None:
    """What Keras made of a storable body must be storable too (a layer could compute a
    non-finite setting); said at the whole spec, since the value is Keras's, not the body's."""
    for name, value in (("keras_config", keras_config), ("summary", summary)):
        error = unstorable(value, f"/{name}")
        if error is not None:
            raise invalid("The built model cannot be stored.", [FieldError(
                "", f"its canonical {name} holds an unstorable value at {error.pointer}: "
                f"{error.detail}")])


def get(session: Session, owner: str, spec_id: str) -> Spec:
    return get_owned(session, Spec, owner, spec_id, "Spec")


def list_(session: Session, owner: str, limit: int, offset: int) -> tuple[list[Spec], int]:
    return paginate(session, select(Spec).where(Spec.owner == owner),
                    (Spec.created_at.desc(), Spec.id), limit, offset)
