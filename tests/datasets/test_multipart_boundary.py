"""Multipart boundaries: RFC 2046 allows 1 to 70 characters; a longer one (the parser refuses
past 256 with an exception of its own, which was a 500) is a 400 problem, on every upload
route, and nothing is stored."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from tests.helpers import assert_problem


def _body(boundary: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.float32), allow_pickle=False)
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"x.npy\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() \
        + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()


def _post(client: Any, url: str, boundary: str) -> Any:
    return client.post(url, content=_body(boundary),
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("url", ["/v1/datasets", "/v1/models/boundary/versions"])
@pytest.mark.parametrize("length", [71, 257, 300])
def test_boundary_past_70_characters_is_a_400(client: Any, url: str, length: int) -> None:
    body = assert_problem(_post(client, url, "b" * length), 400, "/headers/content-type")
    assert f"is {length} characters long; 1 to 70 are allowed" in body["detail"], body


@pytest.mark.usefixtures("unchanged")
def test_boundary_with_characters_rfc_2046_excludes_is_a_400(client: Any) -> None:
    body = assert_problem(_post(client, "/v1/datasets", "ab\x01cd"), 400)
    assert "characters RFC 2046 does not allow" in body["detail"], body


def test_boundary_of_70_characters_is_read(client: Any) -> None:
    r = _post(client, "/v1/datasets", "'()+_,-./:=?" + "x" * 58)
    assert r.status_code == 201, r.text
    assert r.json()["arrays"] == {"x": {"shape": [4], "dtype": "float32"}}
    assert client.delete(f"/v1/datasets/{r.json()['id']}").status_code == 204
