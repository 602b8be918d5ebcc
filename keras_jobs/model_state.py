"""What a fit reads from and writes back into the notebook's Keras model: its input and output
names, the name its starting point is stored under, a key for its whole state (config,
compile settings, weights, optimizer state) so an unchanged model is not uploaded again, and
the trained version's weights and optimizer state copied back into it. NumPy is imported when
a call needs it."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def input_names(model: Any) -> list[str]:
    try:
        return [str(t.name) for t in model.inputs]
    except (AttributeError, ValueError, TypeError):  # a subclassed or unbuilt model
        return []


def output_names(model: Any) -> list[str]:
    try:
        return [str(n) for n in model.output_names]
    except (AttributeError, ValueError, TypeError):
        return []


def start_name(name: str) -> str:
    """The model a fit's starting point is stored under (a name the registry takes)."""
    return f"{name[:94]}.start"


def state_key(model: Any, name: str) -> str:
    """`name` with fingerprints of the model's weights and optimizer state and of its config
    and compile settings: equal keys, the same starting point."""
    import numpy as np

    from keras_jobs.arrays import fingerprint

    state = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    optimizer = getattr(model, "optimizer", None)
    for i, v in enumerate(getattr(optimizer, "variables", None) or []):
        state[f"o{i}"] = np.asarray(v)
    config = json.dumps([model.to_json(), model.get_compile_config()], sort_keys=True,
                        default=str)
    return f"{name}|{fingerprint(state)}|{hashlib.sha256(config.encode()).hexdigest()}"


def take_trained(model: Any, trained: Any) -> None:
    """Leave in `model` what `model.fit` would have: `trained`'s weights and, where the
    optimizers match, its optimizer state (step count, moments)."""
    model.set_weights(trained.get_weights())
    source, target = getattr(trained, "optimizer", None), getattr(model, "optimizer", None)
    if source is None or target is None or not getattr(source, "built", False):
        return
    if not getattr(target, "built", False):
        target.build(model.trainable_variables)
    pairs = list(zip(target.variables, source.variables, strict=False))
    if len(target.variables) == len(source.variables) and all(
            tuple(t.shape) == tuple(s.shape) for t, s in pairs):
        for t, s in pairs:
            t.assign(s)
