"""Every resource the CLI makes it can also list and show (specs, datasets), and `keras-jobs
keys` acts on the server `--url` names, through its /v1/keys routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.client.test_cli import cli, cli_json, write_json
from tests.helpers import ROOT, SEED_SPEC, live_server, two_classes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(client: Any) -> Iterator[str]:
    with live_server() as address:
        yield f"http://{address}"


def test_specs_and_datasets_are_listed_and_shown(url: str, tmp_path: Path) -> None:
    spec = cli_json(url, "specs", "create", write_json(tmp_path / "spec.json", SEED_SPEC))
    listed = cli_json(url, "specs", "list")
    assert spec["id"] in [s["id"] for s in listed["items"]]
    assert spec["id"] in cli(url, "specs", "list").stdout
    shown = cli_json(url, "specs", "show", spec["id"])
    assert shown["id"] == spec["id"] and shown["total_params"] == 3
    text = cli(url, "specs", "show", spec["id"])
    assert text.returncode == 0 and "Dense" in text.stdout

    x, y = two_classes(n=50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    dataset = cli_json(url, "datasets", "upload", str(tmp_path / "d.npz"), "--name", "parity")
    assert dataset["id"] in [d["id"] for d in cli_json(url, "datasets", "list")["items"]]
    assert "parity" in cli(url, "datasets", "list").stdout
    assert cli_json(url, "datasets", "show", dataset["id"])["num_rows"] == 100
    text = cli(url, "datasets", "show", dataset["id"])
    assert text.returncode == 0 and "sha256" in text.stdout
    missing = cli(url, "specs", "show", "spec_nope")
    assert missing.returncode == 1 and "404" in missing.stderr


def keys(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    return subprocess.run([sys.executable, "-m", "app.cli", "keys", *args], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_keys_with_a_url_act_through_that_server(url: str, tmp_path: Path) -> None:
    # No database reachable from this process: only the server can make, list and revoke.
    away = {"KJ_HOME": str(tmp_path), "KJ_DATABASE_URL": "postgresql+psycopg://x@127.0.0.1:1/x"}
    made = keys("create", "--tenant", "local", "--name", "via-server", "--scopes", "read",
                "--url", url, **away)
    assert made.returncode == 0, made.stderr
    assert "created key 'via-server'" in made.stdout
    assert made.stdout.splitlines()[-1].startswith("kj_")
    listed = keys("list", "--url", url, **away)
    assert listed.returncode == 0 and "via-server" in listed.stdout
    revoked = keys("revoke", "via-server", "--url", url, **away)
    assert revoked.returncode == 0 and "revoked key 'via-server'" in revoked.stdout
    refused = keys("list", "--url", url, "--api-key", "kj_000000000000_" + "x" * 43, **away)
    assert refused.returncode == 1 and "401" in refused.stderr
    assert not list(tmp_path.iterdir())  # no home was made


def test_keys_without_a_url_say_which_home_and_what_stays_with_local(
        url: str, tmp_path: Path, service_env: dict[str, str]) -> None:
    cli_json(url, "specs", "create", write_json(tmp_path / "spec.json", SEED_SPEC))  # 'local'
    first = keys("create", "--tenant", "parity-acme", "--name", "parity-acme-1")
    assert first.returncode == 0, first.stderr
    assert f"KJ_HOME={service_env['KJ_HOME']}" in first.stderr
    assert "tenant 'local'" in first.stderr and "--tenant local" in first.stderr
    second = keys("create", "--tenant", "parity-acme", "--name", "parity-acme-2")
    assert second.returncode == 0 and "tenant 'local'" not in second.stderr


def docs_cli_files() -> str:
    """The CLI block of docs/client-and-cli.md up to where its files (spec.json, job.json) are
    written."""
    text = (ROOT / "docs" / "client-and-cli.md").read_text()
    section = text[text.index("The same client is behind the client commands"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    end = block.index("\nEOF\n", block.index("cat > job.json")) + len("\nEOF\n")
    return block[:end]


def test_the_docs_cli_files_are_defined_and_accepted(url: str, tmp_path: Path) -> None:
    x, y = two_classes(n=50)
    np.savez(tmp_path / "two-classes.npz", x=x, y=y)
    env = {**os.environ, "KJ_URL": url, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    shell = docs_cli_files() + "keras-jobs specs show $SPEC --json >shown.json\n" \
        "keras-jobs jobs submit job.json --json >job-answer.json\n"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "shown.json").read_text())
    job = json.loads((tmp_path / "job-answer.json").read_text())
    assert spec["name"] == "seed-linear" and job["spec_id"] == spec["id"]
    assert job["type"] == "fit" and job["status"] == "queued"
    cli_json(url, "jobs", "cancel", job["id"])  # no worker here: it never runs
