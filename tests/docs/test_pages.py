"""The documentation's pages on their own (fast): every shell block runs somewhere or says why
not, its answers can be read, every link and anchor leads somewhere, and the configuration
page names every setting there is. The blocks themselves run in tests/e2e/test_readme.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.core.config import Settings
from tests.docs.answers import check, parse_pattern, steps
from tests.docs.blocks import DOCS, PAGES, RUN_ORDER, blocks, runnable, spec_examples
from tests.helpers import ROOT

QUICKSTART = "## Quickstart with curl"


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


def test_every_block_runs_or_says_why_not() -> None:
    """README's and SECURITY.md's only runnable block is the quickstart (test_readme runs it);
    a docs page with runnable blocks must have its place in the run order; a Python block
    says why it is not run."""
    readme = (ROOT / "README.md").read_text()
    after = readme[:readme.index(QUICKSTART)].count("\n") + 1  # the quickstart's heading line
    for page in PAGES:
        shell = [b for b in blocks(page) if b.lang in ("bash", "sh", "shell", "console")]
        assert all(b.lang == "bash" for b in shell), [b.where for b in shell]
        if page.parent == DOCS:
            assert not runnable(page) or page.name in RUN_ORDER, \
                f"{page.name} has blocks to run: add it to RUN_ORDER, or say why they cannot run"
            continue
        quickstart = [b.line for b in blocks(page) if b.lang == "bash" and b.line > after][:1] \
            if page.name == "README.md" else []
        assert [b.line for b in runnable(page)] == quickstart, \
            f"{page.name}: blocks to run outside the quickstart: say why they cannot run"
    assert all((DOCS / name).exists() for name in RUN_ORDER)
    # Nothing runs Python blocks: each says why, and where its code is tested instead.
    python = [b.where for page in PAGES for b in blocks(page) if b.lang == "python"]
    assert python and not [w for w in python if w not in
                           [b.where for p in PAGES for b in blocks(p) if b.not_run]], python
    reasons = [b.not_run for page in PAGES for b in blocks(page) if b.not_run]
    assert reasons and all(len(r.split()) >= 3 for r in reasons), reasons


def test_the_answers_shown_in_the_docs_read() -> None:
    shown = 0
    for name in RUN_ORDER:
        for block in runnable(DOCS / name):
            found, _rest = steps(block.text.splitlines())
            for step in found:
                parse_pattern(step.expected)
                shown += 1
    assert shown >= 5


def test_the_spec_examples_are_specs() -> None:
    examples = spec_examples()
    assert len(examples) >= 2
    for block in examples:
        spec = json.loads(block.text)
        assert {"name", "inputs", "layers", "compile"} <= set(spec), block.where


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


def test_every_link_leads_somewhere() -> None:
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name}: {target}: no such heading"


def _first_cells(text: str) -> set[str]:
    rows = re.findall(r"^\| ([^|]+) \|", text, re.M)
    return {name for cell in rows for name in re.findall(r"`(KJ_[A-Z0-9_]+)`", cell)}


def test_the_configuration_page_names_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    settings_part, _, others_part = text.partition("## Read by others")
    documented, others = _first_cells(settings_part), _first_cells(others_part)
    settings = {f"KJ_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from docs/configuration.md"
    assert documented - settings == set(), "no such setting (app/core/config.py)"
    assert not others & settings, "a setting under 'Read by others'"
