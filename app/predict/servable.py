"""A saved model made ready to serve: loaded once (no compile, safe mode) and wrapped in a
`tf.function` with a fixed input signature (batch dimension None), so a request costs one
graph call instead of a `model.predict` (~40 ms of per-call overhead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.predict.signature import TensorInfo, numpy_dtype_of
from app.specs.activations import activations

__all__ = ["Servable", "TensorInfo"]


class Servable:
    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        from app.registry.keras_load import load_keras

        model = load_keras(path, compile=False)  # assets unpacked in the store, not /tmp
        self.inputs = [TensorInfo(t.name, tuple(t.shape), str(t.dtype)) for t in model.inputs]
        # Functional models name their outputs; a Sequential's one output is its last layer.
        names = getattr(model, "output_names", None) or [model.layers[-1].name]
        self.outputs = [TensorInfo(n, tuple(t.shape), str(t.dtype))
                        for n, t in zip(names, model.outputs, strict=True)]
        signature = [tf.TensorSpec(shape=i.shape, dtype=i.dtype, name=i.name)
                     for i in self.inputs]
        single = len(self.inputs) == 1
        # A model built on a dict of inputs takes a dict; model.inputs is in its sorted keys.
        struct = getattr(model, "_inputs_struct", None)
        keys = sorted(struct) if isinstance(struct, dict) and not single else None
        # What the weights hold: the cache's memory budget counts this.
        self.nbytes = int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize
                              for w in model.weights))
        # What its layers output per row (app.specs.activations): bounds the batch it may run.
        self.activations = activations(model)
        self.traces = 0  # how often TensorFlow traced `call` (tests check warm-up covers all)

        def call(*xs: Any) -> Any:
            self.traces += 1  # runs only while tracing
            out = model(xs[0] if single else dict(zip(keys, xs, strict=True)) if keys
                        else list(xs), training=False)
            if isinstance(out, dict):  # a dict-output model: in the order of output_names
                return [out[n] for n in names]
            return list(out) if isinstance(out, (list, tuple)) else [out]

        self._model = model
        self._fn = tf.function(call, input_signature=signature)

    def __call__(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run one batch; `arrays` are in the order of `self.inputs`."""
        return [t.numpy() for t in self._fn(*arrays)]

    def example(self) -> list[np.ndarray]:
        """One row of zeros per input (free dimensions as 1), for warming up."""
        return [np.zeros([1, *(d or 1 for d in i.shape[1:])],
                         dtype=np.str_ if i.dtype == "string" else numpy_dtype_of(i.dtype))
                for i in self.inputs]
