"""Bad input a reviewer still got through to a 500, a dropped stream or a job that could only
fail in its worker: each a 4xx problem+json at the field now, at submit, leaving nothing
behind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import SEED_SPEC, assert_problem, two_classes, upload

BIG_VERSION = 2**31  # one past the version column
WIDE = 200  # columns named for an input of 2


@pytest.fixture(scope="module")
def refs(client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A dataset with x (2 columns), x3 (3 columns), 200 one-column arrays and y; the seed spec
    (one input of 2); an uploaded model of one input of 2 ('widths')."""
    import keras

    x, y = two_classes(n=20)
    columns = {f"c{i}": np.zeros(len(x), "float32") for i in range(WIDE)}
    ds = upload(client, "widths", x=x, y=y, x3=np.zeros((len(x), 3), "float32"), **columns)
    spec = client.post("/v1/specs", json=SEED_SPEC)
    assert spec.status_code == 201, spec.text
    path = tmp_path_factory.mktemp("widths") / "m.keras"
    model = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.save(path)
    r = client.post("/v1/models/widths/versions", files={"file": ("m.keras", path.read_bytes())})
    assert r.status_code == 201, r.text
    return {"spec_id": spec.json()["id"], "dataset_id": ds["id"], "model": "widths"}


def _cancel(client: Any, r: Any) -> None:
    assert r.status_code == 202, r.text
    assert client.post(f"/v1/jobs/{r.json()['id']}:cancel").status_code == 202


# -- versions and event ids within their columns ------------------------------------------------

@pytest.mark.parametrize("field", ["from_model", "model-evaluate", "model-predict"])
def test_a_version_beyond_the_column_is_a_422(client: Any, refs: dict[str, str],
                                              unchanged: None, field: str) -> None:
    """'m/2147483648' was a 500 (PostgreSQL: integer out of range)."""
    ref = f"{refs['model']}/{BIG_VERSION}"
    if field == "from_model":
        body = {"type": "fit", "from_model": ref, "dataset_id": refs["dataset_id"]}
        pointer = "/from_model"
    else:
        body = {"type": field.split("-")[1], "model": ref, "dataset_id": refs["dataset_id"]}
        pointer = "/model"
    problem = assert_problem(client.post("/v1/jobs", json=body), 422, pointer)
    assert "2147483647" in problem["detail"]
    # The largest version the column holds is looked up, and is simply not there.
    body[pointer[1:]] = f"{refs['model']}/{BIG_VERSION - 1}"
    assert_problem(client.post("/v1/jobs", json=body), 422, pointer)


@pytest.mark.parametrize("header", [str(2**63), "1" * 400, "-1", "1e3", "abc"])
def test_a_last_event_id_beyond_int64_is_a_400_before_the_stream(
        client: Any, refs: dict[str, str], header: str) -> None:
    """The stream used to start (200) and drop at its first query."""
    r = client.post("/v1/jobs", json={"type": "predict", "model": refs["model"],
                                      "dataset_id": refs["dataset_id"]})
    _cancel(client, r)
    job_id = r.json()["id"]
    answer = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": header})
    assert_problem(answer, 400, "/header/last-event-id")
    # The largest id the column holds resumes after it: nothing more, and the job has ended.
    ok = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(2**63 - 1)})
    assert ok.status_code == 200 and ok.text == ""


# -- x checked against the model's inputs ------------------------------------------------------

def _fit(refs: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {"type": "fit", "spec_id": refs["spec_id"], "dataset_id": refs["dataset_id"],
            **fields}


def _saved(refs: dict[str, str], type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "model": refs["model"], "dataset_id": refs["dataset_id"], **fields}


COLUMNS = [f"c{i}" for i in range(WIDE)]
WIDTH_CASES = [
    ("fit-200-columns", lambda r: _fit(r, x=COLUMNS), "/x", "width 200"),
    ("fit-3-wide", lambda r: _fit(r, x="x3"), "/x", "[3]"),
    ("fit-from-model-3-wide", lambda r: {"type": "fit", "from_model": r["model"],
                                         "dataset_id": r["dataset_id"], "x": "x3"}, "/x", "[3]"),
    ("evaluate-3-wide", lambda r: _saved(r, "evaluate", x="x3"), "/x", "[3]"),
    ("evaluate-200-columns", lambda r: _saved(r, "evaluate", x=COLUMNS), "/x", "width 200"),
    ("predict-3-wide", lambda r: _saved(r, "predict", x="x3"), "/x", "[3]"),
    ("predict-200-columns", lambda r: _saved(r, "predict", x=COLUMNS), "/x", "width 200"),
    ("predict-rank", lambda r: _saved(r, "predict", x="c0"), "/x", "[]"),
    ("predict-unknown-input-key", lambda r: _saved(r, "predict", x={"other": "x"}), "/x",
     "expected keys"),
]


@pytest.mark.parametrize(("body", "pointer", "said"), [c[1:] for c in WIDTH_CASES],
                         ids=[c[0] for c in WIDTH_CASES])
def test_x_of_the_wrong_width_is_a_422_at_submit(client: Any, refs: dict[str, str],
                                                 unchanged: None, body: Any, pointer: str,
                                                 said: str) -> None:
    """Each was accepted (202) and failed in the worker with Keras's message."""
    problem = assert_problem(client.post("/v1/jobs", json=body(refs)), 422, pointer)
    details = " ".join(e["detail"] for e in problem["errors"])
    assert said in details and ("[2]" in details or "expected keys" in details), problem


def test_x_that_fits_is_accepted(client: Any, refs: dict[str, str]) -> None:
    """What Keras takes passes: the exact width, two stacked columns of one, the input's
    name as the key of a mapping."""
    for body in (_saved(refs, "predict", x=["c0", "c1"]), _saved(refs, "evaluate"),
                 _saved(refs, "predict", x={"x": "x"}), _fit(refs, x=["c0", "c1"]),
                 {"type": "fit", "from_model": refs["model"], "dataset_id": refs["dataset_id"]}):
        _cancel(client, client.post("/v1/jobs", json=body))


def test_a_validation_dataset_of_the_wrong_width_is_a_422(client: Any, refs: dict[str, str],
                                                          unchanged: None) -> None:
    x, y = two_classes(n=5)
    val = upload(client, "narrow-validation", x=x[:, :1], y=y)
    try:
        problem = assert_problem(client.post("/v1/jobs", json=_fit(
            refs, validation_dataset_id=val["id"])), 422, "/x")
        assert val["id"] in problem["errors"][0]["detail"]
    finally:
        assert client.delete(f"/v1/datasets/{val['id']}").status_code == 204


# -- strict types in specs ---------------------------------------------------------------------

@pytest.mark.parametrize(("units", "said"), [(True, "true/false"), ("8", "string"),
                                             (2.0, "2.0")])
def test_units_not_an_integer_is_a_422(client: Any, unchanged: None, units: Any,
                                       said: str) -> None:
    """`"units": true` was stored, and built as one unit."""
    body = {**SEED_SPEC, "layers": [{"type": "Dense", "units": units}]}
    problem = assert_problem(client.post("/v1/specs", json=body), 422, "/layers/0/units")
    assert said in problem["detail"]


# -- every dataset a queued job names is in use ------------------------------------------------

def test_a_queued_jobs_validation_dataset_cannot_be_deleted(client: Any,
                                                            refs: dict[str, str]) -> None:
    """It was deleted (204), and the job then failed."""
    x, y = two_classes(n=5)
    val = upload(client, "validation-in-use", x=x, y=y)
    r = client.post("/v1/jobs", json=_fit(refs, validation_dataset_id=val["id"]))
    assert r.status_code == 202, r.text
    problem = assert_problem(client.delete(f"/v1/datasets/{val['id']}"), 409)
    assert "queued or running" in problem["detail"]
    assert client.get(f"/v1/datasets/{val['id']}").status_code == 200
    assert client.post(f"/v1/jobs/{r.json()['id']}:cancel").status_code == 202
    assert client.delete(f"/v1/datasets/{val['id']}").status_code == 204


# -- other job fields the worker would trip on -------------------------------------------------

@pytest.mark.parametrize(("fields", "pointer"), [
    ({"class_weight": {"²": 1.0}}, "/class_weight/²"),  # a digit to str.isdigit, not to int()
    ({"class_weight": {"1" * 20: 1.0}}, f"/class_weight/{'1' * 20}"),
    ({"callbacks": [{"type": "EarlyStopping", "patience": True}]}, "/callbacks/0/patience"),
    ({"callbacks": [{"type": "ReduceLROnPlateau", "factor": "0.5"}]}, "/callbacks/0/factor"),
])
def test_job_fields_keras_would_misread_are_a_422(client: Any, refs: dict[str, str],
                                                  unchanged: None, fields: dict[str, Any],
                                                  pointer: str) -> None:
    assert_problem(client.post("/v1/jobs", json=_fit(refs, **fields)), 422, pointer)
