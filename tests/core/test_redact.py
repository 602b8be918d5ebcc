"""Secrets are masked in text that leaves the process: URL passwords, bearer tokens, API keys,
and the pieces of a configured password an error message may quote; log records too."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator

import pytest

from app.auth.keys import KEY_PATTERN
from app.core.logs import JsonFormatter, RedactSecrets, configure_logging, uvicorn_log_config
from app.core.redact import MASK, redact, secrets_in_urls


def a_key() -> str:
    """A key the way app.auth.keys makes them (checked against its pattern)."""
    key = f"kj_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    assert KEY_PATTERN.fullmatch(key)
    return key


@pytest.mark.parametrize(("text", "expected"), [
    ("postgresql+psycopg://kj:pa55word@postgres:5432/kj",
     "postgresql+psycopg://kj:***@postgres:5432/kj"),
    ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
    # an unencoded '@' in the password: nothing of it stays
    ("redis://:p@ss@word@redis:6379/0", "redis://:***@redis:6379/0"),
    ("amqp://u:p%2Fw@h//", "amqp://u:***@h//"),
    ("cannot connect to 'redis://:abc@r:1/0' (nor to \"redis://u:def@s/0\")",
     "cannot connect to 'redis://:***@r:1/0' (nor to \"redis://u:***@s/0\")"),
    ("a=redis://:x@h/0 b=postgresql://u:y@h/db", "a=redis://:***@h/0 b=postgresql://u:***@h/db"),
])
def test_url_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "redis://redis:6379/0",
    "postgresql://kj@postgres/kj",  # a user, no password
    "http://127.0.0.1:8000/v1/jobs?limit=5",
    "see https://sqlalche.me/e/21/e3q8",
    "plain words, 3 numbers: 1, 2, 3",
])
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_bearer_tokens() -> None:
    assert redact("Authorization: Bearer abc.DEF-123_~+/==") == "Authorization: Bearer ***"
    assert redact("authorization: bearer abc") == "authorization: bearer ***"
    assert redact("{'authorization': 'Bearer tok'}") == "{'authorization': 'Bearer ***'}"


def test_api_keys_keep_only_their_id() -> None:
    key = a_key()
    key_id = key[: len("kj_") + 12]
    assert redact(f"key {key} refused") == f"key {key_id}_{MASK} refused"
    assert redact(f"Bearer {key}") == f"Bearer {MASK}"
    assert redact(f"x-api-key={key}") == f"x-api-key={key_id}_{MASK}"
    assert redact(f"truncated {key[:30]}") == f"truncated {key_id}_{MASK}"
    assert redact("kj_ prefix alone, kj_123 too") == "kj_ prefix alone, kj_123 too"


def test_configured_secrets_are_masked_wherever_they_appear() -> None:
    assert redact("as 'hunter22' and hunter22x", ["hunter22", "hunter22x"]) == "as '***' and ***"
    assert redact("nothing here", ["hunter22"]) == "nothing here"
    assert redact("empty secret", [""]) == "empty secret"


def test_secrets_in_urls_include_the_pieces_a_parser_quotes() -> None:
    found = secrets_in_urls("redis://:br0ker/s3cret?x@127.0.0.1:1/0",
                            "postgresql://kj:p%40ss%2Fw0rd@db/kj", "redis://redis:6379/0")
    assert "br0ker/s3cret?x" in found
    assert {"br0ker", "s3cret"} <= set(found)
    assert "x" not in found  # too short to mask on its own
    assert {"p%40ss%2Fw0rd", "p@ss/w0rd", "w0rd"} <= set(found)
    assert found == sorted(found, key=len, reverse=True)
    assert secrets_in_urls("sqlite:////data/kj.db", "sqla+sqlite:////data/broker.db") == []


def test_a_parser_error_quoting_a_password_piece_is_masked() -> None:
    """What urllib says about a password holding an unencoded '/', as kombu reports it."""
    from urllib.parse import urlsplit

    url = "redis://:br0ker/s3cret@127.0.0.1:1/0"
    with pytest.raises(ValueError) as err:
        urlsplit(url).port  # noqa: B018 - the property raises
    assert "br0ker" in str(err.value)
    assert "br0ker" not in redact(str(err.value), secrets_in_urls(url))


# ---------------------------------------------------------------------------------------------
# The logging filter
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.redact")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_log_records_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    key = a_key()
    logger.info("broker %s down", "redis://:s3cret@redis:6379/0")
    logger.info("request with Bearer %s", key)
    logger.warning("connecting to postgresql://kj:pw123@db/kj failed")
    logger.info("%d jobs, %s", 3, "nothing secret")
    lines = stream.getvalue().splitlines()
    assert lines == ["broker redis://:***@redis:6379/0 down", "request with Bearer ***",
                         "connecting to postgresql://kj:***@db/kj failed", "3 jobs, nothing secret"]
    assert "s3cret" not in stream.getvalue() and key not in stream.getvalue()


def test_a_record_without_markers_is_left_alone() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s rows", ("12",), None)
    assert RedactSecrets().filter(record)
    assert record.msg == "%s rows" and record.args == ("12",)
    # A broken format passes through untouched: the handler reports it as it always did.
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "%d of redis://:pw@r/0", ("x",),
                            None)
    assert RedactSecrets().filter(bad)
    assert bad.args == ("x",)


def test_json_lines_are_redacted_too() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "to %s", ("redis://:pw@r/0",),
                               None)
    assert RedactSecrets().filter(record)
    assert json.loads(JsonFormatter().format(record))["message"] == "to redis://:***@r/0"


def test_configure_logging_installs_the_filter() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        configure_logging("INFO", "text")
        assert len(root.handlers) == 1
        assert any(isinstance(f, RedactSecrets) for f in root.handlers[0].filters)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_uvicorn_processes_get_the_filter_too() -> None:
    """`serve --workers N` configures fresh interpreters from this dict."""
    config = uvicorn_log_config("INFO", "json")
    names = config["handlers"]["default"]["filters"]
    assert names and all(config["filters"][n]["()"] == "app.core.logs.RedactSecrets"
                         for n in names)
