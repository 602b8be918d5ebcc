"""TensorFlow Serving's REST format: parsing, decoding to arrays, encoding responses."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest

from app.core.errors import DomainError
from app.predict.codec import decode, encode, parse_json
from app.predict.signature import TensorInfo, check_array

X = TensorInfo("x", (None, 2), "float32")
A = TensorInfo("a", (None, 2), "float32")
B = TensorInfo("b", (None,), "int32")
Y = TensorInfo("y", (None, 1), "float32")
Z = TensorInfo("z", (None,), "float32")


def refused(exc: pytest.ExceptionInfo[DomainError], status: int = 400) -> DomainError:
    err = exc.value
    assert err.status == status
    assert err.extra["error"] == err.detail  # what TF Serving clients read
    return err


def old_encode(outputs: list[np.ndarray], infos: list[TensorInfo], fmt: str) -> Any:
    """The encoder this module replaced (dicts of .tolist()); the bytes must parse to this."""
    if fmt == "column":
        if len(outputs) == 1:
            return {"outputs": outputs[0].tolist()}
        return {"outputs": {i.name: o.tolist() for i, o in zip(infos, outputs, strict=True)}}
    if len(outputs) == 1:
        return {"predictions": outputs[0].tolist()}
    return {"predictions": [{i.name: o[r].tolist() for i, o in zip(infos, outputs, strict=True)}
                            for r in range(outputs[0].shape[0])]}


# parse_json


def test_parse_json_plain() -> None:
    assert parse_json(b'{"instances": [[1, 2.5]]}') == {"instances": [[1, 2.5]]}


def test_parse_json_accepts_non_finite_literals_like_tf_serving() -> None:
    body = parse_json(b'{"instances": [[NaN, Infinity], [-Infinity, 1.0]]}')
    values = body["instances"]
    assert math.isnan(values[0][0])
    assert values[0][1] == math.inf and values[1][0] == -math.inf and values[1][1] == 1.0


@pytest.mark.parametrize("raw", [b'{"instances": [[1e400, 1]]}', b'{"instances": [[-1e400]]}',
                                 b'{"instances": [[1e400, NaN]]}'])
def test_number_too_big_for_a_double_is_a_400(raw: bytes) -> None:
    with pytest.raises(DomainError) as exc:
        parse_json(raw)
    err = refused(exc)
    assert "not valid JSON" in err.detail


def test_tiny_number_underflows_to_zero() -> None:
    assert parse_json(b"[1e-400]") == [0.0]


@pytest.mark.parametrize("tail", [b"", b"NaN"])
def test_deep_nesting_is_a_400_not_an_exception(tail: bytes) -> None:
    # With "NaN" in the body orjson's refusal leads to the stdlib parser, which recurses.
    raw = b'{"instances": ' + b"[" * 100_000 + tail + b"]" * 100_000 + b"}"
    with pytest.raises(DomainError) as exc:
        parse_json(raw)
    refused(exc)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"a": NaNa}', b"\xff\xfe{}",
                                 b'{"a": 1,}'])
def test_unparsable_bodies_are_400(raw: bytes) -> None:
    with pytest.raises(DomainError) as exc:
        parse_json(raw)
    assert refused(exc).errors[0].pointer == ""


# decode


def test_row_single_input_promotes_ints_to_float32() -> None:
    arrays, fmt = decode(parse_json(b'{"instances": [[1, 2], [3, 4.5]]}'), [X])
    assert fmt == "row"
    assert arrays[0].dtype == np.float32
    np.testing.assert_array_equal(arrays[0], [[1, 2], [3, 4.5]])


def test_row_all_ints() -> None:
    arrays, _ = decode({"instances": [[1, 2]]}, [X])
    assert arrays[0].dtype == np.float32


def test_row_multi_input() -> None:
    body = {"instances": [{"a": [1, 2], "b": 7}, {"b": 8, "a": [3, 4]}]}
    (a, b), fmt = decode(body, [A, B])
    assert fmt == "row"
    np.testing.assert_array_equal(a, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(b, [7, 8])
    assert a.dtype == np.float32 and b.dtype == np.int32


def test_row_named_single_input() -> None:
    arrays, _ = decode({"instances": [{"x": [1, 2]}]}, [X])
    np.testing.assert_array_equal(arrays[0], [[1, 2]])


def test_row_missing_key_points_at_the_row() -> None:
    with pytest.raises(DomainError) as exc:
        decode({"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2]}]}, [A, B])
    assert refused(exc).errors[0].pointer == "/instances/1"


def test_column_single_and_multi_input() -> None:
    arrays, fmt = decode({"inputs": [[1, 2]]}, [X])
    assert fmt == "column" and arrays[0].shape == (1, 2)
    (a, b), fmt = decode({"inputs": {"b": [5, 6, 7], "a": [[1, 2]] * 3}}, [A, B])
    assert fmt == "column" and a.shape == (3, 2) and b.tolist() == [5, 6, 7]


def test_column_multi_input_needs_an_object() -> None:
    with pytest.raises(DomainError) as exc:
        decode({"inputs": [[1, 2]]}, [A, B])
    assert refused(exc).errors[0].pointer == "/inputs"


def test_shape_error_names_the_expected_signature() -> None:
    with pytest.raises(DomainError) as exc:
        decode({"instances": [[1, 2, 3, 4, 5]] * 3}, [X])
    err = refused(exc)
    assert "Input 'x' has shape [3, 5]; the model expects [None, 2] of float32" in err.detail
    assert err.errors[0].pointer == "/instances"
    assert "[None, 2] of float32" in err.errors[0].detail


def test_shape_error_in_a_named_column_points_at_it() -> None:
    with pytest.raises(DomainError) as exc:
        decode({"inputs": {"a": [[1, 2]], "b": [[1]]}}, [A, B])
    err = refused(exc)
    assert err.errors[0].pointer == "/inputs/b"
    assert "the model expects [None] of int32" in err.detail


@pytest.mark.parametrize("value", [[["a", "b"]], [[1, None]], [[1, 2], [3]], [[{"b64": "x"}, 1]],
                                   [[True, False]]])
def test_non_numeric_or_ragged_values_are_400_naming_the_signature(value: Any) -> None:
    with pytest.raises(DomainError) as exc:
        decode({"instances": value}, [X])
    assert "[None, 2] of float32" in refused(exc).detail


def test_deeply_nested_but_parsable_lists_are_400() -> None:
    raw = b'{"inputs": ' + b"[" * 200 + b"1" + b"]" * 200 + b"}"
    with pytest.raises(DomainError) as exc:
        decode(parse_json(raw), [X])
    refused(exc)


def test_float_overflowing_float32_is_400_but_non_finite_literals_pass() -> None:
    with pytest.raises(DomainError) as exc:
        decode({"instances": [[1e39, 1.0]]}, [X])
    assert "beyond the range of float32" in refused(exc).detail
    arrays, _ = decode(parse_json(b'{"instances": [[NaN, -Infinity]]}'), [X])
    assert np.isnan(arrays[0][0, 0]) and arrays[0][0, 1] == -np.inf
    assert arrays[0].dtype == np.float32


def test_integer_inputs_refuse_decimals_and_out_of_range_values() -> None:
    with pytest.raises(DomainError) as exc:
        decode({"inputs": {"a": [[1, 2]], "b": [1.5]}}, [A, B])
    assert refused(exc).errors[0].pointer == "/inputs/b"
    with pytest.raises(DomainError) as exc:
        decode({"inputs": {"a": [[1, 2]], "b": [2**40]}}, [A, B])
    assert "outside the range of int32" in refused(exc).detail


@pytest.mark.parametrize("body", [[], {"instances": [], }, {"instances": {}},
                                  {"instances": [[1, 2]], "inputs": [[1, 2]]}, {"foo": 1}])
def test_malformed_bodies_are_400(body: Any) -> None:
    with pytest.raises(DomainError) as exc:
        decode(body, [X])
    refused(exc)


def test_signature_name() -> None:
    decode({"signature_name": "serving_default", "instances": [[1, 2]]}, [X])
    with pytest.raises(DomainError) as exc:
        decode({"signature_name": "predict_images", "instances": [[1, 2]]}, [X])
    assert refused(exc).errors[0].pointer == "/signature_name"


def test_check_array_leaves_matching_arrays_alone() -> None:
    arr = np.zeros((4, 2), np.float32)
    assert check_array(arr, X, "") is arr


# encode


OUT_Y = np.array([[0.1], [0.25]], dtype=np.float32)
OUT_Z = np.array([1.5, -2.0], dtype=np.float32)


@pytest.mark.parametrize("fmt", ["row", "column"])
@pytest.mark.parametrize("outs", [[OUT_Y], [OUT_Y, OUT_Z]])
def test_encode_matches_the_previous_shapes(fmt: str, outs: list[np.ndarray]) -> None:
    infos = [Y, Z][: len(outs)]
    raw = encode(outs, infos, fmt)
    assert isinstance(raw, bytes)
    # Same structure; floats equal as float32 (orjson writes float32's shortest form, 0.1,
    # where .tolist() went through float64, 0.10000000149011612).
    assert _approx_equal(orjson.loads(raw), old_encode(outs, infos, fmt))


def _approx_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_approx_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_approx_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(np.float32(a) == np.float32(b))


def test_encode_row_multi_output_literal() -> None:
    raw = encode([OUT_Y, OUT_Z], [Y, Z], "row")
    assert raw == b'{"predictions":[{"y":[0.1],"z":1.5},{"y":[0.25],"z":-2.0}]}'


def test_encode_column_literal() -> None:
    assert encode([OUT_Y], [Y], "column") == b'{"outputs":[[0.1],[0.25]]}'
    assert encode([OUT_Y, OUT_Z], [Y, Z], "column") == \
        b'{"outputs":{"y":[[0.1],[0.25]],"z":[1.5,-2.0]}}'


def test_encode_writes_non_finite_floats_as_tf_serving_does() -> None:
    out = np.array([[np.nan], [np.inf], [-np.inf], [0.5]], dtype=np.float32)
    raw = encode([out], [Y], "row")
    assert raw == b'{"predictions":[[NaN],[Infinity],[-Infinity],[0.5]]}'
    parsed = json.loads(raw)["predictions"]
    assert math.isnan(parsed[0][0]) and parsed[1][0] == math.inf
    # Both encoders agree on the structure of a multi-output row response.
    raw = encode([out, np.arange(4, dtype=np.float32)], [Y, Z], "row")
    assert json.loads(raw)["predictions"][1] == {"y": [math.inf], "z": 1.0}


def test_encode_non_contiguous_and_integer_outputs() -> None:
    wide = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    ints = np.array([1, 2, 3], dtype=np.int64)
    raw = encode([wide, ints], [TensorInfo("w", (None, 2), "float32"),
                                TensorInfo("i", (None,), "int64")], "column")
    assert orjson.loads(raw) == {"outputs": {"w": [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]],
                                             "i": [1, 2, 3]}}


def test_nan_round_trip_through_decode_and_encode() -> None:
    arrays, fmt = decode(parse_json(b'{"inputs": [[NaN, 1]]}'), [X])
    assert encode(arrays, [X], fmt) == b'{"outputs":[[NaN,1.0]]}'
