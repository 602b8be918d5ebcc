"""compile blocks: every allowlisted optimizer, loss and metric, by string and by class."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.core.errors import DomainError
from app.specs.allowlist import REGISTRIES
from app.specs.builder import build_model, compile_model
from app.specs.construct import constructor_params

SPEC: dict[str, Any] = {"inputs": [{"name": "x", "shape": [3]}],
                        "layers": [{"type": "Dense", "units": 2, "activation": "softmax"}]}
X = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
Y = np.eye(2, dtype="float32")[[0, 1, 1, 0]]

# Constructor arguments for metric classes that have required ones.
METRIC_ARGS: dict[str, dict[str, Any]] = {
    "IoU": {"num_classes": 2, "target_class_ids": [0]},
    "OneHotIoU": {"num_classes": 2, "target_class_ids": [0]},
    "MeanIoU": {"num_classes": 2}, "OneHotMeanIoU": {"num_classes": 2},
    "PrecisionAtRecall": {"recall": 0.5}, "RecallAtPrecision": {"precision": 0.5},
    "SensitivityAtSpecificity": {"specificity": 0.5},
    "SpecificityAtSensitivity": {"sensitivity": 0.5},
}
OPTIMIZER_STRINGS = ["sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "adamax",
                     "nadam", "ftrl", "lion"]
LOSS_STRINGS = ["mse", "mae", "mean_squared_error", "binary_crossentropy",
                "categorical_crossentropy", "huber",
                "kl_divergence", "cosine_similarity", "hinge", "poisson", "log_cosh",
                "categorical_hinge", "squared_hinge", "mape", "msle"]
METRIC_STRINGS = ["accuracy", "binary_accuracy", "categorical_accuracy", "auc", "mse", "mae",
                  "top_k_categorical_accuracy", "precision", "recall",
                  "root_mean_squared_error"]


def _compile(block: dict[str, Any]) -> Any:
    model = build_model(SPEC)
    compile_model(model, block)
    return model


@pytest.mark.parametrize("name", sorted(REGISTRIES["optimizer"].classes))
def test_every_optimizer_class_trains_one_step(name: str) -> None:
    model = _compile({"optimizer": {"class_name": name, "config": {"learning_rate": 0.01}},
                      "loss": "mse"})
    assert np.isfinite(model.train_on_batch(X, Y))


@pytest.mark.parametrize("name", OPTIMIZER_STRINGS)
def test_optimizer_strings(name: str) -> None:
    optimizer = _compile({"optimizer": name, "loss": "mse"}).optimizer
    assert type(optimizer) is REGISTRIES["optimizer"].strings[name]


def test_sgd_nesterov_schedule_and_clipnorm() -> None:
    model = _compile({"optimizer": {"class_name": "SGD", "config": {
        "momentum": 0.9, "nesterov": True, "clipnorm": 1.0,
        "learning_rate": {"class_name": "ExponentialDecay", "config": {
            "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9}}}},
        "loss": "mse"})
    assert type(model.optimizer._learning_rate).__name__ == "ExponentialDecay"
    assert model.optimizer.nesterov and model.optimizer.clipnorm == 1.0
    assert np.isfinite(model.train_on_batch(X, Y))


@pytest.mark.parametrize("schedule", [
    {"class_name": "PiecewiseConstantDecay", "config": {"boundaries": [2], "values": [0.1, 0.01]}},
    {"class_name": "CosineDecay", "config": {"initial_learning_rate": 0.1, "decay_steps": 5}},
])
def test_other_schedules(schedule: dict[str, Any]) -> None:
    model = _compile({"optimizer": {"class_name": "Adam", "config": {
        "learning_rate": schedule, "clipvalue": 0.5}}, "loss": "mse"})
    assert type(model.optimizer._learning_rate).__name__ == schedule["class_name"]
    assert model.optimizer.clipvalue == 0.5
    assert np.isfinite(model.train_on_batch(X, Y))


@pytest.mark.parametrize("name", sorted(REGISTRIES["loss"].classes))
def test_every_loss_class_compiles(name: str) -> None:
    model = _compile({"optimizer": "adam", "loss": {"class_name": name, "config": {}}})
    assert type(model.loss) is REGISTRIES["loss"].classes[name]


@pytest.mark.parametrize("name", LOSS_STRINGS)
def test_loss_strings_train(name: str) -> None:
    assert np.isfinite(_compile({"optimizer": "sgd", "loss": name}).train_on_batch(X, Y))


def test_sparse_loss_string_compiles() -> None:  # needs integer labels, so compile only
    model = _compile({"optimizer": "adam", "loss": "sparse_categorical_crossentropy"})
    assert model.loss == "sparse_categorical_crossentropy"
    labels = np.array([0, 1, 1, 0])
    assert np.isfinite(model.train_on_batch(X, labels))


def test_binary_crossentropy_from_logits() -> None:
    model = _compile({"optimizer": "adam", "loss": {"class_name": "BinaryCrossentropy",
                                                    "config": {"from_logits": True}}})
    assert type(model.loss).__name__ == "BinaryCrossentropy" and model.loss.from_logits


@pytest.mark.parametrize("name", sorted(REGISTRIES["metric"].classes))
def test_every_metric_class_compiles(name: str) -> None:
    cls = REGISTRIES["metric"].classes[name]
    args = METRIC_ARGS.get(cls.__name__, {})
    assert constructor_params(cls)[1] <= args.keys()
    _compile({"optimizer": "adam", "loss": "mse",
              "metrics": [{"class_name": name, "config": args}]})


def test_metric_strings_evaluate() -> None:
    model = _compile({"optimizer": "adam", "loss": "categorical_crossentropy",
                      "metrics": METRIC_STRINGS})
    results = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert len(results) == len(METRIC_STRINGS) + 1


@pytest.mark.parametrize(("block", "pointer", "text"), [
    ({"optimizer": "adamm", "loss": "mse"}, "/compile/optimizer", "did you mean 'adam'"),
    ({"optimizer": "adam", "loss": "mean_sqared_error"}, "/compile/loss", "did you mean"),
    ({"optimizer": "adam", "loss": "mse", "metrics": ["acuracy"]}, "/compile/metrics/0",
     "did you mean 'accuracy'"),
    ({"optimizer": "adam", "loss": "mse", "metrics": ["mean_io_u"]}, "/compile/metrics/0",
     "needs arguments"),
    ({"optimizer": {"class_name": "Adam", "config": {"learning_rat": 1}}, "loss": "mse"},
     "/compile/optimizer/config/learning_rat", "did you mean 'learning_rate'"),
    ({"optimizer": "adam", "loss": {"class_name": "Lambda", "config": {}}},
     "/compile/loss/class_name", "not allowed"),
    ({"optimizer": "adam", "loss": {"nope": "mse"}}, "/compile/loss/nope", "unknown output"),
    ({"optimizer": "adam", "loss": "mse", "jit_compile": "yes"}, "/compile/jit_compile",
     'true, false or "auto"'),
    ({"optimizer": "adam"}, "/compile/loss", "missing"),
    ({"optimizer": "adam", "loss": "mse", "run_eagerly": True}, "/compile/run_eagerly",
     "unknown key"),
])
def test_compile_refusals(block: dict[str, Any], pointer: str, text: str) -> None:
    with pytest.raises(DomainError) as info:
        _compile(block)
    assert info.value.status == 422
    assert [e.pointer for e in info.value.errors] == [pointer]
    assert text in info.value.errors[0].detail
