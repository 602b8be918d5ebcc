"""Commands shown in the documentation and the answers shown after them: a block's lines cut
into steps at its `# →` lines, run as one bash script, and each step's output held to the
answer shown.

The expected lines are JSON with `…` in it: a `…` member of an object stands for the keys not
shown (without one, the keys must be exactly those shown), a `…` element of an array for any
number of elements, `"ds_…"` for any string that starts that way, `0.97…` for a number whose
decimals begin 0.97, a bare `…` for any value. A number shown without `…` must equal the
answer to the decimals shown."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

ELLIPSIS = "…"
MARK = "@@doc-step-{}@@"


# --- commands and the answers after them ------------------------------------------------------

@dataclass
class Step:
    commands: str  # the block's lines up to this expectation (comments kept: bash skips them)
    expected: str  # the `# →` text, continuation lines joined


def steps(lines: list[str]) -> tuple[list[Step], str]:
    """The commands and the expectation after each; and the commands after the last one.
    An expectation is a `# → ` line and the `#   ` lines right after it."""
    found: list[Step] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("# → "):
            pending.append(lines[i])
            i += 1
            continue
        expected = [lines[i].removeprefix("# → ").strip()]
        i += 1
        while i < len(lines) and re.match(r"#\s{2,}\S", lines[i]):
            expected.append(lines[i][1:].strip())
            i += 1
        found.append(Step("\n".join(pending), " ".join(expected)))
        pending = []
    return found, "\n".join(pending)


def script(found: list[Step], rest: str, port: int, prelude: str = "set -e") -> str:
    """One bash script: `prelude`, every step's commands, then a marker line, so the output can
    be cut into each step's. The documented port becomes the test server's."""
    parts = [prelude]
    for i, step in enumerate(found):
        parts += [step.commands, f"printf '\\n{MARK.format(i)}\\n'"]
    parts.append(rest)
    return "\n".join(parts).replace("localhost:8000", f"127.0.0.1:{port}") + "\n"


def outputs(stdout: str, count: int) -> list[str]:
    """The output of each of `count` steps (and what came after the last), cut at the markers."""
    parts = re.split(r"\n?" + MARK.format(r"\d+") + r"\n", stdout)
    assert len(parts) == count + 1, stdout
    return [part.strip() for part in parts]


# --- the tolerant matcher ----------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?…?)
  | (?P<ell>…)
  | (?P<word>true|false|null|NaN|-?Infinity)
  | (?P<punct>[{}\[\]:,])
)""", re.X)


class Any_:
    def __repr__(self) -> str:
        return "…"


ANY = Any_()


@dataclass
class Obj:
    members: dict[str, Any]
    open: bool


@dataclass
class Str:
    pattern: str


@dataclass
class Num:
    text: str


def parse_pattern(text: str) -> Any:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"cannot read the expected output at {text[pos:pos + 30]!r}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    value, end = _value(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"trailing text in the expected output: {tokens[end:]}")
    return value


def _value(tokens: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    kind, tok = tokens[i]
    if kind == "ell":
        return ANY, i + 1
    if kind == "str":
        return Str(json.loads(tok)), i + 1
    if kind == "num":
        return Num(tok), i + 1
    if kind == "word":
        return {"true": True, "false": False, "null": None, "NaN": math.nan,
                "Infinity": math.inf, "-Infinity": -math.inf}[tok], i + 1
    if tok == "[":
        items: list[Any] = []
        i += 1
        while tokens[i][1] != "]":
            item, i = _value(tokens, i)
            items.append(item)
            if tokens[i][1] == ",":
                i += 1
        return items, i + 1
    if tok == "{":
        members: dict[str, Any] = {}
        is_open = False
        i += 1
        while tokens[i][1] != "}":
            if tokens[i][0] == "ell":
                is_open, i = True, i + 1
            else:
                key = json.loads(tokens[i][1])
                assert tokens[i + 1][1] == ":", tokens[i:i + 3]
                members[key], i = _value(tokens, i + 2)
            if tokens[i][1] == ",":
                i += 1
        return Obj(members, is_open), i + 1
    raise ValueError(f"unexpected {tok!r} in the expected output")


def mismatch(pattern: Any, actual: Any, where: str = "") -> str | None:
    """None if `actual` fits `pattern`, else where and why not."""
    here = where or "(top)"
    if pattern is ANY:
        return None
    if isinstance(pattern, Obj):
        if not isinstance(actual, dict):
            return f"{here}: expected an object, got {actual!r}"
        missing = set(pattern.members) - set(actual)
        if missing:
            return f"{here}: missing keys {sorted(missing)} (has {sorted(actual)})"
        extra = set(actual) - set(pattern.members)
        if extra and not pattern.open:
            return f"{here}: keys not shown {sorted(extra)} (add them, or `…`)"
        for key, sub in pattern.members.items():
            found = mismatch(sub, actual[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(pattern, list):
        if not isinstance(actual, list):
            return f"{here}: expected an array, got {actual!r}"
        return None if _fits_list(pattern, actual, where) else \
            f"{here}: {actual!r} does not fit {pattern!r}"
    if isinstance(pattern, Str):
        if not isinstance(actual, str):
            return f"{here}: expected a string, got {actual!r}"
        regex = ".*".join(re.escape(part) for part in pattern.pattern.split(ELLIPSIS))
        return None if re.fullmatch(regex, actual, re.S) else \
            f"{here}: {actual!r} is not {pattern.pattern!r}"
    if isinstance(pattern, Num):
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return f"{here}: expected a number, got {actual!r}"
        return None if number_fits(pattern.text, actual) else \
            f"{here}: {actual!r} is not {pattern.text}"
    if isinstance(pattern, float) and math.isnan(pattern):
        return None if isinstance(actual, float) and math.isnan(actual) else \
            f"{here}: {actual!r} is not NaN"
    return None if pattern == actual and type(pattern) is type(actual) else \
        f"{here}: {actual!r} is not {pattern!r}"


def _fits_list(pattern: list[Any], actual: list[Any], where: str) -> bool:
    if not pattern:
        return not actual
    if pattern[0] is ANY:  # any number of elements, then the rest of the pattern
        return any(_fits_list(pattern[1:], actual[k:], where) for k in range(len(actual) + 1))
    return bool(actual) and mismatch(pattern[0], actual[0], where) is None \
        and _fits_list(pattern[1:], actual[1:], where)


def number_fits(shown: str, actual: float) -> bool:
    """`0.97…`: the answer's decimals begin so (not rounded); `0.97`: equal to 2 decimals."""
    prefix = shown.endswith(ELLIPSIS)
    digits = shown.removesuffix(ELLIPSIS)
    if "e" in digits.lower():
        return math.isclose(float(digits), actual, rel_tol=1e-9)
    decimals = len(digits.partition(".")[2])
    if prefix:
        return f"{actual:.{decimals + 8}f}".startswith(digits)
    return bool(abs(actual - float(digits)) <= 0.5 * 10 ** -decimals + 1e-12)


def check(expected: str, output: str) -> None:
    actual = json.loads(output)
    problem = mismatch(parse_pattern(expected), actual)
    assert problem is None, f"{problem}\n  shown: {expected}\n  actual: {output}"

