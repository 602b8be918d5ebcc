"""Which scope a route needs, and when the service is open (no key needed).

A route declares what it needs with `@requires(...)` beside its decorator; a route that
declares nothing needs `read` (GET, HEAD) or `write` (any other method). The middleware finds
the declaration through the route the request matches in the app's own route table
(app.api.route_access), never from how the path is spelled.

Scopes: `read`, `write`, `predict` (`:predict`, `/infer`; model status and metadata may be read
with it too), `admin` (everything within its own tenant, its keys, quotas and audit log
included) and `operator` (an admin of every tenant: other tenants' keys, quotas and audit log,
/metrics). Routes that name no caller (health, /docs, the dashboard's static pages) are
public."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from app.core.config import get_settings

SCOPES = ("read", "write", "predict", "admin", "operator")
ALL_SCOPES = frozenset(SCOPES)
READ_METHODS = ("GET", "HEAD")
# The local tenant: every row's owner while the service runs open.
LOCAL_TENANT = "local"

RateKind = Literal["predict", "write"]


@dataclass(frozen=True)
class Access:
    """What a route needs: any one of `scopes`, and the rate limit its requests count against
    (None: not limited, as reads are)."""

    scopes: frozenset[str]
    rate: RateKind | None

    def allows(self, held: frozenset[str]) -> bool:
        """`operator` lets everything through; `admin` everything but operator routes (whose
        handlers, like every handler, act within the caller's tenant)."""
        if "operator" in held:
            return True
        if "admin" in held:
            return "operator" not in self.scopes
        return bool(self.scopes & held)


READ = Access(frozenset({"read"}), None)
WRITE = Access(frozenset({"write"}), "write")
PREDICT = Access(frozenset({"predict"}), "predict")
# TF Serving's model status and metadata, OIP's model metadata and readiness: what a client
# that only predicts asks before it does.
MODEL_STATUS = Access(frozenset({"read", "predict"}), None)
ADMIN_READ = Access(frozenset({"admin"}), None)
ADMIN_WRITE = Access(frozenset({"admin"}), "write")
OPERATOR_READ = Access(frozenset({"operator"}), None)
OPERATOR_WRITE = Access(frozenset({"operator"}), "write")

# The attribute `requires` sets on a route's endpoint.
ACCESS_ATTR = "__kj_access__"
F = TypeVar("F", bound=Callable[..., object])


def requires(access: Access) -> Callable[[F], F]:
    """Declares what the route needs, under its `@router.<method>(...)` decorator."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, ACCESS_ATTR, access)
        return endpoint

    return mark


def default_access(method: str) -> Access:
    """A route that declares nothing (and a path no route matches): reads need `read`, every
    other method `write`."""
    return READ if method in READ_METHODS else WRITE


def declared_access(endpoint: object) -> Access | None:
    access = getattr(endpoint, ACCESS_ATTR, None)
    return access if isinstance(access, Access) else None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_without_keys(connection_host: str | None) -> bool:
    """Whether KJ_AUTH lets a request in without a key, before looking at keys: "off" always;
    "auto" while bound to a loopback address (the address `serve` bound to, else the local
    address this connection arrived on)."""
    settings = get_settings()
    if settings.auth == "off":
        return True
    if settings.auth == "required":
        return False
    return is_loopback(settings.bind_host or connection_host)


def refuses_to_start(host: str, any_key: bool) -> str | None:
    """Why `serve --host host` must not start, or None: on a network address, KJ_AUTH=off would
    let anyone in, and KJ_AUTH=auto with no key yet would let nobody in (KJ_AUTH=required
    starts anyway: a deployment makes its first key after start-up)."""
    settings = get_settings()
    if is_loopback(host) or settings.auth == "required" or (settings.auth == "auto" and any_key):
        return None
    why = ("with KJ_AUTH=off anyone who can reach it could use it" if settings.auth == "off"
           else "no API key exists yet, so it would accept no request")
    return (f"keras-jobs: refusing to serve on {host}: {why}.\n"
            "Create a key first (its last line is the key; send it as `Authorization: Bearer "
            "<key>`):\n"
            "  keras-jobs keys create --tenant <tenant> --name <name> --scopes "
            "read,write,predict\n"
            "and keep KJ_AUTH=auto (or set KJ_AUTH=required), or serve on 127.0.0.1.")
