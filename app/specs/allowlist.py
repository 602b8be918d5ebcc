"""Which Keras classes and names a user spec may mention.

Everything is derived from Keras's own public namespaces at import time, so a Keras upgrade
adds new built-ins automatically; the denylists below are explicit because each entry is a
security or usability decision. A name that is not in an allowlist is never handed to Keras.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import keras
from keras.src import activations as _activations
from keras.src import constraints as _constraints
from keras.src import initializers as _initializers
from keras.src import losses as _losses
from keras.src import metrics as _metrics
from keras.src import regularizers as _regularizers

from app.core.errors import FieldError, did_you_mean, invalid

Category = Literal[
    "layer", "cell", "initializer", "regularizer", "constraint", "activation",
    "optimizer", "schedule", "loss", "metric", "dtype_policy", "model", "input_layer",
]

# Layers that carry code, read files or only make sense as internals.
DENIED_LAYERS: dict[str, str] = {
    "Lambda": "it carries arbitrary Python code, which the service never runs; write the "
              "computation with built-in layers (Rescaling, Activation, Add, Multiply, "
              "Reshape, Permute, RepeatVector, ...) chained in a graph spec",
    "TFSMLayer": "it loads a TensorFlow SavedModel from a server path",
    "JaxLayer": "it wraps an arbitrary Python (JAX) function",
    "FlaxLayer": "it wraps an arbitrary Python (Flax) module",
    "TorchModuleWrapper": "it wraps an arbitrary, pickled PyTorch module",
    "InputLayer": "model inputs are declared in the spec's `inputs` block",
    "Layer": "it is the abstract base class (its call() is user code)",
    "Wrapper": "it is an abstract base class",
    "RandomShear": "its saved config cannot be loaded back (Keras 3.15 rejects its own "
                   "factor tuple), so trained models would not reload",
    "Equalization": "in Keras 3.15 it returns its input tensor itself when building a "
                    "graph, so it silently vanishes from the model",
    "STFTSpectrogram": "it needs scipy, which the service does not install",
    # Operates on bounding-box dicts, not tensors: unusable in a spec graph.
    "MaxNumBoundingBoxes": "it only works on bounding-box dictionaries",
}
# RNN cells are layers, but only meaningful inside RNN(cell=...) / StackedRNNCells.
CELL_NAMES = frozenset({"LSTMCell", "GRUCell", "SimpleRNNCell", "StackedRNNCells"})

DENIED_OBJECTS: dict[str, str] = {
    # Abstract bases: instantiating them yields objects whose behaviour is user code.
    "Initializer": "it is an abstract base class",
    "Regularizer": "it is an abstract base class",
    "Constraint": "it is an abstract base class",
    "Optimizer": "it is an abstract base class",
    "LearningRateSchedule": "it is an abstract base class",
    "Loss": "it is an abstract base class",
    "Metric": "it is an abstract base class",
    # Wrap a Python function object.
    "LossFunctionWrapper": "it wraps a Python function",
    "MeanMetricWrapper": "it wraps a Python function",
    # Need Python objects (layers, variables) that a JSON spec cannot express.
    "MultiOptimizer": "it maps Python layer objects to optimizers",
    "OptimizerMap": "it maps Python variable objects to optimizers",
    "LossScaleOptimizer": "it is only accepted as compile's optimizer itself, wrapping an "
                          "allowed inner_optimizer (mixed_float16 models)",
    # Aggregate arbitrary values, not (y_true, y_pred): meaningless as compile metrics.
    "Mean": "it averages arbitrary values, not predictions",
    "Sum": "it sums arbitrary values, not predictions",
}

# Modules whose names the Keras serializer emits (`module` key) per category.
MODULES: dict[Category, tuple[str, ...]] = {
    "layer": ("keras.layers",),
    "cell": ("keras.layers",),
    "input_layer": ("keras.layers",),
    "initializer": ("keras.initializers",),
    "regularizer": ("keras.regularizers",),
    "constraint": ("keras.constraints",),
    "activation": ("keras.activations", "builtins"),
    "optimizer": ("keras.optimizers",),
    "schedule": ("keras.optimizers.schedules",),
    "loss": ("keras.losses",),
    "metric": ("keras.metrics",),
    "dtype_policy": ("keras", "keras.dtype_policies"),
    "model": ("keras", "keras.models", "keras.src.models.functional",
              "keras.src.models.sequential", "keras.src.models.model"),
}

# Serializer markers for plain data (tensors, arrays); they never resolve a class.
DATA_MARKERS = frozenset({"__keras_tensor__", "__numpy__", "__tensor__"})

# What to use instead of a class that is not a Keras built-in (user code is never run).
INSTEAD: dict[Category, str] = {
    "layer": "a custom layer is Python code, which the service never runs: build it from "
             "built-in layers (a graph spec chains any of them: docs/specs-and-jobs.md)",
    "loss": "a custom loss is Python code, which the service never runs: use a built-in "
            "keras.losses class or name, and loss_weights, sample_weight or class_weight to "
            "weigh it",
    "metric": "a custom metric is Python code, which the service never runs: use a built-in "
              "keras.metrics class or name",
    "model": "a subclassed keras.Model runs its own call() code, which the service never "
             "runs: build the same model with the functional API (keras.Model(inputs, "
             "outputs)) or keras.Sequential and send that",
    "optimizer": "a custom optimizer is Python code: use a built-in keras.optimizers class",
    "schedule": "a custom schedule is Python code: use a keras.optimizers.schedules class",
}

NOUNS: dict[Category, str] = {
    "layer": "layer type", "cell": "RNN cell", "initializer": "initializer",
    "regularizer": "regularizer", "constraint": "constraint", "activation": "activation",
    "optimizer": "optimizer", "schedule": "learning-rate schedule", "loss": "loss",
    "metric": "metric", "dtype_policy": "dtype policy", "model": "model class",
    "input_layer": "input layer",
}


@dataclass(frozen=True)
class Registry:
    """Allowed `{"class_name"}` values and allowed string shorthands of one category."""

    classes: dict[str, type[Any]]
    strings: dict[str, Any]  # name -> class or function it resolves to


def _public_classes(module: ModuleType, base: type[Any]) -> dict[str, type[Any]]:
    return {
        name: obj for name in dir(module)
        if not name.startswith("_")
        and inspect.isclass(obj := getattr(module, name)) and issubclass(obj, base)
        and name not in DENIED_LAYERS and name not in DENIED_OBJECTS
    }


def _strings(table: dict[str, Any], classes: dict[str, type[Any]]) -> dict[str, Any]:
    """String shorthands Keras accepts, minus those resolving to denied classes."""
    allowed = set(classes.values())
    return {k: v for k, v in table.items() if not inspect.isclass(v) or v in allowed}


def _build() -> dict[Category, Registry]:
    all_layers = _public_classes(keras.layers, keras.layers.Layer)
    layers = {k: v for k, v in all_layers.items() if k not in CELL_NAMES}
    cells = {k: v for k, v in all_layers.items() if k in CELL_NAMES}
    init = _public_classes(keras.initializers, keras.initializers.Initializer)
    reg = _public_classes(keras.regularizers, keras.regularizers.Regularizer)
    con = _public_classes(keras.constraints, keras.constraints.Constraint)
    opt = _public_classes(keras.optimizers, keras.optimizers.Optimizer)
    sched = _public_classes(
        keras.optimizers.schedules, keras.optimizers.schedules.LearningRateSchedule)
    loss = _public_classes(keras.losses, keras.losses.Loss)
    metric = _public_classes(keras.metrics, keras.metrics.Metric)
    metric_strings = _strings(_metrics.ALL_OBJECTS_DICT, metric)
    # compile() resolves these itself from the output shapes.
    metric_strings.update({"accuracy": None, "acc": None, "crossentropy": None, "ce": None})
    policies = {"DTypePolicy": keras.DTypePolicy, "FloatDTypePolicy": keras.DTypePolicy}
    return {
        "layer": Registry(layers, {}),
        "cell": Registry(cells, {}),
        "initializer": Registry(init, _strings(_initializers.ALL_OBJECTS_DICT, init)),
        "regularizer": Registry(reg, _strings(_regularizers.ALL_OBJECTS_DICT, reg)),
        "constraint": Registry(con, _strings(_constraints.ALL_OBJECTS_DICT, con)),
        "activation": Registry({}, dict(_activations.ALL_OBJECTS_DICT)),
        # keras.optimizers.get() lower-cases names, so the shorthand is case-insensitive.
        "optimizer": Registry(opt, {k.lower(): v for k, v in opt.items()}),
        "schedule": Registry(sched, {}),
        "loss": Registry(loss, _strings(_losses.ALL_OBJECTS_DICT, loss)),
        "metric": Registry(metric, metric_strings),
        "dtype_policy": Registry(policies, {}),
        "model": Registry({"Functional": keras.Model, "Sequential": keras.Sequential,
                           "Model": keras.Model}, {}),
        "input_layer": Registry({"InputLayer": keras.layers.InputLayer}, {}),
    }


REGISTRIES: dict[Category, Registry] = _build()
# Categories a user-written spec may name; "model"/"input_layer" only appear in imports.
SPEC_CATEGORIES: tuple[Category, ...] = (
    "layer", "cell", "initializer", "regularizer", "constraint", "activation",
    "optimizer", "schedule", "loss", "metric", "dtype_policy",
)
ALL_CATEGORIES: tuple[Category, ...] = (*SPEC_CATEGORIES, "model", "input_layer")


def allowed_layers() -> dict[str, type[Any]]:
    """Layer type names (aliases included) a spec may use, mapped to their class."""
    return dict(REGISTRIES["layer"].classes)


def refuse(pointer: str, detail: str) -> Exception:
    return invalid(detail, [FieldError(pointer, detail)])


def _denied_reason(name: str) -> str | None:
    if name == "__lambda__":
        return ("it carries arbitrary Python code, which the service never runs; use a "
                "built-in by name (e.g. \"relu\", \"mse\") or its class")
    return DENIED_LAYERS.get(name) or DENIED_OBJECTS.get(name)


def _if_own(category: Category, what: str = "a class") -> str:
    return f" (if it is {what} of your own: {INSTEAD[category]})" if category in INSTEAD else ""


def resolve_class(category: Category, name: Any, pointer: str) -> type[Any]:
    """The allowlisted class for `name`, or a 422 naming the problem at `pointer`."""
    noun = NOUNS[category]
    if not isinstance(name, str) or not name:
        raise refuse(pointer, f"expected a {noun} class name (string), got {name!r}")
    reg = REGISTRIES[category]
    if name in reg.classes:
        return reg.classes[name]
    reason = _denied_reason(name)
    if reason:
        raise refuse(pointer, f"{noun} '{name}' is not allowed: {reason}")
    hint = did_you_mean(name, sorted(reg.classes))
    raise refuse(pointer, f"unknown {noun} '{name}'{hint}{_if_own(category)}")


def resolve_string(category: Category, name: str, pointer: str) -> str:
    """Check a string shorthand (e.g. "adam", "mse", "glorot_uniform")."""
    reg = REGISTRIES[category]
    key = name.lower() if category == "optimizer" else name
    if key in reg.strings:
        return name
    reason = _denied_reason(name)
    if reason:
        raise refuse(pointer, f"{NOUNS[category]} '{name}' is not allowed: {reason}")
    choices = sorted(reg.strings) or sorted(reg.classes)
    hint = did_you_mean(key, choices)
    raise refuse(pointer, f"unknown {NOUNS[category]} '{name}'{hint}"
                          f"{_if_own(category, 'a function or class')}")


def category_of(name: str, categories: tuple[Category, ...]) -> Category | None:
    """First category in `categories` that allows class `name`."""
    for cat in categories:
        if name in REGISTRIES[cat].classes:
            return cat
    return None
