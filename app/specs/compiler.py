"""The spec's `compile` block -> model.compile(), every object checked against the allowlist.

jit_compile is passed to compile as given (true, false or "auto"); absent, it is false rather
than Keras's "auto", which turns XLA on for GPU workers only: a job that does not ask for XLA
computes the same on every worker.

Mixed precision: a `mixed_float16` model compiled by Keras gets its optimizer wrapped in a
LossScaleOptimizer (dynamic loss scaling); a spec may name that wrapper (as a notebook
model's serialized optimizer does) with its inner optimizer and scaling settings, and it is
rebuilt as given. Without it, the optimizer is wrapped with Keras's defaults when any layer
runs under mixed_float16 (what compile does for a model built under that global policy).
"""

from __future__ import annotations

import inspect
from typing import Any

from app.specs.allowlist import REGISTRIES, Category, refuse, resolve_class, resolve_string
from app.specs.construct import check_kwargs, instantiate, pointer_join
from app.specs.keras_config import normalize

COMPILE_KEYS = frozenset({"optimizer", "loss", "loss_weights", "metrics", "weighted_metrics",
                          "jit_compile", "auto_scale_loss"})
LOSS_SCALE_OPTIMIZER = "LossScaleOptimizer"
_LOSS_SCALE_KEYS = frozenset({"name", "inner_optimizer", "initial_scale",
                              "dynamic_growth_steps"})


def compile_model(model: Any, compile_block: dict[str, Any], pointer: str = "/compile") -> None:
    """Check `compile_block` and compile `model` with it; problems are 422s under `pointer`."""
    if not isinstance(compile_block, dict):
        raise refuse(pointer, "expected an object with optimizer, loss and optional metrics")
    for key in compile_block:
        if key not in COMPILE_KEYS:
            raise refuse(pointer_join(pointer, key), f"unknown key '{key}' (allowed: "
                                                     f"{', '.join(sorted(COMPILE_KEYS))})")
    jit_compile = compile_block.get("jit_compile", False)
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise refuse(pointer_join(pointer, "jit_compile"),
                     f'expected true, false or "auto", got {jit_compile!r}')
    auto_scale_loss = compile_block.get("auto_scale_loss", True)
    if not isinstance(auto_scale_loss, bool):
        raise refuse(pointer_join(pointer, "auto_scale_loss"),
                     f"expected true or false, got {auto_scale_loss!r}")
    for key in ("optimizer", "loss"):
        if key not in compile_block:
            raise refuse(pointer_join(pointer, key), f"missing '{key}'")
    outputs = list(getattr(model, "output_names", None) or [])
    n_out = len(model.outputs)
    optimizer = _optimizer(compile_block["optimizer"], pointer_join(pointer, "optimizer"))
    loss = _per_output(compile_block["loss"], pointer_join(pointer, "loss"), outputs, n_out,
                       lambda v, p: _object("loss", v, p))
    kwargs: dict[str, Any] = {}
    if "loss_weights" in compile_block:
        kwargs["loss_weights"] = _per_output(
            compile_block["loss_weights"], pointer_join(pointer, "loss_weights"), outputs,
            n_out, _weight)
    for key in ("metrics", "weighted_metrics"):
        if key in compile_block and compile_block[key] is not None:
            kwargs[key] = _metrics(compile_block[key], pointer_join(pointer, key), outputs)
    if auto_scale_loss and _mixed_float16(model):
        optimizer = _loss_scaled(optimizer)
    try:
        model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile,
                      auto_scale_loss=auto_scale_loss, **kwargs)
    except Exception as exc:  # structure mismatches Keras detects itself
        raise refuse(pointer, f"cannot compile the model: {' '.join(str(exc).split())}") \
            from exc


def _mixed_float16(model: Any) -> bool:
    """Whether any layer computes in float16 under mixed_float16. Keras wraps the optimizer
    when the model's own policy is mixed_float16 (a model built under that global policy); a
    model rebuilt from its config here has float32 as its own, with its layers' kept."""
    return any(getattr(getattr(layer, "dtype_policy", None), "name", None) == "mixed_float16"
               for layer in model._flatten_layers(include_self=True, recursive=True))


def _loss_scaled(optimizer: Any) -> Any:
    import keras

    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def _optimizer(value: Any, pointer: str) -> Any:
    """An optimizer; a LossScaleOptimizer is rebuilt around its (allowlisted) inner one."""
    if not isinstance(value, dict) or value.get("class_name") != LOSS_SCALE_OPTIMIZER:
        return _object("optimizer", value, pointer)
    import keras

    config = value.get("config")
    cfg_ptr = pointer_join(pointer, "config")
    if not isinstance(config, dict) or "inner_optimizer" not in config:
        raise refuse(pointer, "a LossScaleOptimizer needs a config with its inner_optimizer")
    for key in config:
        if key not in _LOSS_SCALE_KEYS:
            raise refuse(pointer_join(cfg_ptr, key), f"unknown key '{key}' (allowed: "
                                                     f"{', '.join(sorted(_LOSS_SCALE_KEYS))})")
    inner = _object("optimizer", config["inner_optimizer"],
                    pointer_join(cfg_ptr, "inner_optimizer"))
    if isinstance(inner, str):
        inner = keras.optimizers.get(inner)
    scale = config.get("initial_scale", 2.0**15)
    steps = config.get("dynamic_growth_steps", 2000)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise refuse(pointer_join(cfg_ptr, "initial_scale"), "expected a positive number")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise refuse(pointer_join(cfg_ptr, "dynamic_growth_steps"),
                     "expected a positive integer")
    return keras.optimizers.LossScaleOptimizer(inner, initial_scale=float(scale),
                                               dynamic_growth_steps=steps)


def _object(category: Category, value: Any, pointer: str) -> Any:
    """A string shorthand (kept as is for Keras to resolve) or a constructed object."""
    if isinstance(value, str):
        resolve_string(category, value, pointer)
        target = REGISTRIES[category].strings.get(
            value.lower() if category == "optimizer" else value)
        if inspect.isclass(target):
            _, required = _ctor(target)
            if required:
                raise refuse(pointer, f"{category} '{value}' needs arguments "
                                      f"({', '.join(sorted(required))}); give it as "
                                      '{"class_name": ..., "config": {...}}')
            if category == "optimizer":
                return target()
        return value
    if not isinstance(value, dict) or "class_name" not in value:
        raise refuse(pointer, f'expected a {category} name or {{"class_name": ..., '
                              '"config": {...}}')
    if value["class_name"] == "function":  # a built-in loss/metric function, e.g. from a .keras
        return _object(category, normalize(value, pointer, category), pointer)
    cls = resolve_class(category, value["class_name"], pointer_join(pointer, "class_name"))
    checked = normalize(value, pointer, category)
    cfg_ptr = pointer_join(pointer, "config")
    check_kwargs(cls, checked["config"], cfg_ptr, category)
    return instantiate(cls, checked["config"], cfg_ptr, category)


def _ctor(cls: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    from app.specs.construct import constructor_params

    return constructor_params(cls)


def _weight(value: Any, pointer: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise refuse(pointer, f"expected a non-negative number, got {value!r}")
    return float(value)


def _check_output_names(value: dict[str, Any], pointer: str, outputs: list[str]) -> None:
    for key in value:
        if key not in outputs:
            raise refuse(pointer_join(pointer, key), f"unknown output '{key}' "
                                                     f"(outputs: {', '.join(outputs)})")


def _per_output(value: Any, pointer: str, outputs: list[str], n_out: int,
                item: Any) -> Any:
    """One item for all outputs, a list (one per output) or a dict keyed by output name."""
    if isinstance(value, dict) and "class_name" not in value:
        _check_output_names(value, pointer, outputs)
        return {k: item(v, pointer_join(pointer, k)) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) != n_out:
            raise refuse(pointer, f"expected {n_out} entries, one per output "
                                  f"({', '.join(outputs)}), got {len(value)}")
        return [item(v, pointer_join(pointer, i)) for i, v in enumerate(value)]
    return item(value, pointer)


def _metric_list(value: Any, pointer: str) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    ptrs = [pointer_join(pointer, i) if isinstance(value, list) else pointer
            for i in range(len(items))]
    return [_object("metric", v, p) for v, p in zip(items, ptrs, strict=True)]


def _metrics(value: Any, pointer: str, outputs: list[str]) -> Any:
    if isinstance(value, dict) and "class_name" not in value:
        _check_output_names(value, pointer, outputs)
        return {k: _metric_list(v, pointer_join(pointer, k)) for k, v in value.items()}
    if not isinstance(value, list):
        raise refuse(pointer, "expected a list of metrics or {output name: [metrics]}")
    return _metric_list(value, pointer)


# Keys Keras writes into a saved model's compile_config on top of a spec's compile block, each
# with the one value a spec's compile implies (model.compile's defaults).
SAVED_COMPILE_FIXED: dict[str, Any] = {"run_eagerly": False, "steps_per_execution": 1}


def check_compile_config(model: Any, compile_config: Any, pointer: str) -> None:
    """Check a saved model's `compile_config` (what `load_model(compile=True)` hands to
    `model.compile`) against the same allowlist as a spec's compile block, by compiling `model`
    with it exactly as compile_model does. Nulls count as absent; run_eagerly and
    steps_per_execution may only hold their defaults. Problems are 422s under `pointer`."""
    if not isinstance(compile_config, dict):
        raise refuse(pointer, "expected an object with optimizer, loss and optional metrics")
    block: dict[str, Any] = {}
    for key, value in compile_config.items():
        if value is None:
            continue
        if key in SAVED_COMPILE_FIXED:
            fixed = SAVED_COMPILE_FIXED[key]
            if type(value) is not type(fixed) or value != fixed:
                raise refuse(pointer_join(pointer, key),
                             f"only {str(fixed).lower()} is accepted, got {value!r}")
            continue
        block[key] = value
    compile_model(model, block, pointer)


def keep_loss_scaling(model: Any) -> None:
    """A saved mixed_float16 model loads compiled with its inner optimizer alone: Keras wraps
    by the model's own policy, which is float32 once loaded. Compile it again from its own
    compile config, as a spec would be, so training it keeps Keras's loss scaling."""
    import keras

    if _mixed_float16(model) and not isinstance(model.optimizer,
                                                 keras.optimizers.LossScaleOptimizer):
        check_compile_config(model, model.get_compile_config(), "/from_model")
