"""JSON model spec -> Keras model, with every name checked against the allowlist first.

A spec has one of three forms (top-level keys: name, description, inputs, layers, outputs,
compile, keras_config):

Sequential: no layer names `inputs` and there is no `outputs`; exactly one input. Layers are
built in order with keras.Sequential, consuming Keras's random state exactly as the
equivalent hand-written `keras.Sequential([keras.Input(...), layer, ...])` does.

Graph: some layer has `inputs` or `call_kwargs`, or the spec lists `outputs`. Each layer's
`inputs` is
  - absent:              the output of the layer just before it (the sole model input if first)
  - "ref":               one call on one tensor
  - ["a", "b"]:          one call on a list of tensors (Concatenate, Add, Attention, ...);
                         MultiHeadAttention/GroupQueryAttention get them positionally as
                         (query, value[, key])
  - [["a"], ["b"]]:      a shared layer: the same layer object called once per inner list
A ref ["name", i] counts as one ref in these forms: ["enc", 1] is one call on one tensor,
[["enc", 1], ["enc", 2]] one call on a list of two; a shared layer called on such refs is
[[["enc", 1]], [["enc", 2]]].
A ref is a spec input name or an earlier layer's name. "name" means that layer's last call,
"name:0", "name:1", ... its n-th call (0-based) for shared layers. A layer that returns
several tensors (an LSTM with return_state=True: [output, h, c]) is referred to by one of them:
["name", 1] (or ["name:0", 1]); its plain name is refused. `outputs` lists refs; a single
output makes a single-output model. Several inputs make the model take a dict
{input name: array}; one input takes a plain array.

A layer's `call_kwargs` passes keyword arguments of its call(): refs (a string or ["name", n]),
lists of refs, or JSON scalars (true/false, numbers, null), e.g.
{"type": "LSTM", "units": 32, "inputs": "dec_emb",
 "call_kwargs": {"initial_state": [["enc", 1], ["enc", 2]]}}
Only the names of that layer's call() signature are taken (not its first, the inputs).

Import: `keras_config` holds model.to_json() output (string or parsed); it is checked with
check_keras_config and deserialized in safe mode. Its compile_config is ignored: the spec's
`compile` block is the only source of compile settings.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core.errors import did_you_mean
from app.core.json_limits import check_depth, check_storable
from app.specs.allowlist import refuse, resolve_class
from app.specs.arg_types import check_arg_types
from app.specs.compiler import compile_model
from app.specs.construct import check_kwargs, first_line, instantiate, pointer_join
from app.specs.keras_config import check_keras_config, key_category, normalize
from app.specs.limits import check_strings
from app.specs.model_info import adapt_layers, describe

if TYPE_CHECKING:
    import keras

__all__ = ["adapt_layers", "build_compiled", "build_model", "check_keras_config",
           "compile_model", "compile_spec", "describe"]

SPEC_KEYS = frozenset({"name", "description", "inputs", "layers", "outputs", "compile",
                       "keras_config"})
INPUT_KEYS = frozenset({"name", "shape", "dtype"})
INPUT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "int8", "int16",
                          "int32", "int64", "uint8", "bool", "string"})
LAYER_META = frozenset({"type", "inputs", "call_kwargs"})
# Layers whose call() takes (query, value, key) as separate arguments.
POSITIONAL_CALL = frozenset({"MultiHeadAttention", "GroupedQueryAttention"})
# Arguments that Keras reads as a file path when given a string.
PATH_ARGS = frozenset({"vocabulary", "idf_weights"})
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")  # fullmatch: no "x\n"


@dataclass
class _Layer:
    index: int
    pointer: str
    cls: type[Any]
    type_name: str
    name: str | None
    kwargs: dict[str, Any]
    calls: list[list[tuple[Ref, str]]] | None  # per call: (ref, pointer); None = previous
    # call() keyword arguments: a (ref, pointer), a list of them, or a JSON scalar.
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    outputs: list[Any] = field(default_factory=list)


# A tensor reference: "name" / "name:n" (the n-th call), or ["name", i] (its i-th output).
Ref = str | list[Any]


def _is_pair(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) or _is_pair(value)


def build_model(spec: dict[str, Any]) -> keras.Model:
    """Validate `spec` and build its (uncompiled) model; any problem is a 422 DomainError."""
    if not isinstance(spec, dict):
        raise refuse("", "expected the model spec as a JSON object")
    for key in spec:
        if key not in SPEC_KEYS:
            raise refuse(pointer_join("", key), f"unknown key '{key}' (allowed: "
                                                f"{', '.join(sorted(SPEC_KEYS))})")
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not NAME_RE.fullmatch(name)):
        raise refuse("/name", "expected a name of letters, digits, '_', '.', '-' (≤100)")
    if "keras_config" in spec:
        for key in ("inputs", "layers", "outputs"):
            if key in spec:
                raise refuse(f"/{key}", f"'{key}' cannot be combined with 'keras_config': "
                                        "give either a layer spec or an imported config")
        return _import(spec["keras_config"])
    inputs = _inputs(spec.get("inputs"))
    layers = _layers(spec.get("layers"), set(inputs))
    graph = "outputs" in spec or any(layer.calls is not None or layer.call_kwargs
                                     for layer in layers)
    if not graph:
        return _sequential(name, inputs, layers)
    return _graph(name, inputs, layers, spec["outputs"] if "outputs" in spec else None)


def build_compiled(spec: dict[str, Any]) -> keras.Model:
    model = build_model(spec)
    compile_spec(model, spec)
    return model


def compile_spec(model: keras.Model, spec: dict[str, Any]) -> None:
    """Compile `model` with the spec's `compile` block (which must be there)."""
    if "compile" not in spec:
        raise refuse("/compile", "missing 'compile' block (optimizer, loss, metrics)")
    compile_model(model, spec["compile"])


def _inputs(raw: Any) -> dict[str, tuple[str, tuple[int | None, ...], str]]:
    """name -> (pointer, shape without batch dim, dtype)."""
    if not isinstance(raw, list) or not raw:
        raise refuse("/inputs", 'expected a non-empty list of inputs {"name", "shape"}')
    out: dict[str, tuple[str, tuple[int | None, ...], str]] = {}
    for i, item in enumerate(raw):
        ptr = f"/inputs/{i}"
        if not isinstance(item, dict):
            raise refuse(ptr, 'expected an object {"name", "shape", "dtype"?}')
        for key in item:
            if key not in INPUT_KEYS:
                raise refuse(pointer_join(ptr, key), f"unknown key '{key}' in an input "
                                                     "(allowed: dtype, name, shape)")
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise refuse(f"{ptr}/name", "expected a name of letters, digits, '_', '.', '-'")
        if name in out:
            raise refuse(f"{ptr}/name", f"duplicate input name '{name}'")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                for d in shape):
            raise refuse(f"{ptr}/shape", "expected a list of positive integers or null "
                                         "(without the batch dimension)")
        dtype = item.get("dtype", "float32")
        if not isinstance(dtype, str) or dtype not in INPUT_DTYPES:
            raise refuse(f"{ptr}/dtype", f"unknown dtype {dtype!r} (allowed: "
                                         f"{', '.join(sorted(INPUT_DTYPES))})")
        out[name] = (ptr, tuple(shape), dtype)
    return out


def _layers(raw: Any, input_names: set[str]) -> list[_Layer]:
    """Check every layer spec (names, refs, arguments) without constructing anything."""
    if not isinstance(raw, list) or not raw:
        raise refuse("/layers", 'expected a non-empty list of layers {"type", ...}')
    seen: dict[str, int] = {}  # every layer name -> index, so refs can say "later"
    for i, item in enumerate(raw):
        ptr = f"/layers/{i}"
        if not isinstance(item, dict):
            raise refuse(ptr, 'expected a layer object {"type": ..., <arguments>}')
        name = item.get("name")
        if name is not None:
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                raise refuse(f"{ptr}/name", "expected a name of letters, digits, '_', '.', '-'")
            if name in input_names or name in seen:
                raise refuse(f"{ptr}/name", f"duplicate name '{name}' (layer and input "
                                            "names must be unique)")
            seen[name] = i
    layers: list[_Layer] = []
    for i, item in enumerate(raw):
        ptr = f"/layers/{i}"
        if "type" not in item:
            raise refuse(f"{ptr}/type", "missing layer 'type' (e.g. \"Dense\")")
        cls = resolve_class("layer", item["type"], f"{ptr}/type")
        name = item.get("name")
        kwargs = {k: v for k, v in item.items() if k not in LAYER_META}
        check_kwargs(cls, kwargs, ptr, f"layers/{i}")
        check_arg_types(cls, kwargs, ptr)
        for arg in PATH_ARGS & kwargs.keys():
            if isinstance(kwargs[arg], str):
                raise refuse(f"{ptr}/{arg}", f"'{arg}' must be a list: file paths are refused")
        checked = {k: normalize(v, pointer_join(ptr, k), key_category(k, "layer"))
                   for k, v in kwargs.items()}
        calls = (_calls(item["inputs"], f"{ptr}/inputs", input_names, seen, i)
                 if "inputs" in item else None)
        call_kwargs = (_call_kwargs(cls, item["call_kwargs"], f"{ptr}/call_kwargs",
                                    input_names, seen, i) if "call_kwargs" in item else {})
        layers.append(_Layer(i, ptr, cls, item["type"], name, checked, calls, call_kwargs))
    return layers


def _call_params(cls: type[Any]) -> list[str]:
    """The keyword names of cls.call(), without self and the first (the inputs)."""
    params = list(inspect.signature(cls.call).parameters.values())[1:]
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named[1:] if cls.__name__ not in POSITIONAL_CALL else named[2:]


def _call_kwargs(cls: type[Any], raw: Any, ptr: str, input_names: set[str],
                 seen: dict[str, int], index: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise refuse(ptr, 'expected an object {"<call argument>": <ref, [refs] or a scalar>}')
    allowed = [p for p in _call_params(cls) if p != "training"]
    out: dict[str, Any] = {}
    for key, value in raw.items():
        kptr = pointer_join(ptr, key)
        if key == "training":  # Keras's functional models pass their own, overriding it
            raise refuse(kptr, "'training' is set by Keras itself: true in fit, false in "
                               "evaluate and predict")
        if key not in allowed:
            takes = ", ".join(allowed) if allowed else "none"
            raise refuse(kptr, f"{cls.__name__}'s call() has no argument '{key}' (it takes "
                               f"{takes}){did_you_mean(key, allowed)}")
        if _is_ref(value):
            out[key] = (_check_ref(value, kptr, input_names, seen, index), kptr)
        elif isinstance(value, list) and value and all(_is_ref(v) for v in value):
            out[key] = [(_check_ref(v, pointer_join(kptr, j), input_names, seen, index),
                         pointer_join(kptr, j)) for j, v in enumerate(value)]
        elif value is None or isinstance(value, (bool, int, float)):
            out[key] = value
        else:
            raise refuse(kptr, 'expected a ref ("name" or ["name", output]), a list of refs, '
                               "or true/false, a number or null")
    return out


def _check_ref(ref: Any, rptr: str, input_names: set[str], seen: dict[str, int],
               index: int) -> Ref:
    if not _is_ref(ref):
        raise refuse(rptr, 'expected a layer or input name, or ["name", output index]')
    name = ref[0] if isinstance(ref, list) else ref
    base = name.split(":", 1)[0]
    if base not in input_names and base not in seen:
        hint = did_you_mean(base, input_names | set(seen))
        raise refuse(rptr, f"unknown input or layer '{base}'{hint}")
    if base in seen and seen[base] >= index:
        raise refuse(rptr, f"'{base}' is this layer or a later one: a layer may only "
                           "use inputs and layers listed before it")
    return ref  # type: ignore[no-any-return]


def _calls(raw: Any, ptr: str, input_names: set[str], seen: dict[str, int],
           index: int) -> list[list[tuple[Ref, str]]]:
    if _is_ref(raw):  # one call on one tensor
        return [[(_check_ref(raw, ptr, input_names, seen, index), ptr)]]
    if isinstance(raw, list) and raw and all(_is_ref(r) for r in raw):  # one call, a list
        return [[(_check_ref(r, pointer_join(ptr, i), input_names, seen, index),
                  pointer_join(ptr, i)) for i, r in enumerate(raw)]]
    if not (isinstance(raw, list) and raw and all(isinstance(g, list) for g in raw)):
        raise refuse(ptr, 'expected "ref", ["ref", ...] or [["ref", ...], ...] (one inner '
                          'list per call of a shared layer); a ref is a name or ["name", '
                          "output index]")
    calls: list[list[tuple[Ref, str]]] = []
    for g, group in enumerate(raw):  # a shared layer: one inner list per call
        if not group:
            raise refuse(pointer_join(ptr, g), "a call needs at least one input")
        calls.append([(_check_ref(r, f"{ptr}/{g}/{i}", input_names, seen, index),
                       f"{ptr}/{g}/{i}") for i, r in enumerate(group)])
    return calls


def _construct(layer: _Layer) -> Any:
    return instantiate(layer.cls, layer.kwargs, layer.pointer, f"layers/{layer.index}")


def _input_tensor(name: str, spec: tuple[str, tuple[int | None, ...], str]) -> Any:
    import keras

    return keras.Input(shape=spec[1], dtype=spec[2], name=name)


_RANK_RE = re.compile(r"expected (min_|max_)?ndim=(\d+), found ndim=(\d+)")
_RANK_OPS = {None: "=", "min_": "≥", "max_": "≤"}


def _call_error(layer: _Layer, exc: Exception, shapes: Any) -> Exception:
    where = f"layers/{layer.index} ({layer.type_name})"
    rank = _RANK_RE.search(str(exc))
    if rank:  # Keras's InputSpec message, said the way a user thinks of it
        op = _RANK_OPS[rank.group(1)]
        return refuse(layer.pointer, f"{where} expects input rank {op} {rank.group(2)} "
                                     f"(batch included), got {shapes}")
    return refuse(layer.pointer, f"{where} cannot be applied to input shape {shapes}: "
                                 f"{first_line(exc)}")


def _sequential(name: str | None, inputs: dict[str, Any], layers: list[_Layer]) -> keras.Model:
    import keras

    if len(inputs) != 1:
        raise refuse("/inputs", "a sequential spec takes exactly one input; name each "
                                "layer's `inputs` to build a graph with several")
    # Construct all layers, then build once, exactly as keras.Sequential([keras.Input(...),
    # *layers]) does (the same order of random-state use). Adding them one by one would rebuild
    # the whole stack on every add: quadratic time, and a node per rebuild on every layer.
    objs = [_construct(layer) for layer in layers]
    (in_name, in_spec), = inputs.items()
    tensor = _input_tensor(in_name, in_spec)
    try:
        model = keras.Sequential([tensor, *objs], name=name)
    except Exception as exc:  # Keras raises ValueError/TypeError from the failing layer's call
        raise _sequential_error(layers, objs, tensor, exc) from exc
    if not model.built:  # Keras stops building, silently, at a layer that cannot infer shapes
        raise _sequential_error(layers, objs, tensor, None)
    return model


def _sequential_error(layers: list[_Layer], objs: list[Any], tensor: Any,
                      exc: Exception | None) -> Exception:
    """The error of the first layer the build did not get through (each layer it got through
    holds the node of that call), said at that layer with the shape it was given."""
    shape = tensor.shape
    for layer, obj in zip(layers, objs, strict=True):
        nodes = obj._inbound_nodes
        if not nodes:
            if exc is None:
                return refuse(layer.pointer, f"layers/{layer.index} ({layer.type_name}) cannot "
                                             f"infer its output shape from input shape {shape}")
            return _call_error(layer, exc, shape)
        shape = nodes[-1].outputs[0].shape
    if exc is None:  # pragma: no cover - Keras built every layer but not the model
        return refuse("/layers", "cannot assemble the model")
    return refuse("/layers", f"cannot assemble the model: {first_line(exc)}")


def _graph(name: str | None, inputs: dict[str, Any], layers: list[_Layer],
           outputs: Any) -> keras.Model:
    import keras

    if outputs is None:
        raise refuse("/outputs", "a graph spec must list its `outputs` (layer names)")
    input_tensors = {n: _input_tensor(n, s) for n, s in inputs.items()}
    produced: dict[str, list[Any]] = {n: [t] for n, t in input_tensors.items()}
    previous: Any = next(iter(input_tensors.values())) if len(inputs) == 1 else None
    for layer in layers:
        obj = _construct(layer)
        if layer.calls is None:
            if previous is None:
                raise refuse(f"{layer.pointer}/inputs", "this layer must name its `inputs` "
                                                        "(the model has several inputs)")
            groups: list[list[Any]] = [[previous]]
        else:
            groups = [[_ref(ref, rptr, produced) for ref, rptr in call] for call in layer.calls]
        kwargs = {k: ([_ref(r, p, produced) for r, p in v] if isinstance(v, list)
                      else _ref(v[0], v[1], produced) if isinstance(v, tuple) else v)
                  for k, v in layer.call_kwargs.items()}
        for args in groups:
            shapes = [getattr(t, "shape", None) for t in args]
            try:
                if layer.cls.__name__ in POSITIONAL_CALL:
                    out = obj(*args, **kwargs)
                else:
                    out = obj(args[0] if len(args) == 1 else args, **kwargs)
            except Exception as exc:  # shape/dtype mismatch raised by the layer
                raise _call_error(layer, exc, shapes[0] if len(shapes) == 1 else shapes) from exc
            layer.outputs.append(out)
        if layer.name is not None:
            produced[layer.name] = layer.outputs
        previous = layer.outputs[-1]
    listed = isinstance(outputs, list) and not _is_pair(outputs)  # ["dec", 1] is one ref
    refs = outputs if listed else [outputs]
    if not refs:
        raise refuse("/outputs", "expected at least one output")
    outs = [_ref(r, pointer_join("/outputs", i) if listed else "/outputs",
                 produced, inputs_ok=False, inputs=set(inputs)) for i, r in enumerate(refs)]
    model_inputs: Any = (next(iter(input_tensors.values())) if len(input_tensors) == 1
                         else input_tensors)
    try:
        return keras.Model(inputs=model_inputs, outputs=outs[0] if len(outs) == 1 else outs,
                           name=name)
    except Exception as exc:  # e.g. an output not connected to the inputs
        raise refuse("/outputs", f"cannot assemble the model: {first_line(exc)}") from exc


def _ref(ref: Any, ptr: str, produced: dict[str, list[Any]], inputs_ok: bool = True,
         inputs: set[str] | None = None) -> Any:
    if not _is_ref(ref):
        raise refuse(ptr, "expected a layer name ('name:n' for the n-th call of a shared "
                          'layer), or ["name", i] for its i-th output')
    name, output = (ref[0], ref[1]) if isinstance(ref, list) else (ref, None)
    base, _, idx = name.partition(":")
    if base not in produced or (not inputs_ok and inputs and base in inputs):
        choices = [k for k in produced if inputs_ok or not inputs or k not in inputs]
        raise refuse(ptr, f"unknown layer '{base}'{did_you_mean(base, choices)}")
    calls = produced[base]
    if not idx:
        tensor = calls[-1]
    elif not idx.isdigit() or int(idx) >= len(calls):
        raise refuse(ptr, f"'{name}': layer '{base}' is called {len(calls)} time(s); "
                          f"use '{base}:0'..'{base}:{len(calls) - 1}'")
    else:
        tensor = calls[int(idx)]
    several = isinstance(tensor, (list, tuple))
    if output is None:
        if several:
            raise refuse(ptr, f"layer '{base}' returns {len(tensor)} tensors (e.g. "
                              f"return_state=True); take one as [\"{name}\", 0].."
                              f"[\"{name}\", {len(tensor) - 1}]")
        return tensor
    if not several:
        raise refuse(ptr, f"layer '{base}' returns one tensor; name it without an output "
                          "index")
    if not 0 <= output < len(tensor):
        raise refuse(ptr, f"layer '{base}' returns {len(tensor)} tensors; the output index "
                          f"is 0..{len(tensor) - 1}")
    return tensor[output]


def _import(raw: Any) -> keras.Model:
    import keras

    if isinstance(raw, str):
        check_depth(raw, "/keras_config")  # a string escapes the request body's depth check
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise refuse("/keras_config", f"not valid JSON: {exc}") from exc
        check_storable(raw, "/keras_config")  # NaN inside the string (the body held none)
        check_strings(raw, "/keras_config")
    check_keras_config(raw, "/keras_config")
    # A deep copy: Keras's functional deserialization empties the config it is given, and this
    # one is the stored spec (a fit job rebuilding it would find nothing to revive).
    config = copy.deepcopy({k: v for k, v in raw.items() if k != "compile_config"})
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as exc:  # malformed but allowlisted config
        raise refuse("/keras_config", f"cannot rebuild the model: {first_line(exc)}") from exc
    if not isinstance(model, keras.Model):
        raise refuse("/keras_config", "the config does not describe a model")
    return model
