"""Every resource the CLI makes it can also list and show (specs, datasets), and `keras-jobs
keys` acts on the server `--url` names, through its /v1/keys routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.client.test_cli import cli, cli_json, write_json
from tests.helpers import SEED_SPEC, live_server, two_classes

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
