"""API keys: made, listed, revoked, and checked against a request's `Authorization` header.

A key is `kj_<id>_<secret>`: `id` (48 bits, public) finds the row, `secret` (256 bits) proves
it. Only HMAC-SHA256(pepper, key) is stored. A fast keyed hash is enough here: a slow one
(bcrypt, argon2) protects guessable passwords, and a 256-bit random secret cannot be guessed,
while a slow hash would cost every request milliseconds."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.auth import audit
from app.auth.access import SCOPES
from app.core.config import get_settings
from app.core.db import on_commit, session_scope
from app.core.errors import DomainError, FieldError, conflict, invalid, not_found
from app.core.storage import get_store
from app.tables import ApiKey
from app.tables.base import utcnow

KEY_PATTERN = re.compile(r"kj_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Every process re-reads the keys when the store's "keys" generation changes (a key made or
# revoked through this service), and at least this often (a key made on a host that does not
# share the artifact store).
RELOAD_S = 30.0
# last_used_at is written at most this often per key per process (not a write per request).
TOUCH_S = 60.0
# Keys remembered as verified per process (only valid ones are; a reload forgets them all).
MAX_VERIFIED = 10_000
GENERATION = "keys"
# The pepper of homes whose keys were made before a pepper was generated (their hashes use it).
BUILT_IN_PEPPER = "keras-jobs api key v1"
# Where a pepper generated on first start is kept, in the home every process shares.
PEPPER_FILE = "key-pepper"
log = logging.getLogger("keras_jobs")
_home_peppers: dict[Path, bytes] = {}


def _pepper() -> bytes:
    """KJ_KEY_PEPPER if set; else the home's pepper file (made on first use)."""
    settings = get_settings()
    if settings.key_pepper:
        return settings.key_pepper.encode()
    pepper = _home_peppers.get(settings.home)
    if pepper is None:
        pepper = _home_peppers[settings.home] = _home_pepper(settings.home)
    return pepper


def _home_pepper(home: Path) -> bytes:
    """The pepper kept in `home`, generated (0600) when the home has none and no key yet. A
    home whose keys were hashed with the built-in pepper keeps it, or they would stop working."""
    path = home / PEPPER_FILE
    if not path.exists():
        with session_scope() as s:
            has_keys = s.scalar(select(ApiKey.id).limit(1)) is not None
        if has_keys:
            log.warning("API keys are hashed with the built-in pepper (KJ_KEY_PEPPER is unset "
                        "and %s does not exist), so a database dump can confirm a guessed key; "
                        "set KJ_KEY_PEPPER (openssl rand -hex 32) and make the keys again", path)
            return BUILT_IN_PEPPER.encode()
        home.mkdir(parents=True, exist_ok=True)
        draft = home / f".{PEPPER_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(draft, path)  # atomic: of processes starting together, one pepper wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()


def key_hash(raw: str) -> str:
    return hmac.new(_pepper(), raw.encode(), hashlib.sha256).hexdigest()


def check_name(name: str, pointer: str = "/name") -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise invalid("A key name is 1-100 letters, digits, '.', '_' or '-', starting with a "
                      "letter or digit.", [FieldError(pointer, f"'{name[:120]}' is not one")])


def check_tenant(tenant: str, pointer: str = "/tenant") -> None:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise invalid("A tenant is 1-63 lower-case letters, digits, '_' or '-', starting with "
                      "a letter or digit.", [FieldError(pointer, f"'{tenant[:120]}' is not one")])


def check_scopes(scopes: list[str], pointer: str = "/scopes") -> list[str]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise invalid(f"Scopes are one or more of {', '.join(SCOPES)}.",
                      [FieldError(pointer, f"unknown: {', '.join(unknown)}" if unknown
                                  else "at least one scope is needed")])
    return [s for s in SCOPES if s in scopes]  # canonical order, no duplicates


def create(session: Session, *, tenant: str, name: str, scopes: list[str],
           expires_in_days: float | None, created_by: str) -> tuple[ApiKey, str]:
    """A new key (row added to `session`, recorded in the audit log as `created_by`'s) and the
    key itself, which is never stored."""
    check_tenant(tenant)
    check_name(name)
    scopes = check_scopes(scopes)
    if expires_in_days is not None and not 0 < expires_in_days <= 36500:
        raise invalid("A key expires 0 to 36,500 days from now.",
                      [FieldError("/expires_in_days", f"{expires_in_days} is not in (0, 36500]")])
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise conflict(f"A key named '{name}' exists already; key names are unique (revoked "
                       "keys keep theirs).")
    key_id = secrets.token_hex(6)
    raw = f"kj_{key_id}_{secrets.token_urlsafe(32)}"
    expires = None if expires_in_days is None else utcnow() + timedelta(days=expires_in_days)
    row = ApiKey(id=key_id, name=name, tenant=tenant, scopes=scopes, hash=key_hash(raw),
                 expires_at=expires, created_by=created_by)
    session.add(row)
    session.flush()
    # Under the key's tenant (an operator may make keys for any tenant).
    audit.record(session, tenant=tenant, actor=created_by, action="key.create",
                 target=f"key/{name}", scopes=scopes)
    on_commit(session, _changed)
    return row, raw


def list_(session: Session, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.name)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def find(session: Session, name: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.name == name)).first()


def revoke(session: Session, name: str, *, actor: str) -> ApiKey:
    """Revoke the key (recorded in the audit log as `actor`'s, under the key's tenant)."""
    row = find(session, name)
    if row is None:
        raise not_found("API key", name)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        on_commit(session, _changed)
    audit.record(session, tenant=row.tenant, actor=actor, action="key.revoke",
                 target=f"key/{name}")
    return row


def _changed() -> None:
    get_store().bump_generation(GENERATION)
    KEYS.invalidate()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    tenant: str
    scopes: frozenset[str]
    hash: str
    expires_at: datetime | None
    revoked_at: datetime | None


def unauthorized(detail: str, error: str | None = "invalid_token") -> DomainError:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return DomainError(401, "Unauthorized", detail, type="/problems/unauthorized",
                       headers={"WWW-Authenticate": challenge})


class KeyTable:
    """Every key, in memory: a request is checked with no database query. Reloaded when the
    store's "keys" generation changes or RELOAD_S has passed (`stale()` says when; `load()`
    queries, so async callers run it on a thread)."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyInfo] = {}
        self._any = False
        self._generation: tuple[int, int] | None = None
        self._loaded_at = 0.0
        self._touched: dict[str, float] = {}
        self._verified: dict[str, KeyInfo] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._generation = None

    def stale(self) -> bool:
        return (self._generation != get_store().generation(GENERATION)
                or time.monotonic() - self._loaded_at > RELOAD_S)

    def load(self) -> None:
        generation = get_store().generation(GENERATION)
        with session_scope() as s:
            rows = list(s.scalars(select(ApiKey)))
        keys = {r.id: KeyInfo(r.id, r.name, r.tenant, frozenset(r.scopes), r.hash,
                              r.expires_at, r.revoked_at) for r in rows}
        with self._lock:
            self._keys, self._any, self._verified = keys, bool(rows), {}
            self._generation, self._loaded_at = generation, time.monotonic()

    @property
    def any_key(self) -> bool:
        """Whether a key was ever made (revoked ones count: revoking every key does not open
        the service again)."""
        return self._any

    def check(self, raw: str) -> KeyInfo:
        """The key `raw` names, if it is known, not revoked and not expired; else a 401."""
        info = self._verified.get(raw)
        if info is None:
            info = self._verify(raw)
        if info.revoked_at is not None:
            raise unauthorized(f"The API key '{info.name}' was revoked; ask an admin for a "
                               "new one.")
        if info.expires_at is not None and info.expires_at <= utcnow():
            raise unauthorized(f"The API key '{info.name}' expired at "
                               f"{info.expires_at.isoformat()}; ask an admin for a new one.")
        return info

    def _verify(self, raw: str) -> KeyInfo:
        """The key's row, by its id and a constant-time comparison of hashes; remembered (until
        the next reload) so the next request with it skips the HMAC."""
        match = KEY_PATTERN.fullmatch(raw)
        info = self._keys.get(match[1]) if match else None
        if info is None or not hmac.compare_digest(info.hash, key_hash(raw)):
            raise unauthorized("The API key is not valid. Send `Authorization: Bearer <key>` "
                               "with a key made by `keras-jobs keys create` or POST /v1/keys.")
        if len(self._verified) < MAX_VERIFIED:
            self._verified[raw] = info
        return info

    def due_touch(self, key_id: str) -> bool:
        """Whether this process should record the key's use now (at most once a TOUCH_S)."""
        now = time.monotonic()
        if now - self._touched.get(key_id, -TOUCH_S) < TOUCH_S:
            return False
        self._touched[key_id] = now
        return True


def touch(key_id: str) -> None:
    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


KEYS = KeyTable()
