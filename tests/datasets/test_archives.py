""".npz dataset uploads are checked from the zip's headers before any member is inflated:
bounded member count and total uncompressed size, relative names, no links; a zip bomb is
refused in a header read, and an accepted member is streamed to disk, not held in memory."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.archives import member_pointer
from app.core.errors import DomainError
from app.datasets.ingest import ingest
from tests.archives import (
    Deflated,
    Entry,
    GiB,
    MiB,
    deflated,
    deflated_entry,
    npy_bytes,
    npy_header,
    peak_rss_growth,
    raw_zip,
    stored,
)
from tests.helpers import assert_problem, make_key

TENANT = "archives"
UPLOAD_LIMIT = 4 * MiB
# Generous bounds for a refusal read from the headers (it takes milliseconds and no memory);
# inflating the bombs below would take seconds and a GiB.
FAST_S = 1.0
SMALL_RSS = 64 * MiB


@pytest.fixture(scope="module")
def small_tenant(client: Any) -> dict[str, str]:
    """Headers of a key of a tenant whose largest upload is 4 MiB, so that its archives' bound
    is small and the bombs below are past it."""
    key = make_key(TENANT, "archives-writer", ["read", "write"])
    r = client.put(f"/v1/tenants/{TENANT}/quotas", json={"max_upload_bytes": UPLOAD_LIMIT})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def gib_of_zeros() -> Deflated:
    """A .npy of 1 GiB of zeros, deflated to about 1 MiB."""
    return deflated(npy_header((GiB,)), GiB)


@pytest.fixture(scope="module")
def thousand_then_a_gib() -> Deflated:
    """A .npy header declaring 1000 bytes of array, then 1 GiB of zeros, deflated."""
    return deflated(npy_header((1000,)), GiB)


def _post(client: Any, headers: dict[str, str], payload: bytes) -> Any:
    return client.post("/v1/datasets", files={"file": ("d.npz", payload)},
                       data={"name": "archive-test"}, headers=headers)


def _refused_fast(client: Any, headers: dict[str, str], payload: bytes, status: int,
                  pointer: str) -> dict[str, Any]:
    assert len(payload) < UPLOAD_LIMIT
    with peak_rss_growth() as peak:
        r = _post(client, headers, payload)
    body = assert_problem(r, status, pointer)
    assert peak.seconds < FAST_S, peak
    assert peak.growth < SMALL_RSS, peak
    return body


# --- zip bombs ----------------------------------------------------------------------------

@pytest.mark.usefixtures("unchanged")
def test_bomb_of_many_arrays_is_refused_from_the_headers(client: Any,
                                                         small_tenant: dict[str, str]) -> None:
    """64 arrays of 16 MiB of zeros: each within the per-array bound, 1 GiB together, 1 MiB
    sent. Refused from the central directory: nothing inflated, nothing written."""
    member = deflated(npy_header((16 * MiB,)), 16 * MiB)
    payload = raw_zip([deflated_entry(f"a{i}.npy", member) for i in range(64)])
    body = _refused_fast(client, small_tenant, payload, 413, "/file")
    assert f"add up to {64 * member.size} bytes uncompressed; the limit is" in body["detail"]


@pytest.mark.usefixtures("unchanged")
def test_one_member_of_a_gib_is_refused_from_the_headers(client: Any,
                                                         small_tenant: dict[str, str],
                                                         gib_of_zeros: Deflated) -> None:
    payload = raw_zip([deflated_entry("x.npy", gib_of_zeros)])
    body = _refused_fast(client, small_tenant, payload, 413, "/file")
    assert str(gib_of_zeros.size) in body["detail"]


@pytest.mark.usefixtures("unchanged")
def test_member_inflating_past_its_declared_size_stops_there(
        client: Any, small_tenant: dict[str, str], thousand_then_a_gib: Deflated) -> None:
    """The central directory declares the .npy's header and its 1000 bytes of array (within
    every bound); the data inflates to 1 GiB more. zipfile stops at the declared size, where
    the CRC (that of the whole stream) does not match: a 422 after inflating a few KB."""
    bomb = thousand_then_a_gib
    liar = Entry("x.npy", bomb.data, len(npy_header((1000,))) + 1000, bomb.crc)
    body = _refused_fast(client, small_tenant, raw_zip([liar]), 422, "/file/x")
    assert "Bad CRC-32" in body["errors"][0]["detail"], body


def test_an_honest_compressed_archive_is_accepted(client: Any,
                                                  small_tenant: dict[str, str]) -> None:
    buf = io.BytesIO()
    x = np.zeros((1000, 300), np.float32)  # 1.2 MB of zeros, a few kB compressed
    np.savez_compressed(buf, x=x, y=np.arange(1000), allow_pickle=False)
    r = _post(client, small_tenant, buf.getvalue())
    assert r.status_code == 201, r.text
    assert r.json()["arrays"] == {"x": {"shape": [1000, 300], "dtype": "float32"},
                                  "y": {"shape": [1000], "dtype": "int64"}}
    assert client.delete(f"/v1/datasets/{r.json()['id']}", headers=small_tenant).status_code \
        == 204


# --- names, links, members ----------------------------------------------------------------

def _npy_member(name: str, **kw: int) -> Entry:
    return stored(name, npy_bytes(np.zeros(3)), **kw)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("name", "says"), [
    ("../x.npy", "'..'"),
    ("a/../../x.npy", "'..'"),
    ("/x.npy", "absolute"),
    ("/etc/cron.d/x.npy", "absolute"),
    ("C:/x.npy", "absolute"),
    ("..\\x.npy", "absolute or Windows path"),
])
def test_member_names_out_of_the_folder_are_refused(client: Any, name: str, says: str) -> None:
    payload = raw_zip([_npy_member("y.npy"), _npy_member(name)])
    body = assert_problem(_post(client, {}, payload), 422, member_pointer("/file", name))
    assert says in body["detail"] and name in body["detail"]


@pytest.mark.usefixtures("unchanged")
def test_symlink_member_is_refused(client: Any) -> None:
    link = stored("x.npy", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)
    body = assert_problem(_post(client, {}, raw_zip([link])), 422, "/file/x.npy")
    assert "symbolic link" in body["detail"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("declared_count", [None, 1], ids=["honest-count", "end-record-lies"])
def test_too_many_members_are_refused(client: Any, declared_count: int | None) -> None:
    """One member past KJ_MAX_ARCHIVE_MEMBERS; whether the end record says so (refused before
    zipfile parses the central directory) or understates it (refused from the entries)."""
    from app.core.config import get_settings

    count = get_settings().max_archive_members + 1
    payload = raw_zip([_npy_member(f"a{i}.npy") for i in range(count)], declared_count)
    body = assert_problem(_post(client, {}, payload), 422, "/file")
    assert f"has {count} members; at most {count - 1}" in body["detail"]


def _sharing_data() -> list[Entry]:
    first = stored("x.npy", npy_bytes(np.zeros(2000)))
    return [first, stored("y.npy", first.data, same_data_as=0)]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("entries", "says"), [
    pytest.param(lambda: [_npy_member("x.npy"), _npy_member("x.npy")], "more than once",
                 id="duplicate"),
    pytest.param(lambda: [_npy_member("x.npy", flags=0x1)], "encrypted", id="encrypted"),
    pytest.param(lambda: [Entry("x.npy", b"BZh9", 128, 0, method=zipfile.ZIP_BZIP2)],
                 "compression method 12", id="bzip2"),
    pytest.param(lambda: [_npy_member("x.npy", mode=stat.S_IFIFO | 0o644)], "special file",
                 id="fifo"),
    # Two entries sharing one member's data: how the largest zip bombs multiply their output.
    pytest.param(lambda: _sharing_data(), "overlapping", id="overlapping"),
])
def test_entries_zipfile_would_read_are_refused_too(client: Any, entries: Any,
                                                    says: str) -> None:
    body = assert_problem(_post(client, {}, raw_zip(entries())), 422)
    assert says in body["detail"], body


# --- ingest as a unit: the central directory's size, streaming ----------------------------

def _ingest(tmp_path: Path, payload: bytes, max_bytes: int,
            max_members: int | None = None) -> Path:
    src, dest = tmp_path / "upload.npz", tmp_path / "arrays"
    src.write_bytes(payload)
    dest.mkdir()
    ingest(src, "d.npz", dest, max_bytes, max_members=max_members)
    return dest


def test_oversized_central_directory_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """The end record claims one member; the central directory holds 50 with long names: more
    bytes than 4 members may take, refused from the end record alone."""
    entries = [_npy_member(f"{'n' * 200}{i}.npy") for i in range(50)]
    with pytest.raises(DomainError) as exc:
        _ingest(tmp_path, raw_zip(entries, declared_count=1), MiB, max_members=4)
    assert exc.value.status == 422
    assert "central directory is" in exc.value.detail and "4 members" in exc.value.detail


@pytest.fixture
def lax_ratio() -> Iterator[None]:
    """KJ_MAX_ARCHIVE_RATIO past deflate's limit, for tests that inflate zeros on purpose."""
    from app.core.state import fresh

    saved = os.environ.get("KJ_MAX_ARCHIVE_RATIO")
    os.environ["KJ_MAX_ARCHIVE_RATIO"] = "2000"
    with fresh():
        yield
    if saved is None:
        os.environ.pop("KJ_MAX_ARCHIVE_RATIO")
    else:
        os.environ["KJ_MAX_ARCHIVE_RATIO"] = saved


@pytest.mark.usefixtures("lax_ratio")
def test_accepted_member_is_streamed_to_disk(tmp_path: Path) -> None:
    """A 256 MiB array, deflated to 256 kB (past the ratio, lifted here): written in chunks,
    the process's memory barely moves (filling a memory-mapped file, it grew by the whole
    array)."""
    member = deflated(npy_header((256 * MiB,)), 256 * MiB)
    payload = raw_zip([deflated_entry("x.npy", member)])
    with peak_rss_growth() as peak:
        dest = _ingest(tmp_path, payload, GiB)
    assert peak.growth < SMALL_RSS, peak
    out = np.load(dest / "x.npy", mmap_mode="r", allow_pickle=False)
    assert out.shape == (256 * MiB,) and out.dtype == np.uint8
    assert not out[:: 4 * MiB].any() and (dest / "x.npy").stat().st_size == member.size


def test_member_with_bytes_past_its_array_is_refused(tmp_path: Path) -> None:
    """The .npy header declares 3 floats, the member holds 4: reading to the member's end is
    also what makes zipfile check its CRC."""
    raw = npy_bytes(np.zeros(3)) + bytes(8)
    with pytest.raises(DomainError) as exc:
        _ingest(tmp_path, raw_zip([stored("x.npy", raw)]), MiB)
    assert exc.value.status == 422 and "more bytes" in exc.value.detail
    assert not list((tmp_path / "arrays").iterdir())


# --- compression ratio: bombs within the largest upload -----------------------------------

def _refused_for_ratio(client: Any, payload: bytes, pointer: str) -> dict[str, Any]:
    """Posted by the suite's tenant (largest upload 4 GiB: the bound on the total is no help)."""
    body = _refused_fast(client, {}, payload, 413, pointer)
    assert "KJ_MAX_ARCHIVE_RATIO" in body["detail"] and "numpy.savez" in body["detail"], body
    assert body["limit"] == 100 and body["current"] > 100, body
    return body


@pytest.mark.usefixtures("unchanged")
def test_gib_bomb_under_the_upload_limit_is_refused_by_its_ratio(
        client: Any, gib_of_zeros: Deflated) -> None:
    """1 MB sent, 1 GiB declared: within the 4 GiB upload, so only the ratio refuses it (it
    was a 201 after 23-29 s and 1 GiB written)."""
    payload = raw_zip([deflated_entry("x.npy", gib_of_zeros)])
    body = _refused_for_ratio(client, payload, "/file/x.npy")
    assert f"to {gib_of_zeros.size} bytes (" in body["detail"], body


@pytest.mark.usefixtures("unchanged")
def test_many_small_members_cannot_add_up(client: Any) -> None:
    """96 members of 2 MiB of zeros: each under the ratio's floor, 192 MiB from 200 kB
    together; the ratio of the whole archive refuses it."""
    member = deflated(npy_header((2 * MiB - 128,)), 2 * MiB - 128)
    payload = raw_zip([deflated_entry(f"a{i}.npy", member) for i in range(96)])
    body = _refused_for_ratio(client, payload, "/file")
    assert "members together inflate from" in body["detail"], body
    assert f"to {96 * member.size} bytes" in body["detail"], body


def test_honest_compressed_data_passes_the_ratio(client: Any) -> None:
    """What real arrays give with numpy.savez_compressed, past the ratio's floor: one-hot float
    labels of 10 classes (~36:1), 99 %-zero floats (~57:1), a 1 %-true mask, int labels."""
    rng = np.random.default_rng(0)
    n = 200_000
    labels = rng.integers(0, 10, n)
    arrays = {
        "onehot": np.eye(10, dtype=np.float32)[labels],
        "sparse": np.where(rng.random((n, 8)) < 0.99, 0, rng.normal(size=(n, 8))
                           ).astype(np.float32),
        "mask": rng.random(n) < 0.01,
        "y": labels,
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    infos = zipfile.ZipFile(buf).infolist()
    total = sum(i.file_size for i in infos)
    assert total > 4 * MiB and total / sum(i.compress_size for i in infos) > 20
    r = _post(client, {}, buf.getvalue())
    assert r.status_code == 201, r.text
    assert r.json()["stored_bytes"] >= total - 4096  # what is written: the arrays themselves
    assert client.delete(f"/v1/datasets/{r.json()['id']}").status_code == 204
