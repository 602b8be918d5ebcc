"""JSON limits: nesting depth measured without parsing, and values the database cannot store."""

from __future__ import annotations

import json
import time

import pytest

from app.core.errors import DomainError
from app.core.json_limits import check_depth, check_storable, too_deep, unstorable


@pytest.mark.parametrize(("text", "limit", "pointer"), [
    ('{"a": [[1]]}', 3, None),
    ('{"a": [[1]]}', 2, "/a/0"),
    ('{"a": 1, "b/c": [0, 1, {"x": [[[]]]}]}', 4, "/b~1c/2/x/0"),
    ('["[[[[[[", {"k": "{{{{"}]', 2, None),  # brackets inside strings do not count
    ('["\\\\", [[[[[', 3, "/1/0/0"),  # an escaped backslash ends before the quote
    ('{"\\"q\\"": [[[]]]}', 2, '/"q"/0'),
    ("[" * 100_000 + "]" * 100_000, 64, "/0" * 64),  # the 65th array, inside 64
    ("1", 0, None),
])
def test_too_deep(text: str, limit: int, pointer: str | None) -> None:
    assert too_deep(text, limit) == pointer
    assert too_deep(text.encode(), limit) == pointer


def test_too_deep_is_linear_and_fast_on_a_large_body() -> None:
    body = json.dumps({"layers": [{"type": "Dense", "units": i, "w": [[0.5] * 8] * 8}
                                  for i in range(2000)]}).encode()
    start = time.perf_counter()
    assert too_deep(body) is None
    assert time.perf_counter() - start < 0.5  # about 10 ms for ~600 kB


def test_check_depth_points_into_the_field() -> None:
    with pytest.raises(DomainError) as info:
        check_depth("[" * 70, "/keras_config")
    assert info.value.status == 422
    assert info.value.errors[0].pointer == "/keras_config" + "/0" * 64


@pytest.mark.parametrize(("value", "pointer"), [
    ({"a": [1, 2.5, "x", None, True]}, None),
    ({"a": [1, float("nan")]}, "/a/1"),
    ({"lr": float("inf")}, "/lr"),
    ([{"x": float("-inf")}], "/0/x"),
    ({"name": "a\x00b"}, "/name"),
    ({"a\x00": 1}, "/a\x00"),
    ({"first": float("nan"), "second": "\x00"}, "/first"),  # document order
])
def test_unstorable(value: object, pointer: str | None) -> None:
    found = unstorable(value)
    assert (found.pointer if found else None) == pointer
    if pointer is not None:
        with pytest.raises(DomainError) as info:
            check_storable(value)
        assert info.value.status == 422 and info.value.errors[0].pointer == pointer


def test_unstorable_with_a_magnitude_bound() -> None:
    assert unstorable({"lr": 1e308}) is None
    found = unstorable({"lr": 1e308, "seed": 2**64, "flag": True}, max_abs=3.4e38)
    assert found is not None and found.pointer == "/lr"
    assert unstorable({"big": 10**40}, max_abs=3.4e38) is not None  # ints too
    assert unstorable({"flag": True, "n": 2**64}, max_abs=3.4e38) is None
