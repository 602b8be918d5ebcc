"""The fenced code blocks of the documentation, and running the `bash` ones of docs/*.md
against a live server after the README's quickstart (tests/e2e/test_readme.py does).

A block that cannot run says why in an HTML comment on the line above its fence:
`<!-- not run: needs a Docker engine; ... -->`. Every other `bash` block under docs/ runs, in
the quickstart's folder, with the quickstart's shell functions and variables (`id_of`,
`wait_for`, `$DATASET`, `$SPEC`), under `set -euo pipefail`, and with `curl` failing on an
HTTP error unless the command prints the status itself (`-w`); its `# →` lines are held to
the answers as the quickstart's are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.docs.answers import check, outputs, script, steps
from tests.helpers import ROOT

DOCS = ROOT / "docs"
PAGES = (ROOT / "README.md", ROOT / "SECURITY.md", *sorted(DOCS.glob("*.md")))
# The pages whose bash blocks run, in this order: keys-and-tenants.md makes the first key,
# which closes the open service to the requests without one that the others make.
RUN_ORDER = ("http-api.md", "serving.md", "dashboard.md", "observability.md",
             "specs-and-jobs.md", "deployment.md", "client-and-cli.md", "keys-and-tenants.md")
# What the quickstart leaves for the pages' blocks (written by the quickstart's script).
QUICKSTART_ENV = ".quickstart.env"
SAVE_QUICKSTART_ENV = (f"declare -p DATASET SPEC > {QUICKSTART_ENV}; "
                       f"declare -f id_of wait_for >> {QUICKSTART_ENV}")
PRELUDE = f"""set -euo pipefail
source {QUICKSTART_ENV}
# A documented request must succeed, unless it prints its status code itself (-w).
curl() {{
  case " $* " in *" -w "*) command curl "$@" ;; *) command curl --fail-with-body "$@" ;; esac
}}"""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
_NOT_RUN = re.compile(r"^\s*<!-- not run: (?P<why>.+?) -->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str  # de-indented
    not_run: str | None  # why, from the comment above the fence

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's fenced code blocks (indented ones in lists included)."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening or not opening.group("lang"):
            i += 1
            continue
        indent, start = opening.group("indent"), i
        body: list[str] = []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        above = next((line for line in reversed(lines[:start]) if line.strip()), "")
        reason = _NOT_RUN.match(above)
        found.append(Block(page, start + 1, opening.group("lang"), "\n".join(body),
                           reason.group("why") if reason else None))
        i += 1
    return found


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang == "bash" and b.not_run is None]


def spec_examples() -> list[Block]:
    """The model specs shown as JSON (objects with `layers`)."""
    return [b for page in PAGES for b in blocks(page)
            if b.lang == "json" and "layers" in json.loads(b.text)]


def shell_env(home: Path, url: str) -> dict[str, str]:
    """A reader's shell next to the server: none of the suite's KJ_* settings, the server's
    home (both on the default one, for a reader) and its address for the CLI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KJ_")}
    env.update({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                "KJ_HOME": str(home), "KJ_URL": url, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return env


def run_block(block: Block, work: Path, env: dict[str, str], port: int) -> str | None:
    """Run one block in `work`; None if it exited 0 and every answer fits, else what went wrong."""
    found, rest = steps(block.text.splitlines())
    run = subprocess.run(["bash", "-c", script(found, rest, port, PRELUDE)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return f"{block.where}: exit status {run.returncode}\n{run.stdout[-3000:]}\n" \
               f"{run.stderr[-3000:]}"
    for step, output in zip(found, outputs(run.stdout, len(found)), strict=False):
        try:
            check(step.expected, output)
        except (AssertionError, ValueError) as error:
            return f"{block.where}: {error}"
    return None


def run_pages(work: Path, env: dict[str, str], port: int) -> list[str]:
    """Every runnable block of the docs pages, in RUN_ORDER; what went wrong with each."""
    problems: list[str] = []
    for name in RUN_ORDER:
        for block in runnable(DOCS / name):
            problem = run_block(block, work, env, port)
            if problem:
                problems.append(problem)
    return problems
