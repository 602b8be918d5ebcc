"""Every route of the app x every kind of caller: no key, a wrong key, a revoked key, an expired
key, a key without the route's scope, a key of another tenant, the right key; and x every
spelling that once got around a scope: a trailing %0A, %0D or %00, a label or model named like
a protocol verb.

The routes come from the app's own route table: a route added later without an entry in ROUTES
below fails here (add its scope, how to call it, and what each caller gets)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.routing import iter_route_contexts

from app.api.auth import PUBLIC, PUBLIC_PREFIXES, is_public
from app.api.serving_route import FoundServingRoute
from app.main import create_app
from tests.helpers import SEED_SPEC, keras_bytes, make_key, npz_bytes

pytestmark = pytest.mark.slow

Route = tuple[str, str]  # (method, path template as the app declares it)


def app_routes() -> list[Route]:
    """(method, path) of every route the app answers; HEAD only where GET is not declared."""
    found: set[Route] = set()
    for context in iter_route_contexts(create_app().routes):
        if isinstance(context.route, FoundServingRoute):
            continue  # answers nothing of its own: it finds the serving routes listed here
        methods, path = set(context.methods or ()), context.path_format
        assert path is not None, context
        if "GET" in methods:
            methods.discard("HEAD")
        found.update((m, path) for m in methods)
    return sorted(found, key=lambda r: (r[1], r[0]))


ALL_ROUTES = app_routes()
PUBLIC_ROUTES = [r for r in ALL_ROUTES if is_public(r[1])]
KEYED_ROUTES = [r for r in ALL_ROUTES if not is_public(r[1])]


# --- the world tenant A owns, and the keys every case uses ------------------------------------

@dataclass(frozen=True)
class Body:
    json: Any = None
    files: dict[str, tuple[str, bytes]] | None = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    """Tenant A's spec, dataset, cancelled job, model (version 1, label "prod") and a second
    model that only receives uploads; tenant B owns nothing of these."""

    http: Any
    a: str
    b: str
    keras: bytes
    admin_a: str
    params: dict[str, str] = field(default_factory=dict)
    _keys: dict[tuple[str, frozenset[str]], str] = field(default_factory=dict)

    def key(self, tenant: str, scopes: frozenset[str]) -> str:
        """A key of `tenant` with exactly `scopes` (made once)."""
        if (tenant, scopes) not in self._keys:
            self._keys[(tenant, scopes)] = make_key(
                tenant, f"{tenant}-{'-'.join(sorted(scopes))}", sorted(scopes))
        return self._keys[(tenant, scopes)]

    def as_a(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        r: httpx.Response = self.http.request(
            method, url, headers={"Authorization": f"Bearer {self.admin_a}"}, **kwargs)
        assert r.status_code < 300, r.text
        return r

    # Resources a call that reaches its handler uses up (deleted, revoked, cancelled).
    def fresh_dataset(self) -> dict[str, str]:
        r = self.as_a("POST", "/v1/datasets", files={"file": ("d.npz", dataset_bytes())})
        return {"dataset_id": r.json()["id"]}

    def fresh_label(self) -> dict[str, str]:
        label = f"l{secrets.token_hex(4)}"
        self.as_a("PUT", f"/v1/models/{self.params['name']}/labels/{label}", json={"version": 1})
        return {"label": label}

    def fresh_version(self) -> dict[str, str]:
        r = self.as_a("POST", "/v1/models/linear-uploads/versions",
                      files={"file": ("m.keras", self.keras)})
        return {"name": "linear-uploads", "version": str(r.json()["version"])}

    def fresh_key(self) -> dict[str, str]:
        name = f"{self.a}-spare-{secrets.token_hex(3)}"
        make_key(self.a, name, ["read"])
        return {"name": name}

    def fresh_job(self) -> dict[str, str]:
        return {"job_id": self.as_a("POST", "/v1/jobs", json=self.evaluate_job()).json()["id"]}

    def evaluate_job(self) -> dict[str, Any]:
        return {"type": "evaluate", "model": self.params["name"],
                "dataset_id": self.params["dataset_id"]}


def dataset_bytes() -> bytes:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2)).astype("float32")
    return npz_bytes(x=x, y=(x[:, :1] > 0).astype("float32"))


@pytest.fixture(scope="module")
def world(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    suffix = secrets.token_hex(3)
    a, b = f"matrix-a-{suffix}", f"matrix-b-{suffix}"
    w = World(client, a, b, keras_bytes(tmp_path_factory.mktemp("matrix")),
              make_key(a, f"{a}-setup", ["read", "write", "predict"]))
    w.params.update(tenant=a, name="linear", version="1", label="prod", fmt="png",
                    path="common.js", key_name=f"{a}-setup", array="x")
    w.params["spec_id"] = w.as_a("POST", "/v1/specs", json=SEED_SPEC).json()["id"]
    w.params.update(w.fresh_dataset())
    for model in ("linear", "linear-uploads"):
        w.as_a("POST", f"/v1/models/{model}/versions", files={"file": ("m.keras", w.keras)})
    w.as_a("PUT", "/v1/models/linear/labels/prod", json={"version": 1})
    job_id = w.fresh_job()["job_id"]
    w.as_a("POST", f"/v1/jobs/{job_id}:cancel")
    w.params["job_id"] = job_id
    yield w
    # Jobs the cases queued (as A or B) are cancelled: no worker spends time on them.
    for tenant in (a, b):
        auth = {"Authorization": f"Bearer {w.key(tenant, frozenset({'read', 'write'}))}"}
        for job in client.get("/v1/jobs?status=queued&limit=500", headers=auth).json()["items"]:
            client.post(f"/v1/jobs/{job['id']}:cancel", headers=auth)


# --- the table: every keyed route, its scope, how to call it, what each caller gets -----------

NOT_FOUND = 404
LIST = -1  # a list: 200, with A's row for A and without it for B


@dataclass(frozen=True)
class Entry:
    """`scopes`: any one of them lets a request through. `status`: the right key's answer.
    `other`: the answer to tenant B's key with the same scope (404 where the route names A's
    resource; the right key's status where the route names none of A's: B acts in its own
    namespace, or an admin route that is not a tenant's). `marker`: which of A's values a list
    shows A and hides from B. `fresh`: resources the call uses up."""

    scopes: frozenset[str]
    status: int
    other: int = NOT_FOUND
    body: Callable[[World], Body] = lambda _w: Body()
    fresh: Callable[[World], dict[str, str]] | None = None
    marker: str | None = None


READ, WRITE, PREDICT, ADMIN, OPERATOR = (
    frozenset({s}) for s in ("read", "write", "predict", "admin", "operator"))
FORBIDDEN = 403
STATUS = frozenset({"read", "predict"})  # model status and metadata: read or predict


def _rows(_w: World) -> Body:
    return Body(json={"instances": [[0.0, 3.0]]})


def _infer(_w: World) -> Body:
    return Body(json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                  "data": [0.0, 3.0]}]})


def _spec(_w: World) -> Body:
    return Body(json={**SEED_SPEC, "name": f"spec-{secrets.token_hex(3)}"})


def _dataset(_w: World) -> Body:
    return Body(files={"file": ("d.npz", dataset_bytes())})


def _keras(w: World) -> Body:
    return Body(files={"file": ("m.keras", w.keras)})


def _new_key(_w: World) -> Body:
    return Body(json={"name": f"matrix-new-{secrets.token_hex(4)}", "scopes": ["read"]})


def _boundary(w: World) -> Body:
    return Body(params={"dataset_id": w.params["dataset_id"]})


ROUTES: dict[Route, Entry] = {
    # The whole server's: an operator key of any tenant.
    ("GET", "/metrics"): Entry(OPERATOR, 200, other=200),
    # An admin key manages its own tenant: its keys and audit log (B sees its own list), its
    # quotas (B may not read A's); an operator key sets quotas, of any tenant.
    ("GET", "/v1/audit"): Entry(ADMIN, 200, other=200),
    ("GET", "/v1/keys"): Entry(ADMIN, 200, other=200),
    ("POST", "/v1/keys"): Entry(ADMIN, 201, other=201, body=_new_key),
    ("DELETE", "/v1/keys/{name}"): Entry(ADMIN, 200, fresh=World.fresh_key),
    ("GET", "/v1/tenants/{tenant}/quotas"): Entry(ADMIN, 200, other=FORBIDDEN),
    ("PUT", "/v1/tenants/{tenant}/quotas"): Entry(OPERATOR, 200, other=200,
                                                   body=lambda _w: Body(json={})),
    # Specs, datasets, jobs.
    ("GET", "/v1/specs"): Entry(READ, 200, other=LIST, marker="spec_id"),
    ("POST", "/v1/specs"): Entry(WRITE, 201, other=201, body=_spec),
    ("GET", "/v1/specs/{spec_id}"): Entry(READ, 200),
    ("GET", "/v1/datasets"): Entry(READ, 200, other=LIST, marker="dataset_id"),
    ("POST", "/v1/datasets"): Entry(WRITE, 201, other=201, body=_dataset),
    ("GET", "/v1/datasets/{dataset_id}"): Entry(READ, 200),
    ("GET", "/v1/datasets/{dataset_id}/arrays/{array}"): Entry(READ, 200),
    ("DELETE", "/v1/datasets/{dataset_id}"): Entry(WRITE, 204, fresh=World.fresh_dataset),
    ("GET", "/v1/jobs"): Entry(READ, 200, other=LIST, marker="job_id"),
    # B's evaluate job names A's dataset and model: refused as for ids that do not exist.
    ("POST", "/v1/jobs"): Entry(WRITE, 202, other=422,
                                body=lambda w: Body(json=w.evaluate_job())),
    ("GET", "/v1/jobs/{job_id}"): Entry(READ, 200),
    ("GET", "/v1/jobs/{job_id}/events"): Entry(READ, 200),
    ("GET", "/v1/jobs/{job_id}/logs"): Entry(READ, 200),
    ("GET", "/v1/jobs/{job_id}/history.{fmt}"): Entry(READ, 409),  # no epoch finished
    ("POST", "/v1/jobs/{job_id}:cancel"): Entry(WRITE, 202, fresh=World.fresh_job),
    # Models: registry, status, labels, serving settings, plots.
    ("GET", "/v1/models"): Entry(READ, 200, other=LIST, marker="name"),
    ("POST", "/v1/models/{name}/versions"): Entry(WRITE, 201, other=201, body=_keras,
                                                  fresh=lambda _w: {"name": "linear-uploads"}),
    ("GET", "/v1/models/{name}"): Entry(STATUS, 200),
    ("GET", "/v1/models/{name}/versions/{version}"): Entry(STATUS, 200),
    ("GET", "/v1/models/{name}/labels/{label}"): Entry(STATUS, 200),
    ("GET", "/v1/models/{name}/metadata"): Entry(STATUS, 200),
    ("GET", "/v1/models/{name}/versions/{version}/metadata"): Entry(STATUS, 200),
    ("GET", "/v1/models/{name}/labels/{label}/metadata"): Entry(STATUS, 200),
    ("GET", "/v1/models/{name}/versions/{version}/download"): Entry(READ, 200),
    ("GET", "/v1/models/{name}/versions/{version}/boundary.{fmt}"): Entry(READ, 200,
                                                                         body=_boundary),
    ("PUT", "/v1/models/{name}/labels/{label}"): Entry(
        WRITE, 200, body=lambda _w: Body(json={"version": 1}),
        fresh=lambda _w: {"label": f"l{secrets.token_hex(4)}"}),
    ("DELETE", "/v1/models/{name}/labels/{label}"): Entry(WRITE, 204, fresh=World.fresh_label),
    ("DELETE", "/v1/models/{name}/versions/{version}"): Entry(WRITE, 204,
                                                             fresh=World.fresh_version),
    ("GET", "/v1/models/{name}/serving"): Entry(READ, 200),
    ("PUT", "/v1/models/{name}/serving"): Entry(WRITE, 200, body=lambda _w: Body(json={})),
    # TensorFlow Serving's predict; :classify and :regress are refused for every model alike.
    ("POST", "/v1/models/{name}:predict"): Entry(PREDICT, 200, body=_rows),
    ("POST", "/v1/models/{name}/versions/{version}:predict"): Entry(PREDICT, 200, body=_rows),
    ("POST", "/v1/models/{name}/labels/{label}:predict"): Entry(PREDICT, 200, body=_rows),
    ("POST", "/v1/models/{name}:classify"): Entry(PREDICT, 400, other=400, body=_rows),
    ("POST", "/v1/models/{name}/versions/{version}:classify"): Entry(PREDICT, 400, other=400,
                                                                     body=_rows),
    ("POST", "/v1/models/{name}/labels/{label}:classify"): Entry(PREDICT, 400, other=400,
                                                                 body=_rows),
    ("POST", "/v1/models/{name}:regress"): Entry(PREDICT, 400, other=400, body=_rows),
    ("POST", "/v1/models/{name}/versions/{version}:regress"): Entry(PREDICT, 400, other=400,
                                                                    body=_rows),
    ("POST", "/v1/models/{name}/labels/{label}:regress"): Entry(PREDICT, 400, other=400,
                                                                body=_rows),
    # The Open Inference Protocol.
    ("GET", "/v2/models/{name}"): Entry(STATUS, 200),
    ("GET", "/v2/models/{name}/versions/{version}"): Entry(STATUS, 200),
    ("GET", "/v2/models/{name}/ready"): Entry(STATUS, 200),
    ("GET", "/v2/models/{name}/versions/{version}/ready"): Entry(STATUS, 200),
    ("POST", "/v2/models/{name}/infer"): Entry(PREDICT, 200, body=_infer),
    ("POST", "/v2/models/{name}/versions/{version}/infer"): Entry(PREDICT, 200, body=_infer),
}


def route_id(route: Route) -> str:
    return f"{route[0]} {route[1]}"


def entry(route: Route) -> Entry:
    found = ROUTES.get(route)
    if found is None:
        pytest.fail(f"{route_id(route)} has no entry in ROUTES (tests/api/test_auth_matrix.py): "
                    "add the scope it needs, how to call it and what each caller gets, or make "
                    "it public in app.api.auth.PUBLIC if it names no caller")
    return found


def url(template: str, values: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        return values[match[1]]

    return re.sub(r"\{([a-z_]+)(?::[a-z]+)?\}", fill, template)


def send(w: World, route: Route, authorization: str | None, fresh: bool = False,
         tail: str = "", values: dict[str, str] | None = None) -> httpx.Response:
    """The route called as its table entry says, with this Authorization header (None: none
    at all, not even the suite's default key). `fresh`: with the resources it uses up. `tail`:
    appended to the path; `values`: path parameters in place of the world's."""
    method, template = route
    spec = entry(route)
    values = {**w.params, **(spec.fresh(w) if fresh and spec.fresh else {}), **(values or {})}
    body = spec.body(w)
    request = w.http.build_request(method, url(template, values) + tail, json=body.json,
                                   files=body.files, params=body.params)
    if authorization is None:
        del request.headers["authorization"]
    else:
        request.headers["authorization"] = authorization
    response: httpx.Response = w.http.send(request, follow_redirects=False)
    return response


def assert_unauthorized(r: httpx.Response, route: Route) -> None:
    assert r.status_code == 401, (route_id(route), r.status_code, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == 401 and body["type"] == "/problems/unauthorized", body


def listed(r: httpx.Response) -> set[str]:
    """The ids (or, for models, the names) of a list's items."""
    return {item.get("id", item.get("name")) for item in r.json()["items"]}


def lacking(scopes: frozenset[str]) -> frozenset[str]:
    """The most a key may hold without any of `scopes` (admin would let anything through but
    operator routes, operator anything)."""
    return frozenset({"read", "write", "predict"}) - scopes


def route_values(w: World | None = None) -> dict[str, str]:
    return dict(w.params) if w else {
        "tenant": "t", "name": "linear", "version": "1", "label": "prod", "fmt": "png",
        "path": "common.js", "key_name": "k", "spec_id": "spec_x", "dataset_id": "ds_x",
        "job_id": "job_x", "array": "x"}


# --- the route table itself -------------------------------------------------------------------

def test_every_keyed_route_has_an_entry_and_no_entry_is_stale() -> None:
    routes = set(KEYED_ROUTES)
    assert set(ROUTES) - routes == set(), "entries for routes the app no longer has"
    assert routes - set(ROUTES) == set(), "routes without an entry in ROUTES"


def test_every_route_resolves_to_itself_and_declares_or_defaults_to_a_scope() -> None:
    """The route table authentication reads finds each route for its own URL, and what it
    needs is what ROUTES says: a route whose scope is not its method's default must declare
    it (`@requires`), so a new route cannot end up unprotected or mis-scoped by accident."""
    from app.api.route_access import RouteTable
    from app.auth.access import SCOPES, default_access, requires

    app = create_app()
    table = RouteTable(list(app.routes))
    for method, path in ALL_ROUTES:
        scope = {"type": "http", "method": method, "root_path": "",
                 "path": url(path, route_values())}
        found = table.find(scope)
        assert found.path == path, (method, path, found.path)
        assert found.access.scopes and found.access.scopes <= set(SCOPES), (method, path)
        if not is_public(path):
            assert found.access.scopes == entry((method, path)).scopes, (method, path)
            assert (found.access.rate is None) == (method in ("GET", "HEAD")), (method, path)
    # A route without a declaration needs its method's default: a write, never nothing.
    assert default_access("POST").scopes == WRITE and default_access("GET").scopes == READ
    assert callable(requires)


def test_public_routes_are_exactly_the_public_list() -> None:
    paths = {path for _method, path in PUBLIC_ROUTES}
    assert {p for p in paths if not p.startswith(PUBLIC_PREFIXES)} == set(PUBLIC)
    assert all(method == "GET" for method, _path in PUBLIC_ROUTES), PUBLIC_ROUTES


@pytest.mark.parametrize("route", PUBLIC_ROUTES, ids=route_id)
def test_public_routes_need_no_key(client: Any, route: Route) -> None:
    values = {"job_id": "job_x", "name": "linear", "path": "common.js"}
    request = client.build_request(route[0], url(route[1], values))
    del request.headers["authorization"]
    r = client.send(request, follow_redirects=False)
    assert r.status_code not in (401, 403), (route_id(route), r.text)


# --- the cases, over every keyed route --------------------------------------------------------

@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_no_key_is_401(world: World, route: Route) -> None:
    assert_unauthorized(send(world, route, None), route)


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_wrong_key_is_401(world: World, route: Route) -> None:
    real_id = world.admin_a.split("_")[1]
    for authorization in (
            f"Bearer kj_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}",  # unknown id
            f"Bearer kj_{real_id}_{secrets.token_urlsafe(32)}",  # a real id, another secret
            "Bearer not-a-key",
            "Bearer ",
            f"Basic {world.admin_a}"):  # the right key in the wrong scheme
        assert_unauthorized(send(world, route, authorization), route)


@pytest.fixture(scope="module")
def revoked_key(world: World) -> str:
    from app.auth import keys
    from app.core.db import session_scope

    raw = make_key(world.a, f"{world.a}-revoked", ["admin"])
    with session_scope() as s:
        keys.revoke(s, f"{world.a}-revoked", actor="tests")
    return raw


@pytest.fixture(scope="module")
def expired_key(world: World) -> str:
    """A key whose expiry is put in the past in the database (as time passing would)."""
    from sqlalchemy import update

    from app.auth.keys import key_table
    from app.core.db import session_scope
    from app.tables import ApiKey
    from app.tables.base import utcnow

    raw = make_key(world.a, f"{world.a}-expired", ["admin"], expires_in_days=30)
    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.name == f"{world.a}-expired")
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    key_table().invalidate()  # a direct write: the in-process key table does not know of it
    return raw


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_revoked_key_is_401(world: World, revoked_key: str, route: Route) -> None:
    assert_unauthorized(send(world, route, f"Bearer {revoked_key}"), route)


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_expired_key_is_401(world: World, expired_key: str, route: Route) -> None:
    r = send(world, route, f"Bearer {expired_key}")
    assert_unauthorized(r, route)
    assert "expired" in r.json()["detail"]


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_key_without_the_scope_is_403(world: World, route: Route) -> None:
    key = world.key(world.a, lacking(entry(route).scopes))
    r = send(world, route, f"Bearer {key}")
    assert r.status_code == 403, (route_id(route), r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == "/problems/forbidden"


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_right_key_gets_the_routes_answer(world: World, route: Route) -> None:
    """Each scope the route accepts, alone, is enough."""
    spec = entry(route)
    for scope in sorted(spec.scopes):
        r = send(world, route, f"Bearer {world.key(world.a, frozenset({scope}))}", fresh=True)
        assert r.status_code == spec.status, (route_id(route), scope, r.text)
        if spec.marker is not None:
            assert world.params[spec.marker] in listed(r), r.text


@pytest.mark.parametrize("route", KEYED_ROUTES, ids=route_id)
def test_another_tenants_key_never_reaches_a_resource(world: World, route: Route) -> None:
    spec = entry(route)
    for scope in sorted(spec.scopes):
        r = send(world, route, f"Bearer {world.key(world.b, frozenset({scope}))}", fresh=True)
        if spec.other == LIST:
            assert r.status_code == 200, (route_id(route), r.text)
            assert spec.marker is not None and world.params[spec.marker] not in listed(r), r.text
            continue
        assert r.status_code == spec.other, (route_id(route), scope, r.text)
        if spec.other == NOT_FOUND:
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["type"] == "/problems/not-found", r.text


OPERATOR_ROUTES = [r for r in KEYED_ROUTES if r in ROUTES and "operator" in ROUTES[r].scopes]


@pytest.mark.parametrize("route", OPERATOR_ROUTES, ids=route_id)
def test_an_admin_key_is_403_on_operator_routes(world: World, route: Route) -> None:
    r = send(world, route, f"Bearer {world.key(world.a, ADMIN)}")
    assert r.status_code == 403, (route_id(route), r.text)


# --- spellings that once got around a scope ----------------------------------------------------

CONTROL_TAILS = ("%0A", "%0D", "%00")


@pytest.mark.parametrize("route", ALL_ROUTES, ids=route_id)
def test_a_trailing_control_character_is_400_before_any_key(world: World, route: Route) -> None:
    """`$` matches before a final newline: `...:predict%0A` was predicted for a write key."""
    for tail in CONTROL_TAILS:
        keys: list[str | None] = [None]
        if not is_public(route[1]):
            keys += [f"Bearer {world.key(world.a, lacking(entry(route).scopes))}",
                     f"Bearer {world.key(world.a, frozenset(entry(route).scopes))}"]
        for authorization in keys:
            if is_public(route[1]):
                request = world.http.build_request(route[0], url(route[1], world.params) + tail)
                del request.headers["authorization"]
                r = world.http.send(request)
            else:
                r = send(world, route, authorization, tail=tail)
            assert r.status_code == 400, (route_id(route), tail, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["errors"][0]["pointer"] == "/path", r.text


VERBS = ("infer", "predict", "classify", "regress", "metadata", "ready", "versions", "labels",
         "serving", "download")


NAMED_ROUTES = [r for r in KEYED_ROUTES if "{label}" in r[1] or "{name}" in r[1]]


@pytest.mark.parametrize("route", NAMED_ROUTES, ids=route_id)
def test_a_label_or_model_named_like_a_verb_keeps_the_routes_scope(
        world: World, route: Route) -> None:
    """A predict key could PUT and DELETE `/labels/infer` (the path ended in `/infer`)."""
    from app.api.route_access import route_table

    key = world.key(world.a, lacking(entry(route).scopes))
    table = route_table(world.http.app)
    for verb in VERBS:
        values = {p: verb for p in ("label", "name") if "{" + p + "}" in route[1]}
        path = url(route[1], {**world.params, **values})
        found = table.find({"type": "http", "method": route[0], "root_path": "", "path": path})
        assert found.path == route[1], (route_id(route), verb, found.path)
        r = send(world, route, f"Bearer {key}", values=values)
        assert r.status_code == 403, (route_id(route), verb, r.status_code, r.text)


@pytest.mark.parametrize("verb", VERBS)
def test_a_label_cannot_be_named_like_a_verb(world: World, verb: str) -> None:
    r = send(world, ("PUT", "/v1/models/{name}/labels/{label}"),
             f"Bearer {world.key(world.a, WRITE)}", values={"label": verb})
    assert r.status_code == 422, (verb, r.text)
    assert r.json()["errors"][0]["pointer"] == "/path/label", r.text
