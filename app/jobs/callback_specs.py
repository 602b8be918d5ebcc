"""The Keras callbacks a job may ask for, by name with their arguments (JSON scalars only).

Checked in the API when the job is submitted and built again in the worker; nothing else is
reachable: no ModelCheckpoint paths, no LambdaCallback code, no CSVLogger files.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import FieldError, did_you_mean, invalid

ALLOWED = ("EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN")


def build(specs: list[dict[str, Any]], pointer: str = "/callbacks") -> list[Any]:
    import keras

    from app.specs.arg_types import check_arg_types
    from app.specs.construct import check_kwargs, first_line

    out = []
    for i, spec in enumerate(specs):
        ptr = f"{pointer}/{i}"
        name = spec.get("type")
        if name not in ALLOWED:
            raise invalid(f"Callback '{name}' is not available{did_you_mean(str(name), ALLOWED)}.",
                          [FieldError(f"{ptr}/type", f"one of {', '.join(ALLOWED)}")])
        kwargs = {k: v for k, v in spec.items() if k != "type"}
        for key, value in kwargs.items():
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise invalid("Callback arguments are plain values.",
                              [FieldError(f"{ptr}/{key}", "expected a string, number or bool")])
        cls = getattr(keras.callbacks, name)
        check_kwargs(cls, kwargs, ptr, "callback")
        check_arg_types(cls, kwargs, ptr)  # `"patience": true` is not 1
        try:
            out.append(cls(**kwargs))
        except (TypeError, ValueError) as exc:
            raise invalid(f"Callback {name} rejected its arguments.",
                          [FieldError(ptr, first_line(exc))]) from exc
    return out
