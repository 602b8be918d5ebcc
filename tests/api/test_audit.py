"""GET /v1/audit: who (the key's name) created, deleted or cancelled what, moved a label, made or
revoked a key or set a quota, when, and in which request; for admins only, newest first."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from tests.helpers import SEED_SPEC, assert_problem, make_key, npz_bytes, two_classes


def _changing_routes(app: Any) -> set[str]:
    """Every route that changes something: not a read, not a prediction."""
    from fastapi.routing import iter_route_contexts

    return {f"{method} {route.path}" for route in iter_route_contexts(app.routes)
            for method in (route.methods or set()) - {"GET", "HEAD"}
            if not str(route.path).endswith((":predict", ":classify", ":regress", "/infer"))}


def test_every_change_is_in_the_audit_log_with_who_when_and_the_request(
        client: Any, keras_file: bytes) -> None:
    tenant = f"audit-{secrets.token_hex(4)}"
    key_name = f"{tenant}-ops"
    # operator: quotas are set by the operator (an admin key manages the rest of its tenant).
    key = make_key(tenant, key_name, ["read", "write", "operator"])
    run = secrets.token_hex(4)
    done: list[tuple[str, str, str, str]] = []  # (route, action, target, request id)

    def call(route: str, action: str, url: str, target: str | None = None,
             **kwargs: Any) -> Any:
        """Send as the tenant's key with an X-Request-ID of its own; expect a 2xx."""
        rid = f"audit-{run}-{len(done)}"
        method, _ = route.split(" ", 1)
        r = client.request(method, url, headers={"Authorization": f"Bearer {key}",
                                                 "X-Request-ID": rid}, **kwargs)
        assert r.is_success, r.text
        answer = r.json() if r.content else None
        done.append((route, action, target if target is not None else
                     _target(action, answer), rid))
        return answer

    # Its jobs never start (a worker of the session may be up): the cancel finds it queued.
    call("PUT /v1/tenants/{tenant}/quotas", "quota.set", f"/v1/tenants/{tenant}/quotas",
         f"tenant/{tenant}", json={"max_running_jobs": 0})
    spec = call("POST /v1/specs", "spec.create", "/v1/specs", json=SEED_SPEC)
    x, y = two_classes(seed=9, n=20)
    files = {"file": ("a.npz", npz_bytes(x=x, y=y))}
    kept = call("POST /v1/datasets", "dataset.create", "/v1/datasets", files=files)
    gone = call("POST /v1/datasets", "dataset.create", "/v1/datasets", files=files)
    call("DELETE /v1/datasets/{dataset_id}", "dataset.delete", f"/v1/datasets/{gone['id']}",
         f"dataset/{gone['id']}")
    job = call("POST /v1/jobs", "job.create", "/v1/jobs", json={
        "type": "fit", "spec_id": spec["id"], "dataset_id": kept["id"], "x": "x", "y": "y",
        "epochs": 1, "model_name": "audited"})
    call("POST /v1/jobs/{job_id}:cancel", "job.cancel", f"/v1/jobs/{job['id']}:cancel")
    call("POST /v1/models/{name}/versions", "model_version.create", "/v1/models/audited/versions",
         "model/audited/1", files={"file": ("m.keras", keras_file)})
    call("PUT /v1/models/{name}/labels/{label}", "label.set",
         "/v1/models/audited/labels/prod", "model/audited/labels/prod", json={"version": 1})
    call("PUT /v1/models/{name}/serving", "serving.set", "/v1/models/audited/serving",
         "model/audited/serving", json={"max_batch_size": 8})
    call("DELETE /v1/models/{name}/labels/{label}", "label.delete",
         "/v1/models/audited/labels/prod", "model/audited/labels/prod")
    call("DELETE /v1/models/{name}/versions/{version}", "model_version.delete",
         "/v1/models/audited/versions/1", "model/audited/1")
    made = call("POST /v1/keys", "key.create", "/v1/keys", f"key/{tenant}-reader",
                json={"name": f"{tenant}-reader", "scopes": ["read"]})
    call("DELETE /v1/keys/{name}", "key.revoke", f"/v1/keys/{made['name']}", f"key/{made['name']}")

    # Every route that changes something was exercised (a new one must be added here, and
    # record what it does).
    assert {route for route, *_ in done} == _changing_routes(client.app)

    # Read with the suite's admin key (another tenant's): the tenant's events, newest first;
    # the oldest is the tenant's key, made as the CLI makes one (recorded by keys.create).
    page = client.get("/v1/audit", params={"tenant": tenant, "limit": 500}).json()
    *events, made_here = page["items"]
    assert page["total"] == len(done) + 1 == len(events) + 1
    assert (made_here["action"], made_here["target"], made_here["actor"]) == \
        ("key.create", f"key/{key_name}", "tests")
    assert [(e["action"], e["target"], e["request_id"]) for e in events] == \
        [(action, target, rid) for _route, action, target, rid in reversed(done)]
    assert {e["actor"] for e in events} == {key_name}
    assert {e["tenant"] for e in page["items"]} == {tenant}
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times, reverse=True)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True)
    by_action = {e["action"]: e for e in events}
    assert by_action["job.create"]["detail"] == {"type": "fit"}
    assert by_action["label.set"]["detail"] == {"version": 1}
    assert by_action["key.create"]["detail"] == {"scopes": ["read"]}
    assert by_action["quota.set"]["detail"]["max_running_jobs"] == 0
    assert by_action["dataset.create"]["detail"]["size_bytes"] > 0

    # Filtered by action, and paged.
    cancels = client.get("/v1/audit", params={"tenant": tenant, "action": "job.cancel"}).json()
    assert [e["target"] for e in cancels["items"]] == [f"job/{job['id']}"]
    second = client.get("/v1/audit", params={"tenant": tenant, "limit": 1, "offset": 1}).json()
    assert second["items"] == [events[1]] and second["total"] == len(done) + 1


def _target(action: str, answer: Any) -> str:
    kind = action.split(".")[0]
    return f"{kind}/{answer['id']}"


def test_only_admins_read_the_audit_log(client: Any) -> None:
    tenant = f"audit-{secrets.token_hex(4)}"
    for scopes in (["read"], ["read", "write", "predict"]):
        key = make_key(tenant, f"{tenant}-{'-'.join(scopes)}", scopes)
        r = client.get("/v1/audit", headers={"Authorization": f"Bearer {key}"})
        body = assert_problem(r, 403)
        assert "admin" in body["detail"]
    r = client.get("/v1/audit")
    assert r.status_code == 200, r.text


def test_an_admin_change_to_another_tenant_is_recorded_under_that_tenant(client: Any) -> None:
    """The suite's operator (tenant "local") makes a key for, and sets a quota of, another tenant:
    an admin reading that tenant's log finds both, by the admin key's name."""
    tenant = f"audit-{secrets.token_hex(4)}"
    r = client.post("/v1/keys", json={"name": f"{tenant}-made", "tenant": tenant})
    assert r.status_code == 201, r.text
    assert client.put(f"/v1/tenants/{tenant}/quotas", json={"max_queued_jobs": 3}).is_success
    assert client.delete(f"/v1/keys/{tenant}-made").status_code == 200
    events = client.get("/v1/audit", params={"tenant": tenant}).json()["items"]
    assert [(e["action"], e["target"], e["actor"]) for e in events] == [
        ("key.revoke", f"key/{tenant}-made", "suite-admin"),
        ("quota.set", f"tenant/{tenant}", "suite-admin"),
        ("key.create", f"key/{tenant}-made", "suite-admin")]
    assert all(e["request_id"] for e in events)  # made up by the server when not sent


def test_nothing_refused_is_recorded(client: Any) -> None:
    """A change that fails (here: a dataset that cannot be read) leaves no audit event."""
    tenant = f"audit-{secrets.token_hex(4)}"
    key = make_key(tenant, f"{tenant}-w", ["read", "write"])
    r = client.post("/v1/datasets", files={"file": ("bad.npz", b"not an archive")},
                    headers={"Authorization": f"Bearer {key}"})
    assert 400 <= r.status_code < 500, r.text
    r = client.post("/v1/jobs", json={"type": "fit", "spec_id": "spec_missing",
                                      "dataset_id": "ds_missing", "epochs": 1},
                    headers={"Authorization": f"Bearer {key}"})
    assert r.status_code in (404, 422), r.text
    # Only the key it was sent with is recorded.
    events = client.get("/v1/audit", params={"tenant": tenant}).json()["items"]
    assert [(e["action"], e["target"]) for e in events] == [("key.create", f"key/{tenant}-w")]

