"""A live, compiled Keras model as a spec in the service's import form:
`{"name", "keras_config": model.to_json(), "compile": {...}}`.

The compile block is rebuilt from the model's own objects with Keras's serializer, so what
the user passed to `compile()` (a name, an optimizer object with its settings, a metric
instance) arrives as Keras's `{"class_name", "config"}` form and the service's allowlist
decides: a custom loss or metric is refused there, with a pointer, not guessed at here."""

from __future__ import annotations

import json
from typing import Any

# compile() arguments the spec's compile block takes besides optimizer and loss.
_OPTIONAL = ("loss_weights", "metrics", "weighted_metrics")


def model_spec(model: Any, name: str) -> dict[str, Any]:
    config = json.loads(model.to_json())
    # The service ignores an imported config's compile_config (the spec's compile block is
    # the one source of compile settings); sent, it would only be checked twice, and a
    # refusal would point into the copy that does not count.
    config.pop("compile_config", None)
    # Sent as the JSON text model.to_json() gives (the import form takes it as a string or
    # parsed): the service parses a string afresh for each build. A parsed config is handed to
    # Keras as it came, and deserializing a Functional model empties nested dicts of it, so
    # the spec it stores could not be built again by the worker.
    return {"name": name, "keras_config": json.dumps(config), "compile": compile_block(model)}


def compile_block(model: Any) -> dict[str, Any]:
    """optimizer, loss, loss_weights, metrics and weighted_metrics of a compiled model.

    jit_compile goes when it was given as true or false; Keras's default "auto" is left out,
    and the worker then runs without XLA (auto would turn it on for GPU workers only, and
    CPU and GPU workers should agree unless asked otherwise). run_eagerly and
    steps_per_execution are left out: they say how a machine runs the model, not what it
    learns."""
    from keras.saving import serialize_keras_object

    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise ValueError("compile the model first (model.compile(optimizer=..., loss=...)): "
                         "the job trains with its optimizer, loss and metrics")
    block: dict[str, Any] = {"optimizer": serialize_keras_object(model.optimizer),
                             "loss": serialize_keras_object(model.loss)}
    # get_compile_config() holds what was passed to compile(), serialized; model.metrics
    # would be Keras's wrappers, built only after the first batch.
    config = model.get_compile_config() or {}
    for key in _OPTIONAL:
        if config.get(key) is not None:
            block[key] = config[key]
    if isinstance(config.get("jit_compile"), bool):
        block["jit_compile"] = config["jit_compile"]
    return block
