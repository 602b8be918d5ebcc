"""`Client.fit` is `model.fit`: the job starts from the notebook's model as it is (trained
weights, adapted preprocessing state), takes Keras's defaults and its last-rows
`validation_split`, and leaves the trained weights in the model; a batch-predict job's output
reads back as `model.predict` gives it. Each case is compared with in-process Keras."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from keras_jobs import Client, KerasJobsError
from tests.helpers import two_classes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("keras_first", "worker")]


def shuffled_classes(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, y = two_classes(seed=seed, n=n)
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]


def small_model(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    # No Dropout: Keras does not save a SeedGenerator's state in the .keras file, so a layer
    # drawing random numbers while training draws the worker's own seeded stream
    # (docs/client-and-cli.md).
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["binary_accuracy"])
    return model


def test_fit_with_kerass_defaults_and_last_rows_split_is_model_fit(kj: Client) -> None:
    """Same seed, same History as in-process `model.fit` (validation_split: Keras's last
    rows), and the model holds the trained weights afterwards (as model.fit leaves it)."""
    import keras

    x, y = shuffled_classes()
    local = small_model(seed=3)
    keras.utils.set_random_seed(7)
    expected = local.fit(x, y, epochs=2, validation_split=0.25, verbose=0)

    sent = small_model(seed=3)
    history = kj.fit(sent, x, y, epochs=2, validation_split=0.25, seed=7, name="parity",
                     progress=False)
    assert history.status == "succeeded", history.job
    assert set(history.history) == set(expected.history)
    for key, values in expected.history.items():
        np.testing.assert_allclose(history.history[key], values, atol=1e-6, rtol=0,
                                   err_msg=key)
    assert history.params == {"epochs": 2, "steps": 15, "verbose": 0}  # 450 rows / 32
    assert history.model is sent
    for got, want in zip(sent.get_weights(), local.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert int(sent.optimizer.iterations) == int(local.optimizer.iterations) == 30

    # Keras's defaults: one epoch, batches of 32, nothing held out.
    local = small_model(seed=4)
    keras.utils.set_random_seed(8)
    expected = local.fit(x, y, verbose=0)
    history = kj.fit(small_model(seed=4), x, y, seed=8, name="parity", progress=False)
    assert set(history.history) == {"loss", "binary_accuracy"}
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], atol=1e-6)
    assert history.params["steps"] == 19 and history.job["params"]["batch_size"] == 32


def test_a_pretrained_model_keeps_what_it_learned(kj: Client) -> None:
    """One epoch at a near-zero learning rate changes nothing: the served version is as
    accurate as the notebook's model (it used to train from fresh weights)."""
    import keras

    x, y = shuffled_classes(n=500, seed=1)
    model = small_model(seed=5)
    model.fit(x, y, epochs=20, batch_size=16, verbose=0)
    local = model.evaluate(x, y, verbose=0, return_dict=True)["binary_accuracy"]
    assert local >= 0.95
    model.compile(optimizer=keras.optimizers.SGD(1e-9), loss="binary_crossentropy",
                  metrics=["binary_accuracy"])
    history = kj.fit(model, x, y, epochs=1, seed=1, name="pretrained", progress=False)
    assert history.status == "succeeded", history.job
    served = kj.evaluate(history, x, y, return_dict=True)
    assert isinstance(served, dict)
    assert abs(served["binary_accuracy"] - local) <= 1e-4, (served, local)
    assert abs(history.history["binary_accuracy"][0] - local) <= 0.02  # during the epoch


def test_an_adapted_normalization_keeps_its_statistics(kj: Client) -> None:
    import keras

    rng = np.random.default_rng(2)
    notebook_rows = (rng.normal(size=(400, 3)) * [1, 10, 100] + [0, 50, -300]).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(notebook_rows)
    model = keras.Sequential([keras.Input(shape=(3,)), norm,
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    # The job trains on other rows: a re-adapt would move the statistics to theirs.
    x = (rng.normal(size=(200, 3)) * [3, 1, 1]).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    history = kj.fit(model, x, y, seed=1, name="normalized-nb", progress=False)
    assert history.status == "succeeded", history.job
    saved = kj.load_model("normalized-nb").layers[0]
    np.testing.assert_allclose(np.ravel(saved.mean), notebook_rows.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.ravel(saved.variance), notebook_rows.var(axis=0), rtol=1e-4)
    np.testing.assert_allclose(np.ravel(model.layers[0].mean), notebook_rows.mean(axis=0),
                               rtol=1e-5)


def test_a_batch_predict_reads_back_as_model_predict(kj: Client) -> None:
    x, y = shuffled_classes(n=200, seed=3)
    model = small_model(seed=6)
    history = kj.fit(model, x, y, epochs=2, seed=2, name="batch-nb", progress=False)
    assert history.status == "succeeded", history.job
    big = np.random.default_rng(4).normal(size=(100_000, 2)).astype("float32")
    expected = model.predict(big, batch_size=4096, verbose=0)

    from_job = kj.predict_job(model, big, batch_size=4096)
    assert isinstance(from_job, np.ndarray) and from_job.shape == (100_000, 1)
    np.testing.assert_allclose(from_job, expected, atol=1e-6, rtol=0)
    # Request/response predict sends 100k rows in requests within the service's limits.
    online = kj.predict("batch-nb", big)
    np.testing.assert_allclose(online, expected, atol=1e-6, rtol=0)


def test_a_tf_data_dataset_and_a_generator_train_as_keras_trains_them(kj: Client) -> None:
    import keras
    import tensorflow as tf

    x, y = shuffled_classes(n=100, seed=5)

    def data() -> Any:
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(20)

    local = small_model(seed=9)
    keras.utils.set_random_seed(1)
    expected = local.fit(data(), epochs=2, verbose=0)
    history = kj.fit(small_model(seed=9), data(), epochs=2, seed=1, name="from-dataset",
                     progress=False)
    assert history.status == "succeeded", history.job
    assert history.job["params"]["batch_size"] == 20 and not history.job["params"]["shuffle"]
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], atol=1e-6)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(x), 25):
            yield x[i:i + 25], y[i:i + 25]

    model = small_model(seed=9)
    with pytest.raises(KerasJobsError) as refused:  # after the model and data went up
        kj.fit(model, batches(), epochs=0, name="from-generator", progress=False)
    assert refused.value.status == 422 and "/epochs" in refused.value.pointers
    history = kj.fit(model, batches(), seed=1, name="from-generator",
                     validation_data=data(), progress=False)
    assert history.status == "succeeded", history.job
    # The same model sent again is not stored again: the start uploaded before is used.
    assert history.job["params"]["from_model"] == "from-generator.start/1"
    assert kj.model("from-generator.start")["latest_version"] == 1
    assert history.params["steps"] == 8 and "val_loss" in history.history  # 200 rows / 25
