"""Which scope a route needs, and when the service is open (no key needed).

Scopes: `read` (GET), `write` (every other method), `predict` (`:predict`, `/infer`; model
status and metadata may be read with it too), `admin` (keys, quotas, audit, /metrics; an admin
key may do everything). Routes that name no caller (health, /docs, the dashboard's static pages)
are public."""

from __future__ import annotations

import ipaddress

from app.core.config import get_settings

ALL_SCOPES = frozenset({"read", "write", "predict", "admin"})
ADMIN_PREFIXES = ("/v1/keys", "/v1/audit", "/v1/tenants", "/metrics")
PREDICT_SUFFIXES = (":predict", ":classify", ":regress", "/infer")
READ_METHODS = ("GET", "HEAD")
# The local tenant: every row's owner while the service runs open.
LOCAL_TENANT = "local"


def needed_scopes(method: str, path: str) -> frozenset[str]:
    """Any one of these lets a request through (`admin` always does)."""
    if path.startswith(ADMIN_PREFIXES):
        return frozenset({"admin"})
    if path.endswith(PREDICT_SUFFIXES):
        return frozenset({"predict"})
    if method in READ_METHODS:
        if _model_status(path):
            return frozenset({"read", "predict"})
        return frozenset({"read"})
    return frozenset({"write"})


def _model_status(path: str) -> bool:
    """TF Serving's model status and metadata, and OIP's model metadata and readiness: what a
    client that only predicts asks before it does."""
    return path.startswith("/v2/models/") or (
        path.startswith("/v1/models/") and not path.endswith(("/download", "/serving"))
        and ("/metadata" in path or path.count("/") <= 5))


def rate_kind(method: str, path: str) -> str | None:
    """The rate limit a request counts against: predict, writes, or none (reads)."""
    if path.endswith(PREDICT_SUFFIXES):
        return "predict"
    return None if method in READ_METHODS else "write"


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
