"""The notebook workflow end to end: a Keras model built and compiled in this process is
trained by `Client.fit` on a real worker (PostgreSQL, Redis, a live HTTP server), and what it
returns and saves is compared with a job submitted by hand and with plain Keras."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keras_jobs import Client, History, KerasJobsError
from keras_jobs.events import Event
from tests.helpers import two_classes, upload, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("keras_first", "worker")]


def tutorial_model() -> Any:
    """The tutorial's classifier, as a notebook would write it."""
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.1),
                  loss=keras.losses.MeanSquaredError(),
                  metrics=[keras.metrics.BinaryAccuracy()])
    return model


@dataclass
class Fitted:
    history: History
    progress: str
    x: np.ndarray
    y: np.ndarray


@pytest.fixture(scope="module")
def fitted(kj: Client) -> Fitted:
    x, y = two_classes()
    out = io.StringIO()
    history = kj.fit(tutorial_model(), x, y, epochs=5, batch_size=16, validation_split=0.3,
                     seed=1, name="nb-linear", file=out)
    assert history.status == "succeeded", history.job
    return Fitted(history, out.getvalue(), x, y)


def test_fit_gives_the_history_of_the_same_job_submitted_by_hand(client: Any,
                                                                 fitted: Fitted) -> None:
    """The same fit from the same start (the version the client stored as `.start`)."""
    history = fitted.history
    dataset = upload(client, "nb-by-hand", x=fitted.x, y=fitted.y)
    start = history.job["params"]["from_model"]
    assert start == "nb-linear.start/1"
    r = client.post("/v1/jobs", json={
        "type": "fit", "from_model": start, "dataset_id": dataset["id"], "epochs": 5,
        "batch_size": 16, "validation_split": 0.3, "seed": 1, "model_name": "nb-by-hand"})
    by_hand = wait_for_job(client, r.json()["id"])
    assert by_hand["status"] == "succeeded", by_hand

    assert set(history.history) == set(by_hand["history"]) == {
        "loss", "binary_accuracy", "val_loss", "val_binary_accuracy"}
    for key, values in by_hand["history"].items():
        np.testing.assert_allclose(history.history[key], values, atol=1e-6, rtol=0)
    assert history.history["binary_accuracy"][-1] >= 0.9  # it learned
    assert history.epoch == [0, 1, 2, 3, 4]
    assert history.params == {"epochs": 5, "steps": 88, "verbose": 1}  # ceil(1400 / 16)
    assert history.job["status"] == "succeeded" and history.job["result"]["seed"] == 1
    assert (history.model_name, history.version) == ("nb-linear", 1)
    assert history.model_ref == "nb-linear/1"
    assert history.model is not None and history.job["spec_id"] is None


def test_fit_shows_a_bar_per_epoch_with_the_metrics(fitted: Fitted) -> None:
    text = fitted.progress
    for epoch in range(1, 6):
        assert f"Epoch {epoch}/5" in text, text
    assert "88/88" in text and "val_binary_accuracy=" in text and "loss=" in text
    last = fitted.history.history["val_binary_accuracy"][-1]
    assert f"val_binary_accuracy={last:.4f}" in text


def test_fitting_the_same_arrays_again_uploads_nothing(kj: Client, client: Any,
                                                       fitted: Fitted) -> None:
    before = client.get("/v1/datasets").json()["total"]
    again = kj.fit(tutorial_model(), fitted.x, fitted.y, epochs=1, seed=1, name="nb-again",
                   progress=False)
    assert client.get("/v1/datasets").json()["total"] == before
    assert again.job["dataset_id"] == fitted.history.job["dataset_id"]
    assert again.params["verbose"] == 0 and again.epoch == [0]


def test_predict_equals_a_predict_job_and_the_downloaded_model(
        kj: Client, client: Any, fitted: Fitted, service_env: dict[str, str]) -> None:
    x = fitted.x
    dataset = upload(client, "nb-predict", x=x)
    r = client.post("/v1/jobs", json={"type": "predict", "model": "nb-linear",
                                      "dataset_id": dataset["id"], "batch_size": 128})
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    stored = Path(service_env["KJ_ARTIFACT_ROOT"]) / "datasets" / job["result"]["dataset_id"]
    from_job = np.load(stored / "predictions.npy", allow_pickle=False)

    predicted = kj.predict("nb-linear", x)
    assert isinstance(predicted, np.ndarray) and predicted.shape == (2000, 1)
    np.testing.assert_allclose(predicted, from_job, atol=1e-6, rtol=0)
    in_requests = kj.predict("nb-linear", x, batch_size=300, version=1)  # 7 requests
    np.testing.assert_allclose(in_requests, from_job, atol=1e-6, rtol=0)

    model = kj.load_model("nb-linear")
    np.testing.assert_allclose(model.predict(x, verbose=0), from_job, atol=1e-6, rtol=0)
    assert len(model.layers) == 1 and model.count_params() == 3
    with pytest.raises(KerasJobsError) as info:
        kj.predict("nb-linear", x, version=9)
    assert info.value.status == 404


def test_evaluate_returns_the_loss_and_metrics(kj: Client, fitted: Fitted) -> None:
    result = kj.evaluate("nb-linear", fitted.x, fitted.y, return_dict=True)
    assert isinstance(result, dict)
    assert set(result) == {"loss", "binary_accuracy"}
    model = kj.load_model("nb-linear", version=1)
    expected = model.evaluate(fitted.x, fitted.y, batch_size=32, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert result["binary_accuracy"] == pytest.approx(expected["binary_accuracy"], abs=1e-6)
    # As Keras: [loss, *metrics] without return_dict; a History or the model fit names it.
    assert kj.evaluate(fitted.history, fitted.x, fitted.y) == [result["loss"],
                                                              result["binary_accuracy"]]
    assert kj.evaluate(fitted.history.model, fitted.x, fitted.y, return_dict=True) == result


def test_a_refused_model_raises_with_the_servers_pointer(kj: Client, client: Any) -> None:
    import keras

    x, y = two_classes(n=50)
    before = client.get("/v1/datasets").json()["total"]
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Lambda(lambda t: t * 2),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(KerasJobsError) as info:
        kj.fit(model, x, y, epochs=1, progress=False)
    error = info.value
    assert error.status == 422, error
    assert any(p.startswith("/file/config.json/config/layers/") for p in error.pointers), error
    assert "Lambda" in str(error) and error.pointers[0] in str(error)

    def my_loss(y_true: Any, y_pred: Any) -> Any:
        return keras.ops.mean(keras.ops.abs(y_true - y_pred))

    model = tutorial_model()
    model.compile(optimizer="adam", loss=my_loss)
    with pytest.raises(KerasJobsError) as info:
        kj.fit(model, x, y, epochs=1, progress=False)
    assert info.value.status == 422, info.value
    assert info.value.pointers[0].startswith("/file/config.json/compile_config/loss")
    assert client.get("/v1/datasets").json()["total"] == before  # refused before any upload


def interrupt_after_first_epoch(kj: Client, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ctrl-C while `fit` follows the job: the event iterator raises KeyboardInterrupt once
    the first epoch has been shown. Returns the ids of the jobs followed."""
    real = kj.events
    followed: list[str] = []

    def events(job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        followed.append(job_id)
        for event in real(job_id, last_event_id):
            yield event
            if event.type == "epoch":
                raise KeyboardInterrupt

    monkeypatch.setattr(kj, "events", events)
    return followed


def test_ctrl_c_cancels_the_job_when_asked(kj: Client, client: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = two_classes(n=400)
    prompts: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or "")
    followed = interrupt_after_first_epoch(kj, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        kj.fit(tutorial_model(), x, y, epochs=200, batch_size=8, seed=2, name="nb-cancel",
               progress=False)
    assert len(prompts) == 1 and "[Y/n]" in prompts[0]  # Enter: the default, cancel
    job = client.get(f"/v1/jobs/{followed[0]}").json()
    assert job["model_name"] == "nb-cancel" and job["cancel_requested"]
    assert wait_for_job(client, job["id"])["status"] == "cancelled"


def test_ctrl_c_can_leave_the_job_running(kj: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = two_classes(n=400)
    monkeypatch.setattr("builtins.input", lambda prompt="": "n")
    interrupt_after_first_epoch(kj, monkeypatch)
    partial = kj.fit(tutorial_model(), x, y, epochs=8, batch_size=8, seed=3, name="nb-leave",
                     progress=False)
    assert partial.job["status"] in ("running", "succeeded") and not partial.job[
        "cancel_requested"]
    monkeypatch.undo()
    out = io.StringIO()
    final = kj.attach(partial.job["id"], file=out)  # follows it again, replaying the epochs
    assert final.job["status"] == "succeeded" and final.epoch == list(range(8))
    assert final.model_ref == "nb-leave/1" and "Epoch 8/8" in out.getvalue()


def test_several_inputs_and_outputs_travel_as_named_arrays(kj: Client) -> None:
    """Dict inputs and outputs become `x.<input>`/`y.<output>` arrays of one dataset with
    mapping selectors; predict sends an .npz per input and answers a dict per output."""
    import keras

    a = keras.Input(shape=(3,), name="a")
    b = keras.Input(shape=(2,), name="b")
    hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()([a, b]))
    cls = keras.layers.Dense(1, activation="sigmoid", name="cls")(hidden)
    reg = keras.layers.Dense(2, name="reg")(hidden)
    # Outputs as a list: the service serves those (its :predict cannot load a dict-output
    # model yet); dict y still maps to them by output name.
    model = keras.Model(inputs={"a": a, "b": b}, outputs=[cls, reg])
    model.compile(optimizer="adam", loss={"cls": "binary_crossentropy", "reg": "mse"},
                  metrics={"cls": ["binary_accuracy"]})
    rng = np.random.default_rng(4)
    x = {"a": rng.normal(size=(120, 3)).astype("float32"),
         "b": rng.normal(size=(120, 2)).astype("float32")}
    y = {"cls": (x["a"][:, :1] > 0).astype("float32"), "reg": x["b"] * 2}
    history = kj.fit(model, x, y, epochs=2, batch_size=32, seed=4, name="nb-multi",
                     progress=False)
    assert history.job["params"]["x"] == {"a": "x.a", "b": "x.b"}
    assert history.job["params"]["y"] == {"cls": "y.cls", "reg": "y.reg"}
    # Keras's default holds nothing out (this client once held out 30% unasked).
    assert len(history.history["loss"]) == 2 and "val_loss" not in history.history

    predicted = kj.predict("nb-multi", x, batch_size=50)
    assert isinstance(predicted, dict) and set(predicted) == {"cls", "reg"}
    local = kj.load_model("nb-multi").predict(x, verbose=0)
    for name, expected in zip(("cls", "reg"), local, strict=True):
        np.testing.assert_allclose(predicted[name], expected, atol=1e-6, rtol=0)
