"""The `keras-jobs` console script's client commands, run as a user would (a subprocess of
the installed script) against the test app on a live HTTP server with a real worker: tables by
default, `--json` parsed, and `jobs watch`'s exit status."""

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

from tests.helpers import SEED_SPEC, live_server, two_classes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]

SCRIPT = Path(sys.executable).parent / "keras-jobs"


@pytest.fixture(scope="module")
def url(client: Any) -> Iterator[str]:
    with live_server() as address:
        yield f"http://{address}"


def cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KJ_URL": url, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, input=stdin,
                          env=env, timeout=300)


def cli_json(url: str, *args: str, stdin: str | None = None) -> Any:
    done = cli(url, *args, "--json", stdin=stdin)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def test_train_watch_and_predict_from_the_shell(url: str, tmp_path: Path) -> None:
    spec_file = write_json(tmp_path / "spec.json", SEED_SPEC)
    spec = cli_json(url, "specs", "create", spec_file)
    assert spec["id"].startswith("spec_") and spec["total_params"] == 3
    shown = cli(url, "specs", "create", spec_file)
    assert shown.returncode == 0 and "total params" in shown.stdout and "Dense" in shown.stdout

    x, y = two_classes(n=300)
    data = tmp_path / "two-classes.npz"
    np.savez(data, x=x, y=y)
    uploaded = cli(url, "datasets", "upload", str(data), "--name", "cli-data")
    assert uploaded.returncode == 0, uploaded.stderr
    assert "rows" in uploaded.stdout and "600" in uploaded.stdout
    assert "Uploading two-classes.npz" in uploaded.stderr  # the upload bar
    dataset = cli_json(url, "datasets", "upload", str(data), "--name", "cli-data")
    assert dataset["num_rows"] == 600 and set(dataset["arrays"]) == {"x", "y"}

    body = {"type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 3,
            "batch_size": 16, "validation_split_shuffled": 0.3, "seed": 1,
            "model_name": "cli-linear"}
    job = cli_json(url, "jobs", "submit", "-", stdin=json.dumps(body))
    assert job["status"] == "queued"

    watched = cli(url, "jobs", "watch", job["id"])
    assert watched.returncode == 0, watched.stderr
    table = watched.stdout.splitlines()
    assert table[0].split() == ["epoch", "loss", "binary_accuracy", "val_loss",
                                "val_binary_accuracy"]
    assert [line.split()[0] for line in table[1:4]] == ["1", "2", "3"]
    assert f"{job['id']} succeeded, saved as cli-linear/1" in table[-1]
    assert "Epoch 3/3" in watched.stderr and "27/27" in watched.stderr  # ceil(420 / 16)

    final = cli_json(url, "jobs", "watch", job["id"])
    assert final["status"] == "succeeded" and len(final["history"]["loss"]) == 3
    rows = [float(line.split()[1]) for line in table[1:4]]
    np.testing.assert_allclose(rows, final["history"]["loss"], atol=1e-4)
    assert cli_json(url, "jobs", "show", job["id"])["history"] == final["history"]
    assert job["id"] in cli(url, "jobs", "show", job["id"]).stdout
    listed = cli_json(url, "jobs", "list", "--status", "succeeded")
    assert job["id"] in [j["id"] for j in listed["items"]]
    assert job["id"] in cli(url, "jobs", "list").stdout

    models = cli_json(url, "models", "list")
    assert "cli-linear" in [m["name"] for m in models["items"]]
    model = cli_json(url, "models", "show", "cli-linear")
    assert model["latest_version"] == 1 and model["versions"][0]["job_id"] == job["id"]
    assert "cli-linear" in cli(url, "models", "show", "cli-linear").stdout

    points = np.array([[0, 3], [3, 0]], "float32")
    np.save(tmp_path / "x.npy", points)
    out = tmp_path / "y.npy"
    binary = cli_json(url, "models", "predict", "cli-linear", str(tmp_path / "x.npy"),
                      "--version", "1", "--output", str(out))
    as_json = cli_json(url, "models", "predict", "cli-linear",
                       write_json(tmp_path / "in.json", {"instances": points.tolist()}))
    np.testing.assert_allclose(binary["predictions"], as_json["predictions"], atol=1e-6)
    np.testing.assert_allclose(np.load(out), binary["predictions"], atol=0)
    assert binary["predictions"][0][0] < 0.5 < binary["predictions"][1][0]
    printed = cli(url, "models", "predict", "cli-linear", str(tmp_path / "x.npy"))
    assert printed.stdout.split()[:2] == ["row", "[0]"]


def test_watch_exits_1_when_the_job_is_cancelled_or_fails(url: str, tmp_path: Path) -> None:
    x, y = two_classes(n=200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    dataset = cli_json(url, "datasets", "upload", str(tmp_path / "d.npz"))
    spec = cli_json(url, "specs", "create", "-", stdin=json.dumps(SEED_SPEC))
    long = {"type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 5000,
            "batch_size": 8, "model_name": "cli-cancelled"}
    job = cli_json(url, "jobs", "submit", "-", stdin=json.dumps(long))
    cancelled = cli_json(url, "jobs", "cancel", job["id"])
    assert cancelled["cancel_requested"] is True
    watched = cli(url, "jobs", "watch", job["id"])
    assert watched.returncode == 1, watched.stderr
    assert f"{job['id']} cancelled" in watched.stdout

    diverging = {**SEED_SPEC, "compile": {**SEED_SPEC["compile"], "optimizer": {
        "class_name": "SGD", "config": {"learning_rate": 1e30}}}}
    bad_spec = cli_json(url, "specs", "create", write_json(tmp_path / "s.json", diverging))
    body = {"type": "fit", "spec_id": bad_spec["id"], "dataset_id": dataset["id"],
            "epochs": 3, "batch_size": 16, "seed": 1, "model_name": "cli-nan"}
    failed = cli(url, "jobs", "submit", write_json(tmp_path / "j.json", body), "--watch")
    assert failed.returncode == 1, failed.stderr
    assert "failed" in failed.stdout.splitlines()[-1] and "NaN" in failed.stdout


def test_refusals_print_the_pointers_and_exit_1(url: str, tmp_path: Path) -> None:
    bad = {**SEED_SPEC, "layers": [{"type": "Dense", "units": "one"}]}
    done = cli(url, "specs", "create", write_json(tmp_path / "bad.json", bad))
    assert done.returncode == 1 and done.stdout == ""
    assert "422" in done.stderr and "/layers/0/units" in done.stderr
    missing = cli(url, "jobs", "show", "job_nope")
    assert missing.returncode == 1 and "404" in missing.stderr
    # The global options also go before the command.
    env_less = subprocess.run([str(SCRIPT), "--url", url, "--json", "jobs", "list"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "KJ_URL": "http://127.0.0.1:9"})
    assert env_less.returncode == 0, env_less.stderr
    assert "items" in json.loads(env_less.stdout)


def test_upload_a_keras_file_and_download_a_datasets_arrays(url: str, tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    model.save(tmp_path / "m.keras")
    created = cli_json(url, "models", "upload", str(tmp_path / "m.keras"), "cli-upload")
    assert (created["name"], created["version"]) == ("cli-upload", 1)
    shown = cli(url, "models", "upload", str(tmp_path / "m.keras"), "cli-upload")
    assert shown.returncode == 0 and "version" in shown.stdout and "2" in shown.stdout
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"0" * 64)
    refused = cli(url, "models", "upload", str(tmp_path / "m.h5"), "cli-upload")
    assert refused.returncode == 1 and "/file" in refused.stderr and "HDF5" in refused.stderr

    x, y = two_classes(n=20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    dataset = cli_json(url, "datasets", "upload", str(tmp_path / "d.npz"))
    out = cli(url, "datasets", "download", dataset["id"], "-o", str(tmp_path / "back.npz"))
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "back.npz") as back:
        np.testing.assert_array_equal(back["x"], x)
        np.testing.assert_array_equal(back["y"], y)
    one = cli(url, "datasets", "download", dataset["id"], "--array", "y", "-o",
              str(tmp_path / "y.npy"))
    assert one.returncode == 0, one.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), y)
