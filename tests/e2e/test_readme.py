"""The README's quickstart, run as written against a real `keras-jobs serve` (the embedded
default in a fresh KJ_HOME), each command's output held to the `# →` lines that follow it in
the README (tests/docs/answers.py says how they read); then, against the same server and in
the same folder, the docs pages' shell blocks (tests/docs/blocks.py says which and how), their
spec examples, and the error messages they quote, posted for real. The documentation and the
service cannot drift apart without this failing."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.docs.answers import ELLIPSIS, check, outputs, parse_pattern, script, steps
from tests.docs.blocks import DOCS, SAVE_QUICKSTART_ENV, run_pages, shell_env, spec_examples
from tests.helpers import ROOT
from tests.serve_process import ServeProcess

README = ROOT / "README.md"


def quickstart_block(text: str) -> list[str]:
    """The lines of the first ```bash block under "## Quickstart with curl"."""
    section = text.split("\n## Quickstart with curl\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert match, "no ```bash block under ## Quickstart with curl"
    return match.group(1).splitlines()


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


def _error_examples() -> dict[str, str]:
    """The error messages docs/specs-and-jobs.md quotes for the specs below, by name."""
    text = (DOCS / "specs-and-jobs.md").read_text()
    conv = re.search(r"`(layers/0 \(Conv2D\)[^`]*)`", text)
    adamm = re.search(r"`(unknown optimizer 'adamm'[^`]*)`", text)
    assert conv and adamm, "the error examples of docs/specs-and-jobs.md are gone"
    return {"conv": conv.group(1), "adamm": adamm.group(1)}


TUTORIAL_INPUTS = [{"name": "x", "shape": [2]}]
COMPILE = {"optimizer": "adam", "loss": "mean_squared_error"}
ERROR_SPECS = {
    # The docs: a Conv2D first layer on the tutorial's two-number rows.
    "conv": {"name": "conv", "inputs": TUTORIAL_INPUTS, "compile": COMPILE,
             "layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3}]},
    "adamm": {"name": "adamm", "inputs": TUTORIAL_INPUTS, "layers": [{"type": "Dense",
                                                                      "units": 1}],
              "compile": {**COMPILE, "optimizer": "adamm"}},
}


def _check_metrics_example(url: str) -> None:
    """docs/observability.md's metrics line: the quickstart's two predict requests, as
    /metrics counts them (before the pages' blocks make more)."""
    text = (DOCS / "observability.md").read_text()
    shown = re.search(r"^# (keras_jobs_predict_requests_total\{.*)$", text, re.M)
    assert shown, "the metrics example of docs/observability.md is gone"
    scraped = httpx.get(f"{url}/metrics", timeout=60).text.splitlines()
    assert shown.group(1) in scraped, [m for m in scraped if "requests_total" in m]


def _check_error_examples(url: str) -> None:
    examples = _error_examples()
    for name, spec in ERROR_SPECS.items():
        r = httpx.post(f"{url}/v1/specs", json=spec, timeout=60)
        assert r.status_code == 422, r.text
        messages = [e["detail"] for e in r.json().get("errors", [])] + [r.json()["detail"]]
        regex = ".*".join(re.escape(p) for p in examples[name].split(ELLIPSIS))
        assert any(re.search(regex, m) for m in messages), (examples[name], r.json())


def _check_spec_examples(url: str) -> None:
    for block in spec_examples():
        r = httpx.post(f"{url}/v1/specs", json=json.loads(block.text), timeout=120)
        assert r.status_code == 201, (block.where, r.text)


@pytest.mark.slow
def test_the_readme_and_the_docs_against_a_real_server(tmp_path: Path) -> None:
    found, rest = steps(quickstart_block(README.read_text()))
    home = tmp_path / "kj"
    with _server(home) as server:
        work = tmp_path / "work"
        work.mkdir()
        # A reader's shell: none of the suite's KJ_* settings (its database, its API key).
        env = shell_env(home, server.url)
        quickstart = script(found, f"{rest}\n{SAVE_QUICKSTART_ENV}", server.port)
        run = subprocess.run(["bash", "-c", quickstart], cwd=work, env=env, capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, f"the quickstart failed:\n{run.stdout}\n{run.stderr}"
        for step, output in zip(found, outputs(run.stdout, len(found)), strict=False):
            check(step.expected, output)

        _check_metrics_example(server.url)
        _check_error_examples(server.url)
        _check_spec_examples(server.url)
        problems = run_pages(work, env, server.port)
        assert not problems, "\n\n".join(problems)
