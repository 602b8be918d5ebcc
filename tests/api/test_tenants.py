"""Tenants: names are per tenant (two tenants may both have a model `mnist`, each version 1,
each serving its own), and a resource of another tenant answers exactly as one that does not
exist, on every route that can name it: reads, predict, metadata, downloads, job events, labels,
list filters, and the spec, datasets and models a job request names."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import SEED_SPEC, make_key, npz_bytes

pytestmark = pytest.mark.slow


@dataclass
class Tenant:
    http: Any
    name: str
    key: str
    ids: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {self.key}"}
        response: httpx.Response = self.http.request(method, url, headers=headers, **kwargs)
        return response

    def ok(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        r = self.call(method, url, **kwargs)
        assert r.status_code < 300, r.text
        return dict(r.json())


def keras_file(folder: Path, column: int) -> bytes:
    """y = x[column]: a Dense(1) with fixed weights, so each tenant's answers are known."""
    import keras

    model = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(1)])
    kernel = np.zeros((2, 1), "float32")
    kernel[column, 0] = 1.0
    model.layers[0].set_weights([kernel, np.zeros(1, "float32")])
    path = folder / f"column{column}.keras"
    model.save(path)
    return path.read_bytes()


def dataset() -> bytes:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)).astype("float32")
    return npz_bytes(x=x, y=(x[:, :1] > 0).astype("float32"))


@dataclass
class Tenants:
    a: Tenant
    b: Tenant
    first_versions: tuple[int, int]
    job: dict[str, Any]  # A's job as it was left


def publish(tenant: Tenant, name: str, payload: bytes) -> int:
    r = tenant.call("POST", f"/v1/models/{name}/versions", files={"file": ("m.keras", payload)})
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


@pytest.fixture(scope="module")
def tenants(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    """A: mnist (versions 1 and 2, label prod -> 1), a-only, a spec, a dataset, a cancelled
    job. B: mnist (version 1), a spec, a dataset."""
    folder = tmp_path_factory.mktemp("tenants")
    suffix = secrets.token_hex(3)
    a, b = (Tenant(client, f"{t}-{suffix}",
                   make_key(f"{t}-{suffix}", f"{t}-{suffix}", ["read", "write", "predict"]))
            for t in ("acme", "bravo"))
    first = (publish(a, "mnist", keras_file(folder, 0)), publish(b, "mnist", keras_file(folder, 1)))
    publish(a, "mnist", keras_file(folder, 0))
    publish(a, "a-only", keras_file(folder, 0))
    a.ok("PUT", "/v1/models/mnist/labels/prod", json={"version": 1})
    for t in (a, b):
        t.ids["spec"] = t.ok("POST", "/v1/specs", json=SEED_SPEC)["id"]
        t.ids["dataset"] = t.ok("POST", "/v1/datasets",
                                files={"file": ("d.npz", dataset())})["id"]
    a.ids["job"] = a.ok("POST", "/v1/jobs", json={"type": "evaluate", "model": "mnist",
                                                  "dataset_id": a.ids["dataset"]})["id"]
    a.ok("POST", f"/v1/jobs/{a.ids['job']}:cancel")  # no worker spends time on it
    yield Tenants(a, b, first, a.ok("GET", f"/v1/jobs/{a.ids['job']}"))


def test_two_tenants_each_have_their_own_mnist(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    assert tenants.first_versions == (1, 1)
    rows = {"instances": [[2.0, 5.0]]}
    assert a.ok("POST", "/v1/models/mnist:predict", json=rows)["predictions"] == [[2.0]]
    assert b.ok("POST", "/v1/models/mnist:predict", json=rows)["predictions"] == [[5.0]]
    assert b.ok("POST", "/v1/models/mnist/versions/1:predict", json=rows)["predictions"] == [[5.0]]
    assert a.ok("POST", "/v1/models/mnist/labels/prod:predict", json=rows)["predictions"] \
        == [[2.0]]
    infer = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [2.0, 5.0]}]}
    assert b.ok("POST", "/v2/models/mnist/infer", json=infer)["outputs"][0]["data"] == [5.0]
    assert a.ok("POST", "/v2/models/mnist/versions/1/infer",
                json=infer)["outputs"][0]["data"] == [2.0]
    # Each sees only its own versions and labels of the name.
    seen_a, seen_b = a.ok("GET", "/v1/models/mnist"), b.ok("GET", "/v1/models/mnist")
    assert [v["version"] for v in seen_a["versions"]] == [2, 1]
    assert seen_a["labels"] == {"prod": 1}
    assert [v["version"] for v in seen_b["versions"]] == [1]
    assert seen_b["labels"] == {}
    assert b.ok("GET", "/v2/models/mnist")["versions"] == ["1"]
    # A label of the same name in B is B's own; A's stays where it was.
    b.ok("PUT", "/v1/models/mnist/labels/prod", json={"version": 1})
    assert b.ok("POST", "/v1/models/mnist/labels/prod:predict",
                json=rows)["predictions"] == [[5.0]]
    assert a.ok("GET", "/v1/models/mnist")["labels"] == {"prod": 1}
    assert a.ok("POST", "/v1/models/mnist/labels/prod:predict",
                json=rows)["predictions"] == [[2.0]]
    b.call("DELETE", "/v1/models/mnist/labels/prod")
    assert a.ok("GET", "/v1/models/mnist/labels/prod")["versions"][0]["version"] == 1


# --- another tenant's resource: exactly as one that does not exist ---------------------------

def comparable(r: httpx.Response, hidden: str) -> tuple[int, str, Any]:
    """Status, media type and body, with `hidden` (the id or name asked for) blanked out."""
    def blank(value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(rf"(?<![\w-]){re.escape(hidden)}(?![\w-])", "<id>", value)
        if isinstance(value, dict):
            return {k: blank(v) for k, v in value.items()}
        if isinstance(value, list):
            return [blank(v) for v in value]
        return value

    return r.status_code, r.headers.get("content-type", ""), blank(r.json())


def made_up(ident: str) -> str:
    """An id of the same shape that nobody has."""
    if re.fullmatch(r"[a-z]+_[0-9a-f]{16}", ident):
        return f"{ident.split('_')[0]}_{secrets.token_hex(8)}"
    return {"a-only": "nobody-has", "2": "7", "prod": "staging"}[ident]


def assert_as_if_absent(b: Tenant, method: str, template: str, ident: str,
                        status: int = 404, **kwargs: Any) -> httpx.Response:
    """B's request for A's `ident` and for a made-up one get the same answer."""
    nobody = made_up(ident)
    theirs = b.call(method, template.format(ident), **kwargs)
    nobodys = b.call(method, template.format(nobody), **kwargs)
    assert theirs.status_code == status, (template, theirs.text)
    assert theirs.headers["content-type"].startswith("application/problem+json")
    assert comparable(theirs, ident) == comparable(nobodys, nobody), \
        (theirs.text, nobodys.text)
    return theirs


ROWS = {"instances": [[2.0, 5.0]]}
INFER = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [2.0, 5.0]}]}
# (method, url with {} where A's resource goes, which of A's, request body)
A_RESOURCES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/specs/{}", "spec", None),
    ("GET", "/v1/datasets/{}", "dataset", None),
    ("DELETE", "/v1/datasets/{}", "dataset", None),
    ("GET", "/v1/jobs/{}", "job", None),
    ("GET", "/v1/jobs/{}/events", "job", None),
    ("GET", "/v1/jobs/{}/logs", "job", None),
    ("POST", "/v1/jobs/{}:cancel", "job", None),
    ("GET", "/v1/jobs/{}/history.png", "job", None),
    ("GET", "/v1/jobs/{}/history.svg", "job", None),
    # A model only A has.
    ("GET", "/v1/models/{}", "a-only", None),
    ("GET", "/v1/models/{}/versions/1", "a-only", None),
    ("GET", "/v1/models/{}/metadata", "a-only", None),
    ("GET", "/v1/models/{}/versions/1/metadata", "a-only", None),
    ("POST", "/v1/models/{}:predict", "a-only", ROWS),
    ("POST", "/v1/models/{}/versions/1:predict", "a-only", ROWS),
    ("GET", "/v1/models/{}/versions/1/download", "a-only", None),
    ("GET", "/v1/models/{}/serving", "a-only", None),
    ("PUT", "/v1/models/{}/serving", "a-only", {"max_batch_size": 8}),
    ("PUT", "/v1/models/{}/labels/prod", "a-only", {"version": 1}),
    ("GET", "/v2/models/{}", "a-only", None),
    ("GET", "/v2/models/{}/versions/1", "a-only", None),
    ("GET", "/v2/models/{}/ready", "a-only", None),
    ("GET", "/v2/models/{}/versions/1/ready", "a-only", None),
    ("POST", "/v2/models/{}/infer", "a-only", INFER),
    ("POST", "/v2/models/{}/versions/1/infer", "a-only", INFER),
    # Version 2 of mnist: A has it, B's mnist has only version 1.
    ("GET", "/v1/models/mnist/versions/{}", "2", None),
    ("GET", "/v1/models/mnist/versions/{}/metadata", "2", None),
    ("POST", "/v1/models/mnist/versions/{}:predict", "2", ROWS),
    ("GET", "/v1/models/mnist/versions/{}/download", "2", None),
    ("PUT", "/v1/models/mnist/labels/latest", "2", None),  # body below: {"version": 2}
    ("GET", "/v2/models/mnist/versions/{}", "2", None),
    ("GET", "/v2/models/mnist/versions/{}/ready", "2", None),
    ("POST", "/v2/models/mnist/versions/{}/infer", "2", INFER),
    # A's label prod of mnist: B's mnist has no labels.
    ("GET", "/v1/models/mnist/labels/{}", "prod", None),
    ("GET", "/v1/models/mnist/labels/{}/metadata", "prod", None),
    ("POST", "/v1/models/mnist/labels/{}:predict", "prod", ROWS),
    ("DELETE", "/v1/models/mnist/labels/{}", "prod", None),
]


def ident_of(tenants: Tenants, which: str) -> str:
    return tenants.a.ids.get(which, which)


@pytest.mark.parametrize(("method", "template", "which", "body"), A_RESOURCES,
                         ids=[f"{m} {t.format(w)}" for m, t, w, _b in A_RESOURCES])
def test_a_resource_of_another_tenant_is_404_as_if_absent(
        tenants: Tenants, method: str, template: str, which: str,
        body: dict[str, Any] | None) -> None:
    ident = ident_of(tenants, which)
    if template == "/v1/models/mnist/labels/latest":  # the version is in the body
        theirs = tenants.b.call(method, template, json={"version": 2})
        nobodys = tenants.b.call(method, template, json={"version": 7})
        assert theirs.status_code == 404, theirs.text
        assert comparable(theirs, "2") == comparable(nobodys, "7")
        return
    assert_as_if_absent(tenants.b, method, template, ident, json=body)


def test_plot_of_own_model_on_another_tenants_dataset_is_as_if_absent(tenants: Tenants) -> None:
    """The dataset is a query parameter here: 422 at /query/dataset_id, as for a made-up id."""
    a, b = tenants.a, tenants.b
    own = f"/v1/models/mnist/versions/1/boundary.png?dataset_id={b.ids['dataset']}"
    assert b.call("GET", own).status_code == 200
    for tenant, template, ident in (
            (b, "/v1/models/mnist/versions/1/boundary.png?dataset_id={}", a.ids["dataset"]),
            (a, "/v1/models/a-only/versions/1/boundary.svg?dataset_id={}", b.ids["dataset"])):
        r = assert_as_if_absent(tenant, "GET", template, ident, status=422)
        assert [e["pointer"] for e in r.json()["errors"]] == ["/query/dataset_id"]
    assert_as_if_absent(b, "GET", "/v1/models/{}/versions/1/boundary.png?dataset_id="
                        + b.ids["dataset"], "a-only")


def test_b_could_change_nothing_of_a(tenants: Tenants) -> None:
    """After every refused attempt above (and once more here), A's rows are as they were."""
    a, b = tenants.a, tenants.b
    for method, url in (("DELETE", f"/v1/datasets/{a.ids['dataset']}"),
                        ("POST", f"/v1/jobs/{a.ids['job']}:cancel"),
                        ("DELETE", "/v1/models/mnist/labels/prod")):
        assert b.call(method, url).status_code == 404
    assert b.call("PUT", "/v1/models/a-only/serving",
                  json={"max_batch_size": 8}).status_code == 404
    assert a.ok("GET", f"/v1/datasets/{a.ids['dataset']}")["id"] == a.ids["dataset"]
    assert a.ok("GET", f"/v1/jobs/{a.ids['job']}") == tenants.job
    assert a.ok("GET", "/v1/models/mnist")["labels"] == {"prod": 1}
    assert a.ok("GET", "/v1/models/a-only/serving")["max_batch_size"] is None


# --- job requests that name another tenant's spec, dataset or model --------------------------

def job_requests(tenants: Tenants) -> list[tuple[str, dict[str, Any], str]]:
    """(A's id or name in it, B's job request, the pointer it is refused at)."""
    a, b = tenants.a.ids, tenants.b.ids
    fit = {"type": "fit", "spec_id": b["spec"], "dataset_id": b["dataset"], "epochs": 1}
    return [
        (a["spec"], {**fit, "spec_id": a["spec"]}, "/spec_id"),
        (a["dataset"], {**fit, "dataset_id": a["dataset"]}, "/dataset_id"),
        (a["dataset"], {**fit, "validation_dataset_id": a["dataset"]}, "/validation_dataset_id"),
        ("a-only", {**fit, "spec_id": None, "from_model": "a-only"}, "/from_model"),
        ("2", {**fit, "spec_id": None, "from_model": "mnist/2"}, "/from_model"),
        ("a-only", {"type": "evaluate", "model": "a-only", "dataset_id": b["dataset"]},
         "/model"),
        ("2", {"type": "evaluate", "model": "mnist/2", "dataset_id": b["dataset"]}, "/model"),
        (a["dataset"], {"type": "evaluate", "model": "mnist", "dataset_id": a["dataset"]},
         "/dataset_id"),
        ("a-only", {"type": "predict", "model": "a-only", "dataset_id": b["dataset"]},
         "/model"),
        (a["dataset"], {"type": "predict", "model": "mnist", "dataset_id": a["dataset"]},
         "/dataset_id"),
    ]


def test_a_job_naming_another_tenants_resource_is_refused_as_if_absent(
        tenants: Tenants) -> None:
    b = tenants.b
    jobs_before = b.ok("GET", "/v1/jobs")["total"]
    for ident, body, pointer in job_requests(tenants):
        def swap(value: Any, new: str, ident: str = ident) -> Any:
            if not isinstance(value, str):
                return value
            if value == ident:
                return new
            return value.replace(f"/{ident}", f"/{new}") if ident == "2" else value

        nobody = made_up(ident)
        theirs = b.call("POST", "/v1/jobs", json=body)
        nobodys = b.call("POST", "/v1/jobs", json={k: swap(v, nobody) for k, v in body.items()})
        assert theirs.status_code == 422, (body, theirs.text)
        assert [e["pointer"] for e in theirs.json()["errors"]] == [pointer], theirs.text
        assert comparable(theirs, ident) == comparable(nobodys, nobody), \
            (theirs.text, nobodys.text)
    assert b.ok("GET", "/v1/jobs")["total"] == jobs_before


# --- lists ------------------------------------------------------------------------------------

def listed(tenant: Tenant, url: str) -> set[str]:
    return {item.get("id", item.get("name")) for item in tenant.ok("GET", url)["items"]}


def test_lists_show_only_own_rows(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    for url, which in (("/v1/specs", "spec"), ("/v1/datasets", "dataset")):
        assert listed(a, url) == {a.ids[which]}
        assert listed(b, url) == {b.ids[which]}
    assert listed(a, "/v1/jobs") == {a.ids["job"]}
    assert listed(b, "/v1/jobs") == set()
    assert listed(a, "/v1/jobs?status=cancelled") == {a.ids["job"]}
    assert listed(b, "/v1/jobs?status=cancelled") == set()
    models_a = {m["name"]: m for m in a.ok("GET", "/v1/models")["items"]}
    models_b = {m["name"]: m for m in b.ok("GET", "/v1/models")["items"]}
    assert set(models_a) == {"mnist", "a-only"} and set(models_b) == {"mnist"}
    assert (models_a["mnist"]["latest_version"], models_b["mnist"]["latest_version"]) == (2, 1)
    assert a.ok("GET", "/v1/specs")["total"] == b.ok("GET", "/v1/specs")["total"] == 1


def test_one_idempotency_key_in_two_tenants_makes_two_specs(client: Any) -> None:
    suffix = secrets.token_hex(3)
    a, b = (Tenant(client, name, make_key(name, name, ["read", "write"]))
            for name in (f"idem-a-{suffix}", f"idem-b-{suffix}"))
    key = {"Idempotency-Key": "same-key"}
    body = {**SEED_SPEC, "name": "idempotent"}
    made_a = a.ok("POST", "/v1/specs", json=body, headers=key)
    made_b = b.ok("POST", "/v1/specs", json=body, headers=key)
    assert made_a["id"] != made_b["id"]
    assert a.ok("POST", "/v1/specs", json=body, headers=key)["id"] == made_a["id"]  # replayed
    assert b.call("GET", f"/v1/specs/{made_a['id']}").status_code == 404
    assert a.call("GET", f"/v1/specs/{made_b['id']}").status_code == 404
