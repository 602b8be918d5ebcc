"""Open Inference Protocol v2: requests built and responses parsed by tritonclient's own code
(`InferenceServerClient.generate_request_body` wraps `_get_inference_request`;
`parse_response_body` wraps `InferResult.from_response_body`), so no server is needed to show
the wire format matches what Triton's Python HTTP client sends and expects."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.http import (
    InferenceServerClient,
    InferInput,
    InferRequestedOutput,
    InferResult,
)

from app.core.errors import DomainError
from app.predict.oip import (
    BINARY_MEDIA,
    HEADER_LENGTH,
    JSON_MEDIA,
    decode_infer,
    encode_infer,
    model_metadata,
    parse_header_length,
)
from app.predict.signature import TensorInfo, numpy_dtype, oip_datatype

X = TensorInfo("x", (None, 2), "float32")
IDS = TensorInfo("ids", (None, 3), "int64")
MASK = TensorInfo("mask", (None,), "bool")
Y = TensorInfo("y", (None, 1), "float32")
P = TensorInfo("p", (None, 3), "float16")
FLAG = TensorInfo("flag", (None,), "bool")
RNG = np.random.default_rng(7)


def request(inputs: list[InferInput], outputs: list[InferRequestedOutput] | None = None,
            request_id: str = "") -> tuple[bytes, int | None]:
    body, json_size = InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id)
    return body, json_size


def tensor(name: str, arr: np.ndarray, datatype: str, binary: bool) -> InferInput:
    return InferInput(name, list(arr.shape), datatype).set_data_from_numpy(arr, binary_data=binary)


def result(body: bytes, headers: dict[str, str]) -> InferResult:
    return InferenceServerClient.parse_response_body(
        body, header_length=headers.get(HEADER_LENGTH))


def refused(exc: pytest.ExceptionInfo[DomainError]) -> DomainError:
    assert exc.value.status == 400, exc.value.detail
    assert exc.value.extra["error"] == exc.value.detail  # Triton clients read "error"
    return exc.value


def test_json_round_trip_through_tritonclient() -> None:
    x = RNG.random((3, 2), dtype=np.float32)
    body, size = request([tensor("x", x, "FP32", False)],
                         [InferRequestedOutput("y", binary_data=False)])
    assert size is None  # all JSON: tritonclient sends no Inference-Header-Content-Length
    arrays, requested, binary, request_id = decode_infer(body, size, [X], outputs=[Y])
    np.testing.assert_array_equal(arrays[0], x)
    assert requested == ["y"] and binary == set() and request_id is None
    y = x.sum(axis=1, keepdims=True)
    payload, headers = encode_infer("sum", 2, [y], [Y], requested, binary, request_id)
    assert headers == {"Content-Type": JSON_MEDIA}
    res = result(payload, headers)
    np.testing.assert_array_equal(res.as_numpy("y"), y)
    assert res.get_response()["model_name"] == "sum"
    assert res.get_response()["model_version"] == "2"
    assert res.get_output("y")["datatype"] == "FP32"


def test_binary_round_trip_through_tritonclient() -> None:
    x = RNG.random((4, 2), dtype=np.float32)
    body, size = request([tensor("x", x, "FP32", True)], request_id="req-1")
    assert size is not None
    arrays, requested, binary, request_id = decode_infer(body, size, [X])
    np.testing.assert_array_equal(arrays[0], x)
    # no outputs listed: tritonclient asks for all of them in binary
    assert requested is None and binary is True and request_id == "req-1"
    y = np.array([[np.nan], [np.inf], [-1.0], [0.1]], dtype=np.float32)
    payload, headers = encode_infer("m", 1, [y], [Y], requested, binary, request_id)
    assert headers["Content-Type"] == BINARY_MEDIA
    assert int(headers[HEADER_LENGTH]) == payload.index(b"}]}") + 3
    res = result(payload, headers)
    got = res.as_numpy("y")
    assert got.tobytes() == y.tobytes()  # bit for bit, NaN included
    assert res.get_response()["id"] == "req-1"
    assert res.get_output("y")["parameters"] == {"binary_data_size": 16}


def test_multi_input_any_order_mixed_binary_and_json() -> None:
    x = RNG.random((2, 2), dtype=np.float32)
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    mask = np.array([True, False])
    body, size = request([tensor("mask", mask, "BOOL", True), tensor("x", x, "FP32", False),
                          tensor("ids", ids, "INT64", True)])
    arrays, _, _, _ = decode_infer(body, size, [X, IDS, MASK])
    np.testing.assert_array_equal(arrays[0], x)
    np.testing.assert_array_equal(arrays[1], ids)
    np.testing.assert_array_equal(arrays[2], mask)
    assert [a.dtype for a in arrays] == [np.float32, np.int64, np.bool_]


def test_output_selection_and_per_output_binary_flag() -> None:
    y = np.array([[0.5], [0.25]], dtype=np.float32)
    p = np.array([[0.1, 0.2, 0.7], [1, 0, 0]], dtype=np.float16)
    flag = np.array([True, False])
    body, size = request([tensor("x", np.zeros((2, 2), np.float32), "FP32", True)],
                         [InferRequestedOutput("flag", binary_data=False),
                          InferRequestedOutput("p", binary_data=True)])
    _, requested, binary, _ = decode_infer(body, size, [X], outputs=[Y, P, FLAG])
    assert requested == ["flag", "p"] and binary == {"p"}
    payload, headers = encode_infer("m", "3", [y, p, flag], [Y, P, FLAG], requested, binary,
                                    None)
    res = result(payload, headers)
    assert [o["name"] for o in res.get_response()["outputs"]] == ["flag", "p"]
    assert res.as_numpy("y") is None
    np.testing.assert_array_equal(res.as_numpy("p"), p)
    assert res.as_numpy("p").dtype == np.float16
    np.testing.assert_array_equal(res.as_numpy("flag"), flag)
    assert res.get_output("flag")["data"] == [True, False]


def test_all_outputs_in_json_when_binary_data_output_is_false() -> None:
    raw = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                    "data": [[1, 2]]}],
                        "parameters": {"binary_data_output": False}})
    arrays, requested, binary, _ = decode_infer(raw, None, [X])
    assert arrays[0].tolist() == [[1.0, 2.0]] and requested is None and binary is False
    y = np.array([[np.nan]], dtype=np.float32)
    payload, headers = encode_infer("m", 1, [y, y[:, 0] > 0], [Y, FLAG], None, False, "")
    assert HEADER_LENGTH not in headers
    assert b'"data":[NaN]' in payload  # as TF Serving writes it; rapidjson reads it back
    assert np.isnan(result(payload, headers).as_numpy("y")[0, 0])


def test_requested_output_default_follows_binary_data_output() -> None:
    raw = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                    "data": [1, 2]}],
                        "outputs": [{"name": "y"}, {"name": "p",
                                                    "parameters": {"binary_data": False}}],
                        "parameters": {"binary_data_output": True}})
    _, requested, binary, _ = decode_infer(raw, None, [X])
    assert requested == ["y", "p"] and binary == {"y"}


def _json_request(**tensor_fields: Any) -> bytes:
    base: dict[str, Any] = {"name": "x", "shape": [2, 2], "datatype": "FP32",
                            "data": [1, 2, 3, 4]}
    base.update(tensor_fields)
    return orjson.dumps({"inputs": [{k: v for k, v in base.items() if v is not None}]})


def test_nested_data_is_row_major() -> None:
    arrays, _, _, _ = decode_infer(_json_request(data=[[1, 2], [3, 4]]), None, [X])
    assert arrays[0].tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(("fields", "pointer", "phrase"), [
    ({"datatype": "FP64"}, "/inputs/0/datatype", "the model expects [None, 2] of float32 (FP32)"),
    ({"datatype": "BYTES"}, "/inputs/0/datatype", "the model expects [None, 2] of float32"),
    ({"datatype": "BF16"}, "/inputs/0/datatype", "the model expects [None, 2] of float32"),
    ({"datatype": "FP8"}, "/inputs/0/datatype", "not supported"),
    ({"data": [1, 2, 3]}, "/inputs/0/data", "has 3 values in 'data' but shape [2, 2] needs 4"),
    ({"shape": [2, 3], "data": [1] * 6}, "/inputs/0/shape",
     "Input 'x' has shape [2, 3]; the model expects [None, 2] of float32"),
    ({"shape": [4]}, "/inputs/0/shape", "the model expects [None, 2] of float32"),
    ({"shape": [2, -2]}, "/inputs/0/shape", "non-negative"),
    ({"shape": "2x2"}, "/inputs/0/shape", "non-negative"),
    ({"data": ["a", "b", "c", "d"]}, "/inputs/0/data", "[None, 2] of float32"),
    ({"data": [1, None, 3, 4]}, "/inputs/0/data", "[None, 2] of float32"),
    ({"data": None}, "/inputs/0/data", "neither"),
    ({"name": "nope"}, "/inputs/0/name", "Unknown input 'nope'"),
    ({"parameters": {"shared_memory_region": "r"}}, "/inputs/0/parameters/shared_memory_region",
     "Shared-memory"),
    ({"parameters": {"binary_data_size": 16}}, "/inputs/0/data", "both"),
])
def test_bad_inputs_are_400_with_a_pointer(fields: dict[str, Any], pointer: str,
                                           phrase: str) -> None:
    with pytest.raises(DomainError) as exc:
        decode_infer(_json_request(**fields), None, [X])
    err = refused(exc)
    assert err.errors[0].pointer == pointer
    assert phrase in err.detail


def test_int_datatype_refuses_decimals_and_out_of_range() -> None:
    for data in ([1.5, 2, 3], [2**63, 1, 2]):
        raw = orjson.dumps({"inputs": [{"name": "ids", "shape": [1, 3], "datatype": "INT64",
                                        "data": data}]})
        with pytest.raises(DomainError) as exc:
            decode_infer(raw, None, [IDS])
        assert refused(exc).errors[0].pointer == "/inputs/0/data"


def test_wrong_datatype_from_tritonclient() -> None:
    x = np.zeros((1, 2), np.float64)
    body, size = request([tensor("x", x, "FP64", True)])
    with pytest.raises(DomainError) as exc:
        decode_infer(body, size, [X])
    assert "has datatype FP64; the model expects [None, 2] of float32 (FP32)" in \
        refused(exc).detail


def test_missing_duplicate_and_unknown_outputs() -> None:
    x = InferInput("x", [1, 2], "FP32").set_data_from_numpy(np.zeros((1, 2), np.float32))
    body, size = request([x])
    with pytest.raises(DomainError) as exc:
        decode_infer(body, size, [X, IDS])
    assert "Missing inputs ['ids']" in refused(exc).detail
    body, size = request([x, x])
    with pytest.raises(DomainError) as exc:
        decode_infer(body, size, [X])
    assert refused(exc).errors[0].pointer == "/inputs/1/name"
    body, size = request([x], [InferRequestedOutput("z")])
    with pytest.raises(DomainError) as exc:
        decode_infer(body, size, [X], outputs=[Y])
    assert refused(exc).errors[0].pointer == "/outputs/0/name"
    with pytest.raises(DomainError) as exc:
        encode_infer("m", 1, [np.zeros((1, 1), np.float32)], [Y], ["z"], True, None)
    refused(exc)


def test_classification_outputs_are_refused() -> None:
    x = InferInput("x", [1, 2], "FP32").set_data_from_numpy(np.zeros((1, 2), np.float32))
    body, size = request([x], [InferRequestedOutput("y", class_count=2)])
    with pytest.raises(DomainError) as exc:
        decode_infer(body, size, [X])
    assert refused(exc).errors[0].pointer == "/outputs/0/parameters/classification"


def test_binary_sizes_must_match_the_body() -> None:
    x = InferInput("x", [2, 2], "FP32").set_data_from_numpy(np.zeros((2, 2), np.float32))
    body, size = request([x])
    assert size is not None
    with pytest.raises(DomainError) as exc:  # truncated body
        decode_infer(body[:-4], size, [X])
    assert refused(exc).errors[0].pointer == "/inputs/0/parameters/binary_data_size"
    with pytest.raises(DomainError) as exc:  # trailing bytes
        decode_infer(body + b"\0", size, [X])
    assert "after the binary inputs" in refused(exc).detail
    with pytest.raises(DomainError) as exc:  # header length beyond the body
        decode_infer(body, len(body) + 1, [X])
    refused(exc)
    lying = body.replace(b'"binary_data_size":16', b'"binary_data_size":12')
    with pytest.raises(DomainError) as exc:
        decode_infer(lying, size, [X])
    assert "takes 16 bytes" in refused(exc).detail


def test_header_length_header() -> None:
    assert parse_header_length(None) is None
    assert parse_header_length("120") == 120
    with pytest.raises(DomainError) as exc:
        parse_header_length("lots")
    refused(exc)


@pytest.mark.parametrize("raw", [b"[]", b"{", b'{"inputs": {}}', b'{"id": 5, "inputs": []}',
                                 b'{"inputs": [], "parameters": {"binary_data_output": 1}}'])
def test_malformed_requests(raw: bytes) -> None:
    with pytest.raises(DomainError) as exc:
        decode_infer(raw, None, [X])
    refused(exc)


def test_empty_batch_in_binary() -> None:
    x = InferInput("x", [0, 2], "FP32").set_data_from_numpy(np.zeros((0, 2), np.float32))
    body, size = request([x])
    arrays, _, _, _ = decode_infer(body, size, [X])
    assert arrays[0].shape == (0, 2)
    payload, headers = encode_infer("m", 1, [np.zeros((0, 1), np.float32)], [Y], None, True,
                                    None)
    assert result(payload, headers).as_numpy("y").shape == (0, 1)


def test_model_metadata() -> None:
    meta = model_metadata("adder", [1, 2], "keras", [X, IDS], [Y])
    assert meta == {
        "name": "adder", "versions": ["1", "2"], "platform": "keras",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]},
                   {"name": "ids", "datatype": "INT64", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}]}


@pytest.mark.parametrize("dtype", ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                   "uint32", "uint64", "float16", "float32", "float64"])
def test_datatype_mapping_both_ways_agrees_with_tritonclient(dtype: str) -> None:
    from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

    datatype = oip_datatype(dtype)
    assert datatype == np_to_triton_dtype(np.dtype(dtype))
    assert numpy_dtype(datatype, "") == np.dtype(triton_to_np_dtype(datatype))


def test_bytes_and_bf16_map_as_tritonclient_maps_them() -> None:
    import ml_dtypes
    from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

    with pytest.raises(ValueError):
        oip_datatype("object")  # a Keras dtype no model declares
    assert oip_datatype("string") == "BYTES" == np_to_triton_dtype(np.dtype(object))
    assert numpy_dtype("BYTES", "") == np.dtype(triton_to_np_dtype("BYTES"))
    assert oip_datatype("bfloat16") == "BF16" == np_to_triton_dtype(ml_dtypes.bfloat16)
    assert numpy_dtype("BF16", "") == np.dtype(triton_to_np_dtype("BF16"))
