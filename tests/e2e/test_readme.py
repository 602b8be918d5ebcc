"""The README's quickstart, run as written against a real `keras-jobs serve` (the embedded
default in a fresh KJ_HOME), each command's output held to the `# →` lines that follow it in
the README; and the README's error examples, posted for real. README and service cannot
drift apart again without this failing.

The expected lines are JSON with `…` in it: a `…` member of an object stands for the keys not
shown (without one, the keys must be exactly those shown), a `…` element of an array for any
number of elements, `"ds_…"` for any string that starts that way, `0.97…` for a number whose
decimals begin 0.97, a bare `…` for any value. A number shown without `…` must equal the
answer to the decimals shown."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ROOT
from tests.serve_process import ServeProcess

README = ROOT / "README.md"
ELLIPSIS = "…"
MARK = "@@readme-step-{}@@"


# --- the README's quickstart -----------------------------------------------------------------

@dataclass
class Step:
    commands: str  # the block's lines up to this expectation (comments kept: bash skips them)
    expected: str  # the `# →` text, continuation lines joined


def quickstart_block(text: str) -> list[str]:
    """The lines of the first ```bash block under "## Quickstart with curl"."""
    section = text.split("\n## Quickstart with curl\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert match, "no ```bash block under ## Quickstart with curl"
    return match.group(1).splitlines()


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


def script(found: list[Step], rest: str, port: int) -> str:
    """One bash script: every step's commands, then a marker line, so the output can be cut
    into each step's. The README's port becomes the test server's."""
    parts = ["set -e"]
    for i, step in enumerate(found):
        parts += [step.commands, f"printf '\\n{MARK.format(i)}\\n'"]
    parts.append(rest)
    return "\n".join(parts).replace("localhost:8000", f"127.0.0.1:{port}") + "\n"


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
    return abs(actual - float(digits)) <= 0.5 * 10 ** -decimals + 1e-12


def check(expected: str, output: str) -> None:
    actual = json.loads(output)
    problem = mismatch(parse_pattern(expected), actual)
    assert problem is None, f"{problem}\n  README: {expected}\n  actual: {output}"


# --- the matcher and the parser on their own (fast) ---------------------------------------

def test_matcher() -> None:
    check('{"id": "ds_…", "n": 2000, …}', '{"id": "ds_12", "n": 2000, "more": 1}')
    check('{"loss": 0.03…, "acc": 0.97…}', '{"loss": 0.0312, "acc": 0.9705}')
    check('{"p": [[0.0…], [0.9…]]}', '{"p": [[0.0123], [0.987]]}')
    check('{"h": [0.1…, …], "x": […], "s": …}', '{"h": [0.15, 0.2, 0.3], "x": [], "s": null}')
    check('{"a": 0.5, "b": -1, "c": null, "d": true}', '{"a": 0.5004, "b": -1, "c": null, '
          '"d": true}')
    for expected, output in (('{"id": "ds_…"}', '{"id": "ds_1", "more": 1}'),  # keys not shown
                             ('{"loss": 0.03…}', '{"loss": 0.0299}'),  # not rounded
                             ('{"a": 0.5}', '{"a": 0.56}'),
                             ('{"p": [[0.0…]]}', '{"p": [[0.01], [0.9]]}'),
                             ('{"s": "succeeded"}', '{"s": "running"}'),
                             ('{"n": 1}', '{"n": true}')):
        with pytest.raises(AssertionError):
            check(expected, output)


def test_the_readme_quickstart_reads() -> None:
    found, _rest = steps(quickstart_block(README.read_text()))
    assert len(found) >= 6
    for step in found:
        parse_pattern(step.expected)
    ran = script(found, "", 1234)
    assert "localhost:8000" not in ran and "127.0.0.1:1234/v1/specs" in ran


# --- against a real server ---------------------------------------------------------------------

def _server(home: Path) -> ServeProcess:
    """`keras-jobs serve` on the embedded default: a fresh shell's environment (none of the
    suite's KJ_* settings) but KJ_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KJ_")}
    env.update({"KJ_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"})
    return ServeProcess(env, home)


def _error_examples(text: str) -> dict[str, str]:
    """The README's quoted error messages for the specs below, by name."""
    conv = re.search(r"`(layers/0 \(Conv2D\)[^`]*)`", text)
    adamm = re.search(r"`(unknown optimizer 'adamm'[^`]*)`", text)
    assert conv and adamm, "the README's error examples are gone"
    return {"conv": conv.group(1), "adamm": adamm.group(1)}


TUTORIAL_INPUTS = [{"name": "x", "shape": [2]}]
COMPILE = {"optimizer": "adam", "loss": "mean_squared_error"}
ERROR_SPECS = {
    # The README: a Conv2D first layer on the tutorial's two-number rows.
    "conv": {"name": "conv", "inputs": TUTORIAL_INPUTS, "compile": COMPILE,
             "layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3}]},
    "adamm": {"name": "adamm", "inputs": TUTORIAL_INPUTS, "layers": [{"type": "Dense",
                                                                      "units": 1}],
              "compile": {**COMPILE, "optimizer": "adamm"}},
}


@pytest.mark.slow
def test_readme_quickstart_against_a_real_server(tmp_path: Path) -> None:
    text = README.read_text()
    found, rest = steps(quickstart_block(text))
    with _server(tmp_path / "kj") as server:
        work = tmp_path / "work"
        work.mkdir()
        # A fresh shell's: none of the suite's KJ_* settings (its database, its API key).
        env = {k: v for k, v in os.environ.items() if not k.startswith("KJ_")}
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        run = subprocess.run(["bash", "-c", script(found, rest, server.port)], cwd=work,
                             env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"the quickstart failed:\n{run.stdout}\n{run.stderr}"
        outputs = re.split(r"\n?" + MARK.format(r"\d+") + r"\n", run.stdout)
        assert len(outputs) == len(found) + 1, run.stdout
        for step, output in zip(found, outputs, strict=False):
            check(step.expected, output.strip())

        # The metrics example: the quickstart's two predict requests, as /metrics counts them.
        shown = re.search(r"^# (keras_jobs_predict_requests_total\{.*)$", text, re.M)
        assert shown, "the README's metrics example is gone"
        scraped = httpx.get(f"{server.url}/metrics", timeout=60).text.splitlines()
        assert shown.group(1) in scraped, [m for m in scraped if "requests_total" in m]

        examples = _error_examples(text)
        for name, spec in ERROR_SPECS.items():
            r = httpx.post(f"{server.url}/v1/specs", json=spec, timeout=60)
            assert r.status_code == 422, r.text
            messages = [e["detail"] for e in r.json().get("errors", [])] + [r.json()["detail"]]
            regex = ".*".join(re.escape(p) for p in examples[name].split(ELLIPSIS))
            assert any(re.search(regex, m) for m in messages), (examples[name], r.json())
