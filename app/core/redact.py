"""Masking secrets in text that leaves the process: log lines, error strings, /readyz.

Three shapes are recognised wherever they appear: the password of a URL
(`scheme://user:PASSWORD@host`), the token after `Bearer`, and API keys
(`kj_<id>_<secret>`: the id stays, it names the key without proving anything). `secrets_in_urls`
adds the passwords of the configured URLs as plain strings, for messages that quote a piece of
one without the URL around it (a parser complaining about the "port" of a URL whose password
holds an unencoded `/`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

# The password runs from the ':' after the user to the LAST '@' of the word: an unencoded '@'
# in a password must not leave its tail visible.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*:)(?P<secret>[^\s'\"]+)(?=@[^@\s'\"]*)"
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Any length after the id: a truncated or mistyped key is as secret as a whole one.
_API_KEY = re.compile(r"(?P<head>kj_[0-9a-f]{12}_)[A-Za-z0-9_-]+")
# What a message must contain for any pattern above to match (the cheap test before them).
MARKERS = ("://", "earer", "EARER", "kj_")
# Pieces of a password shorter than this are not masked on their own: masking every "0" or
# "db" in a message would garble it more than the piece reveals.
_MIN_PIECE = 4


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL passwords, bearer tokens, API keys and every occurrence of
    `secrets` replaced by `***`."""
    if any(marker in text for marker in MARKERS):
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)
        text = _BEARER.sub(rf"\g<head>{MASK}", text)
        text = _API_KEY.sub(rf"\g<head>{MASK}", text)
    for secret in sorted(set(secrets), key=len, reverse=True):  # longest first: no tail left
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def secrets_in_urls(*urls: str) -> list[str]:
    """The passwords written in these URLs, encoded and decoded, and the pieces an URL parser
    cuts an unencoded one into (at / ? # @ : [ ]), which its error messages may quote."""
    out: set[str] = set()
    for url in urls:
        match = _URL_PASSWORD.search(url)
        if match is None:
            continue
        password = match.group("secret")
        for form in (password, unquote(password)):
            out.add(form)
            out.update(p for p in re.split(r"[/?#@:\[\]]", form) if len(p) >= _MIN_PIECE)
    return sorted(out, key=len, reverse=True)
