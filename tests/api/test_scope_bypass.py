"""Ways around the scopes: what a request needs comes from the route it matches, never from how
its path ends. A trailing newline (or any control character) is a 400 before any key is looked
at; a label spelled like a protocol verb is refused and never turns a write into a predict;
/readyz names no tenant's model; an `admin` key manages its own tenant only, an `operator` key
every tenant."""

from __future__ import annotations

import io
import re
import secrets
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import numpy as np
import pytest

from tests.helpers import assert_problem, keras_bytes, make_key

pytestmark = pytest.mark.slow

ROWS = {"instances": [[0.0, 3.0]]}
INFER = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 3.0]}]}


@dataclass
class Setup:
    http: Any
    tenant: str
    model: str
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, *scopes: str) -> str:
        name = "-".join(sorted(scopes))
        if name not in self.keys:
            self.keys[name] = make_key(self.tenant, f"{self.tenant}-{name}", sorted(scopes))
        return self.keys[name]

    def call(self, method: str, url: str, scopes: tuple[str, ...] | None,
             **kwargs: Any) -> httpx.Response:
        request = self.http.build_request(method, url, **kwargs)
        del request.headers["authorization"]  # not the suite's key
        if scopes is not None:
            request.headers["authorization"] = f"Bearer {self.key(*scopes)}"
        response: httpx.Response = self.http.send(request)
        return response


@pytest.fixture(scope="module")
def setup(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(client, f"bypass-{secrets.token_hex(3)}", f"bypass-{secrets.token_hex(3)}")
    keras_file = keras_bytes(tmp_path_factory.mktemp("bypass"))
    r = s.call("POST", f"/v1/models/{s.model}/versions", ("write",),
               files={"file": ("m.keras", keras_file)})
    assert r.status_code == 201, r.text
    r = s.call("PUT", f"/v1/models/{s.model}/labels/prod", ("write",), json={"version": 1})
    assert r.status_code == 200, r.text
    yield s


def predict_urls(model: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f"/v1/models/{model}:predict", ROWS),
            (f"/v1/models/{model}/versions/1:predict", ROWS),
            (f"/v1/models/{model}/labels/prod:predict", ROWS),
            (f"/v2/models/{model}/infer", INFER),
            (f"/v2/models/{model}/versions/1/infer", INFER)]


# --- a trailing newline ------------------------------------------------------------------------

def test_predict_needs_the_predict_scope_on_the_plain_path(setup: Setup) -> None:
    for url, body in predict_urls(setup.model):
        assert setup.call("POST", url, ("predict",), json=body).status_code == 200, url
        assert_problem(setup.call("POST", url, ("write",), json=body), 403)


@pytest.mark.parametrize("tail", ["%0A", "%0D", "%00", "%0D%0A", "%7F", "%09"])
def test_a_write_key_cannot_predict_with_a_control_character_after_the_path(
        setup: Setup, tail: str) -> None:
    """Was 200 with predictions for a write-only key (`$` matches before a final newline)."""
    for url, body in predict_urls(setup.model):
        for scopes in (("write",), ("predict",), None):
            r = setup.call("POST", url + tail, scopes, json=body)
            problem = assert_problem(r, 400, "/path")
            assert "control character" in problem["detail"], problem


def test_a_predict_key_cannot_read_serving_settings_with_a_trailing_newline(setup: Setup) -> None:
    url = f"/v1/models/{setup.model}/serving"
    assert_problem(setup.call("GET", url, ("predict",)), 403)
    assert_problem(setup.call("GET", url + "%0A", ("predict",)), 400, "/path")
    assert setup.call("GET", url, ("read",)).status_code == 200


def test_a_control_character_inside_the_path_is_400_too(setup: Setup) -> None:
    for url in (f"/v1/models/{setup.model}%0A:predict", "/v1/models/x%00y",
                "/healthz%0A", "/v1/keys%0A"):
        assert_problem(setup.call("POST" if "predict" in url else "GET", url, None, json=ROWS),
                       400, "/path")


def test_a_dataset_member_named_with_a_newline_is_refused(setup: Setup) -> None:
    """`x\\n.npy` was stored as array "x\\n" (`^...$` and `re.match`)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in ("x\n.npy", "y.npy"):
            member = io.BytesIO()
            np.save(member, np.zeros((4, 2), "float32"))
            archive.writestr(name, member.getvalue())
    r = setup.call("POST", "/v1/datasets", ("write",),
                   files={"file": ("d.npz", buf.getvalue())})
    assert_problem(r, 422, "/file/x\n")


def test_no_name_regex_takes_a_trailing_newline() -> None:
    from pydantic import Field, TypeAdapter, ValidationError

    from app.api.serving_route import ServingRoute
    from app.auth import keys
    from app.datasets import ingest
    from app.jobs.schemas import ArrayName
    from app.predict import router
    from app.registry import schemas
    from app.specs import builder
    from app.training import checkpoints
    from keras_jobs import arrays

    for pattern, good in ((ingest.NAME_RE, "x"), (builder.NAME_RE, "dense"),
                          (checkpoints.NAME, "e000001-b000002"), (arrays._NAME_RE, "x"),
                          (keys.NAME_PATTERN, "k"), (keys.TENANT_PATTERN, "t")):
        assert pattern.fullmatch(good) and not pattern.fullmatch(good + "\n"), pattern.pattern
    for pattern in (schemas.MODEL_NAME, schemas.LABEL_NAME):
        assert not re.fullmatch(pattern, "m\n")
    for pattern in (schemas.MODEL_NAME_PATTERN, schemas.MODEL_REF_PATTERN,
                    schemas.LABEL_PATTERN):  # pydantic's engine: `$` is the end of the text
        adapter: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=pattern)])
        assert adapter.validate_python("m") == "m"
        with pytest.raises(ValidationError):
            adapter.validate_python("m\n")
    with pytest.raises(ValidationError):
        TypeAdapter(ArrayName).validate_python("x\n")
    # The serving routes check a name with the route's own fields (those patterns).
    route = next(r for r in router.router.routes if isinstance(r, ServingRoute) and r.direct)
    assert route.path == "/v1/models/{name}:predict"
    assert route._path_values({"name": "m"}) == {"name": "m"}
    assert route._path_values({"name": "m\n"}) is None


# --- a label named like a verb -----------------------------------------------------------------

@pytest.mark.parametrize("label", ["infer", "predict", "metadata", "versions", "Infer"])
def test_a_label_named_like_a_verb_needs_write_and_is_refused(setup: Setup, label: str) -> None:
    """A predict-only key could PUT and DELETE `/labels/infer` (the path ends in `/infer`),
    past the write rate limit; a write key got 403."""
    url = f"/v1/models/{setup.model}/labels/{label}"
    assert_problem(setup.call("PUT", url, ("predict",), json={"version": 1}), 403)
    assert_problem(setup.call("DELETE", url, ("predict",)), 403)
    problem = assert_problem(setup.call("PUT", url, ("write",), json={"version": 1}), 422,
                             "/path/label")
    assert "reserved" in str(problem["errors"]) and label in problem["detail"], problem
    assert_problem(setup.call("DELETE", url, ("write",)), 404)  # nothing was set


def test_a_label_write_counts_against_the_write_limit_not_predict(setup: Setup) -> None:
    from app.api.route_access import route_table
    from app.auth.access import WRITE

    app = setup.http.app
    scope = {"type": "http", "method": "PUT", "root_path": "",
             "path": f"/v1/models/{setup.model}/labels/infer"}
    assert route_table(app).find(scope).access == WRITE


# --- /readyz -----------------------------------------------------------------------------------

def test_readyz_names_no_model(setup: Setup) -> None:
    assert setup.call("POST", f"/v1/models/{setup.model}:predict", ("predict",),
                      json=ROWS).status_code == 200  # loaded now
    r = setup.call("GET", "/readyz", None)
    assert r.status_code == 200, r.text
    assert setup.model not in r.text, r.text
    assert "loaded_models" not in r.json()
    assert r.json()["loaded_model_count"] >= 1


# --- admin: its own tenant; operator: every tenant ---------------------------------------------

@dataclass
class Tenants:
    http: Any
    a: str
    b: str
    admin_a: str
    admin_b: str
    operator: str

    def call(self, key: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        request = self.http.build_request(method, url, **kwargs)
        request.headers["authorization"] = f"Bearer {key}"
        response: httpx.Response = self.http.send(request)
        return response


@pytest.fixture(scope="module")
def tenants(client: Any) -> Tenants:
    suffix = secrets.token_hex(3)
    a, b = f"adm-a-{suffix}", f"adm-b-{suffix}"
    return Tenants(client, a, b, make_key(a, f"{a}-admin", ["admin"]),
                   make_key(b, f"{b}-admin", ["admin"]),
                   make_key(f"ops-{suffix}", f"ops-{suffix}", ["operator"]))


def test_an_admin_cannot_make_keys_for_another_tenant(tenants: Tenants) -> None:
    """Was 201: an admin of A made a key for B, then read B's data with it."""
    t = tenants
    body = {"name": f"{t.b}-planted", "tenant": t.b, "scopes": ["read"]}
    problem = assert_problem(t.call(t.admin_a, "POST", "/v1/keys", json=body), 403)
    assert "operator" in problem["detail"]
    r = t.call(t.operator, "GET", "/v1/keys", params={"tenant": t.b})
    assert f"{t.b}-planted" not in {k["name"] for k in r.json()}
    # Its own tenant (the default), and not an operator key even there.
    own = {"name": f"{t.a}-made", "scopes": ["read"]}
    r = t.call(t.admin_a, "POST", "/v1/keys", json=own)
    assert r.status_code == 201 and r.json()["tenant"] == t.a, r.text
    assert_problem(t.call(t.admin_a, "POST", "/v1/keys",
                          json={"name": f"{t.a}-ops", "scopes": ["operator"]}), 403)
    # The operator makes B's key.
    r = t.call(t.operator, "POST", "/v1/keys", json=body)
    assert r.status_code == 201 and r.json()["tenant"] == t.b, r.text


def test_an_admin_sees_and_revokes_its_own_tenants_keys_only(tenants: Tenants) -> None:
    t = tenants
    make_key(t.b, f"{t.b}-victim", ["read"])
    listed = t.call(t.admin_a, "GET", "/v1/keys").json()
    assert listed and {k["tenant"] for k in listed} == {t.a}, listed
    assert_problem(t.call(t.admin_a, "GET", "/v1/keys", params={"tenant": t.b}), 403)
    # Another tenant's key answers as a name that does not exist.
    assert_problem(t.call(t.admin_a, "DELETE", f"/v1/keys/{t.b}-victim"), 404)
    assert_problem(t.call(t.admin_a, "DELETE", f"/v1/keys/{t.b}-nope"), 404)
    assert t.call(t.admin_b, "GET", f"/v1/models/x{secrets.token_hex(2)}").status_code == 404
    r = t.call(t.operator, "DELETE", f"/v1/keys/{t.b}-victim")
    assert r.status_code == 200 and r.json()["revoked_at"], r.text
    assert {k["tenant"] for k in t.call(t.operator, "GET", "/v1/keys").json()} >= {t.a, t.b}


def test_an_admin_reads_its_own_audit_log_and_quotas_only(tenants: Tenants) -> None:
    t = tenants
    make_key(t.b, f"{t.b}-audited", ["read"])
    t.call(t.admin_b, "DELETE", f"/v1/keys/{t.b}-audited")  # an event in B's log
    items = t.call(t.admin_a, "GET", "/v1/audit", params={"limit": 500}).json()["items"]
    assert {e["tenant"] for e in items} <= {t.a}, items
    assert_problem(t.call(t.admin_a, "GET", "/v1/audit", params={"tenant": t.b}), 403)
    b_items = t.call(t.operator, "GET", "/v1/audit", params={"tenant": t.b}).json()["items"]
    assert any(e["target"] == f"key/{t.b}-audited" for e in b_items), b_items

    assert t.call(t.admin_a, "GET", f"/v1/tenants/{t.a}/quotas").status_code == 200
    assert_problem(t.call(t.admin_a, "GET", f"/v1/tenants/{t.b}/quotas"), 403)
    # Quotas are the operator's: a tenant that set its own would have none.
    assert_problem(t.call(t.admin_a, "PUT", f"/v1/tenants/{t.a}/quotas",
                          json={"max_queued_jobs": 10**6}), 403)
    r = t.call(t.operator, "PUT", f"/v1/tenants/{t.b}/quotas", json={"max_queued_jobs": 5})
    assert r.status_code == 200 and r.json()["quota"]["max_queued_jobs"] == 5, r.text
    assert_problem(t.call(t.admin_a, "GET", "/metrics"), 403)
    assert t.call(t.operator, "GET", "/metrics").status_code == 200


def test_an_admin_cannot_revoke_an_operator_key_of_its_tenant(tenants: Tenants) -> None:
    t = tenants
    make_key(t.a, f"{t.a}-operator", ["operator"])
    assert_problem(t.call(t.admin_a, "DELETE", f"/v1/keys/{t.a}-operator"), 403)


# --- the serving routes ------------------------------------------------------------------------

def test_only_predict_and_infer_are_answered_from_the_route_table() -> None:
    """The routes whose endpoint is called straight from the route (app.api.serving_route) are
    the five predict and infer routes, found through the table authentication asked (no regex
    of their own): the shortcut can never answer a request the router would hand to another
    route, or one that needs another scope."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Match

    from app.api.deps import CALLER_STATE, OPEN_CALLER
    from app.api.serving_route import FoundServingRoute, ServingRoute
    from app.main import create_app
    from app.predict import router, v2_router

    app = create_app()
    head = app.routes[0]
    assert isinstance(head, FoundServingRoute)
    serving = {router.predict_latest, router.predict_version, router.predict_label,
               v2_router.v2_infer, v2_router.v2_infer_version}
    direct = {c.endpoint for c in iter_route_contexts(app.routes)
              if isinstance(c.original_route, ServingRoute) and c.original_route.direct}
    assert direct == serving

    def answered(method: str, path: str) -> Any:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": app,
                 "state": {CALLER_STATE: OPEN_CALLER}}
        match, child = head.matches(scope)
        return child["endpoint"] if match is Match.FULL else None

    served = set()
    for context in iter_route_contexts(app.routes):
        if context.path_format is None:
            continue
        for method in context.methods or ():
            path = re.sub(r"\{([a-z_]+)(?::[a-z]+)?\}",
                          lambda m: "1" if m[1] == "version" else "m", context.path_format)
            endpoint = answered(method, path)
            if endpoint is not None:
                served.add(endpoint)
                assert method == "POST" and endpoint is context.endpoint, (method, path)
    assert served == serving
    # A malformed name or version goes on to the route's own 422, never to another route.
    for path in ("/v1/models/a:b:predict", "/v1/models/m/versions/0:predict",
                 "/v1/models/m/labels/1x:predict", "/v2/models/m/versions/99999999999/infer"):
        assert answered("POST", path) is None, path
