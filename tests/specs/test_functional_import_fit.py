"""An imported functional model trains: the fit job rebuilds it from the stored spec, which
Keras's deserialization must not have emptied (it empties the functional config it is given)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import two_classes, upload, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def test_fit_job_on_an_imported_functional_model(client: Any) -> None:
    import keras

    x = keras.Input(shape=(2,), name="x")
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    skip = keras.layers.Concatenate(name="skip")([x, hidden])
    out = keras.layers.Dense(1, activation="sigmoid", name="out")(skip)
    model = keras.Model(x, out)
    config = json.loads(model.to_json())  # parsed: the request body itself goes to Keras

    r = client.post("/v1/specs", json={"name": "imported-functional", "keras_config": config,
                                       "compile": {"optimizer": "adam",
                                                   "loss": "binary_crossentropy"}})
    assert r.status_code == 201, r.text
    spec_id = r.json()["id"]
    stored = client.get(f"/v1/specs/{spec_id}").json()
    assert stored["spec"]["keras_config"] == config  # stored as sent, not emptied

    features, labels = two_classes(seed=3, n=200)
    dataset = upload(client, "imported-functional", x=features, y=labels)
    for _ in range(2):  # the second job rebuilds from the same stored spec
        r = client.post("/v1/jobs", json={"type": "fit", "spec_id": spec_id,
                                          "dataset_id": dataset["id"], "epochs": 2,
                                          "batch_size": 32})
        assert r.status_code == 202, r.text
        job = wait_for_job(client, r.json()["id"], timeout=240)
        assert job["status"] == "succeeded", job.get("error")
        assert len(job["history"]["loss"]) == 2
