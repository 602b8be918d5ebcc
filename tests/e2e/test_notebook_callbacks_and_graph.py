"""A notebook's callbacks and an LSTM seq2seq graph spec, through the service (PostgreSQL,
Redis, a real worker), each held to the same run in plain Keras."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import upload, wait_for_job
from tests.specs.test_graph_call_kwargs import SEQ2SEQ, seq2seq_data

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]

SPEC: dict[str, Any] = {
    "name": "scheduled", "inputs": [{"name": "x", "shape": [4]}],
    "layers": [{"type": "Dense", "units": 8, "activation": "relu"}, {"type": "Dense", "units": 1}],
    "compile": {"optimizer": {"class_name": "SGD", "config": {"learning_rate": 0.01}},
                "loss": "mean_squared_error"}}
SCHEDULE = {"class_name": "ExponentialDecay",
            "config": {"initial_learning_rate": 0.05, "decay_steps": 1, "decay_rate": 0.5}}


def _job(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"type": "fit", "batch_size": 16, "epochs": 3, "seed": 7,
                                      "shuffle": True, **body})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    return job


def test_scheduler_csv_logger_and_backup_and_restore(client: Any) -> None:
    import keras

    from app.specs.builder import build_compiled

    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) + rng.normal(size=(64, 1)) * 0.1).astype("float32")
    ds = upload(client, "scheduled", x=x, y=y)
    spec_id = client.post("/v1/specs", json=SPEC).json()["id"]
    job = _job(client, {"spec_id": spec_id, "dataset_id": ds["id"], "callbacks": [
        {"type": "LearningRateScheduler", "schedule": SCHEDULE},
        {"type": "CSVLogger", "filename": "training.log"},
        {"type": "BackupAndRestore", "backup_dir": "/tmp/backup"}]})

    keras.utils.set_random_seed(7)
    model = build_compiled(SPEC)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 1, 0.5)
    notebook = keras.callbacks.LearningRateScheduler(lambda epoch: float(schedule(epoch)))
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=True, callbacks=[notebook],
                        verbose=0).history
    np.testing.assert_allclose(job["history"]["learning_rate"], [0.05, 0.025, 0.0125],
                               rtol=1e-6)
    np.testing.assert_allclose(job["history"]["loss"], history["loss"], rtol=0, atol=1e-5)

    log = client.get(f"/v1/jobs/{job['id']}/logs").text
    rows = [line.split("csv ", 1)[1] for line in log.splitlines() if " csv " in line]
    assert rows[0] == "epoch,learning_rate,loss"
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert float(rows[-1].split(",")[2]) == pytest.approx(job["history"]["loss"][-1], abs=1e-6)


def test_seq2seq_graph_spec_with_initial_state_trains(client: Any) -> None:
    import keras

    from app.specs.builder import build_compiled

    spec = client.post("/v1/specs", json=SEQ2SEQ)
    assert spec.status_code == 201, spec.text
    data = seq2seq_data()
    ds = upload(client, "seq2seq", **data)
    job = _job(client, {"spec_id": spec.json()["id"], "dataset_id": ds["id"],
                        "x": {"enc_in": "enc", "dec_in": "dec"}, "y": "target",
                        "batch_size": 8})
    keras.utils.set_random_seed(7)
    model = build_compiled(SEQ2SEQ)
    x = {"enc_in": data["enc"], "dec_in": data["dec"]}
    history = model.fit(x, data["target"], batch_size=8, epochs=3, shuffle=True,
                        verbose=0).history
    np.testing.assert_allclose(job["history"]["loss"], history["loss"], rtol=0, atol=1e-5)

    rows = {"enc_in": data["enc"][:2].tolist(), "dec_in": data["dec"][:2].tolist()}
    served = client.post("/v1/models/seq2seq:predict", json={"inputs": rows})
    assert served.status_code == 200, served.text
    expected = model.predict({k: np.asarray(v, "float32") for k, v in rows.items()}, verbose=0)
    np.testing.assert_allclose(served.json()["outputs"], expected, rtol=0, atol=1e-5)


def test_callback_refusals_at_submit_say_what_to_do(client: Any) -> None:
    from tests.helpers import assert_problem

    x = np.zeros((8, 4), "float32")
    ds = upload(client, "refusals", x=x, y=x[:, :1])
    spec_id = client.post("/v1/specs", json=SPEC).json()["id"]
    body = {"type": "fit", "spec_id": spec_id, "dataset_id": ds["id"]}
    cases = [
        ({"callbacks": [{"type": "LearningRateScheduler", "schedule": "lambda e: 0.1"}]},
         "/callbacks/0/schedule", "keras.optimizers.schedules"),
        ({"callbacks": [{"type": "LambdaCallback"}]}, "/callbacks/0/type", "events"),
        ({"callbacks": [{"type": "ModelCheckpoint", "monitor": "val_mae",
                         "save_best_only": True}], "keep_best": {"monitor": "val_loss"}},
         "/callbacks/0/monitor", "keep_best or ModelCheckpoint"),
    ]
    for extra, pointer, instead in cases:
        problem = assert_problem(client.post("/v1/jobs", json={**body, **extra}), 422, pointer)
        assert instead in str(problem["errors"]), problem
