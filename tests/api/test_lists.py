"""List routes: newest first, `limit`/`offset` pages, totals."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.helpers import SEED_SPEC, assert_problem, upload


def _check_pages(client: Any, path: str, created: list[str]) -> None:
    everything = client.get(path, params={"limit": 500}).json()
    ids = [item["id"] for item in everything["items"]]
    assert everything["total"] == len(ids) and set(created) <= set(ids)
    assert ids.index(created[-1]) < ids.index(created[0])  # newest first
    page = client.get(path, params={"limit": 2, "offset": 1}).json()
    assert page["limit"] == 2 and page["offset"] == 1 and page["total"] == everything["total"]
    assert [item["id"] for item in page["items"]] == ids[1:3]
    assert_problem(client.get(path, params={"limit": 0}), 422, "/query/limit")
    assert_problem(client.get(path, params={"offset": -1}), 422, "/query/offset")


def test_specs_list(client: Any) -> None:
    created = [client.post("/v1/specs", json={**SEED_SPEC, "name": f"list-{i}"}).json()["id"]
               for i in range(3)]
    _check_pages(client, "/v1/specs", created)


def test_datasets_list(client: Any) -> None:
    created = [upload(client, f"list-{i}", x=np.zeros((4, 2)), y=np.zeros(4))["id"]
               for i in range(3)]
    _check_pages(client, "/v1/datasets", created)


def test_models_list_is_by_name(client: Any) -> None:
    page = client.get("/v1/models", params={"limit": 500}).json()
    names = [m["name"] for m in page["items"]]
    assert names == sorted(names) and page["total"] == len(names)
