"""`.keras` uploads are checked from the zip's headers before Keras reads them: only the members
Keras writes, relative names, no links, bounded member count, total size and compression ratio.
A weights bomb is refused in a header read instead of being inflated into memory by Keras."""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.archives import member_pointer
from app.core.errors import DomainError
from app.registry.upload import read_config
from tests.archives import (
    Entry,
    GiB,
    MiB,
    deflated,
    deflated_entry,
    peak_rss_growth,
    raw_zip,
    stored,
)
from tests.helpers import assert_problem

FAST_S = 1.0
SMALL_RSS = 64 * MiB
WEIGHTS = "model.weights.h5"


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mean_squared_error", jit_compile=False)
    path = tmp_path_factory.mktemp("keras-archives") / "m.keras"
    model.save(path)
    return path


def _members(path: Path) -> list[Entry]:
    """The file's members as written by Keras (stored), to rebuild byte by byte."""
    with zipfile.ZipFile(path) as zf:
        return [stored(info.filename, zf.read(info)) for info in zf.infolist()]


def _rebuilt(path: Path, replace: dict[str, Entry] | None = None,
             extra: list[Entry] | None = None) -> bytes:
    replace = replace or {}
    return raw_zip([replace.get(e.name, e) for e in _members(path)] + (extra or []))


def _post(client: Any, payload: bytes, filename: str = "m.keras",
          name: str = "archived") -> Any:
    return client.post(f"/v1/models/{name}/versions", files={"file": (filename, payload)})


def test_rebuilt_file_is_accepted(client: Any, keras_file: Path) -> None:
    """The byte-by-byte rebuild the refusals below start from is a good `.keras` file."""
    r = _post(client, _rebuilt(keras_file), name="archived-ok")
    assert r.status_code == 201, r.text


@pytest.mark.usefixtures("unchanged")
def test_weights_bomb_is_refused_from_the_headers(client: Any, keras_file: Path) -> None:
    """model.weights.h5 declares (truly) 1 GiB, deflated to 1 MiB: Keras would read it whole
    into memory, and build arrays from it, before finding it wrong."""
    bomb = deflated(b"", GiB)
    payload = _rebuilt(keras_file, {WEIGHTS: deflated_entry(WEIGHTS, bomb)})
    with peak_rss_growth() as peak:
        r = _post(client, payload)
    body = assert_problem(r, 413, f"/file/{WEIGHTS}")
    assert f"inflates from {len(bomb.data)} to {GiB} bytes" in body["detail"]
    assert peak.seconds < FAST_S, peak
    assert peak.growth < SMALL_RSS, peak


@pytest.mark.usefixtures("unchanged")
def test_weights_inflating_past_their_declared_size_are_refused(client: Any,
                                                                keras_file: Path) -> None:
    """model.weights.h5 declares its true size and CRC; its deflate data goes on for 1 GiB of
    zeros. zipfile cuts a member at its declared size, but only after inflating what one read
    asked for, and Keras reads the weights whole: it would inflate the whole GiB. The members
    are inflated once in 1 MiB chunks before Keras sees the file."""
    weights = zipfile.ZipFile(keras_file).read(WEIGHTS)
    bomb = deflated(weights, GiB)
    liar = Entry(WEIGHTS, bomb.data, len(weights), zlib.crc32(weights))
    with peak_rss_growth() as peak:
        r = _post(client, _rebuilt(keras_file, {WEIGHTS: liar}))
    body = assert_problem(r, 422, f"/file/{WEIGHTS}")
    assert f"inflates past the {len(weights)} bytes its header declares" in body["detail"]
    assert peak.seconds < FAST_S, peak
    assert peak.growth < SMALL_RSS, peak


def _weights_with(keras_file: Path, kernel: Callable[[Any, str], None]) -> bytes:
    """The file with the Dense kernel's dataset in model.weights.h5 made by `kernel(h5, name)`
    (the rest copied), stored as Keras stores it."""
    import h5py  # type: ignore[import-untyped]

    original = zipfile.ZipFile(keras_file).read(WEIGHTS)
    out = io.BytesIO()
    with h5py.File(io.BytesIO(original), "r") as src, h5py.File(out, "w") as dst:
        def copy(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group):
                dst.require_group(name)
            elif name == "layers/dense/vars/0":
                kernel(dst, name)
            else:
                dst.create_dataset(name, data=obj[()])
            for key, value in obj.attrs.items():
                dst[name].attrs[key] = value
        src.visititems(copy)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
    return _rebuilt(keras_file, {WEIGHTS: stored(WEIGHTS, out.getvalue())})


GIB_OF_FLOATS = (GiB // 4, 1)
KERNELS = [
    pytest.param(lambda h5, n: h5.create_dataset(n, shape=GIB_OF_FLOATS, dtype="f4",
                                                 compression="gzip", chunks=(MiB, 1)),
                 "declares 1073741824 bytes but stores 0", id="gzip-chunks-never-written"),
    pytest.param(lambda h5, n: h5.create_dataset(n, shape=GIB_OF_FLOATS, dtype="f4"),
                 "declares 1073741824 bytes but stores 0", id="unallocated"),
    pytest.param(lambda h5, n: h5.create_dataset(n, shape=(2, 1), dtype="f4",
                                                 external=[("/etc/hostname", 0, 8)]),
                 "keeps its data in other files", id="external-storage"),
    pytest.param(lambda h5, n: h5.__setitem__(n, h5py_link("soft")),
                 "SoftLink", id="soft-link"),
    pytest.param(lambda h5, n: h5.__setitem__(n, h5py_link("external")),
                 "ExternalLink", id="external-link"),
]


def h5py_link(kind: str) -> Any:
    import h5py  # type: ignore[import-untyped]

    if kind == "soft":
        return h5py.SoftLink("/layers/dense/vars/1")
    return h5py.ExternalLink("/etc/other.h5", "/data")


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("kernel", "says"), KERNELS)
def test_weights_datasets_must_store_what_they_declare(client: Any, keras_file: Path,
                                                       kernel: Any, says: str) -> None:
    """A 12 kB file whose kernel declares 1 GiB: Keras would allocate it (its own guard starts
    at 4 GiB), costing seconds and GiBs before its 422. Refused from the HDF5 metadata."""
    payload = _weights_with(keras_file, kernel)
    assert len(payload) < MiB
    with peak_rss_growth() as peak:
        r = _post(client, payload)
    body = assert_problem(r, 422)
    assert says in body["detail"], body
    assert any(e["pointer"].startswith(f"/file/{WEIGHTS}/") for e in body["errors"]), body
    assert peak.seconds < FAST_S, peak
    assert peak.growth < SMALL_RSS, peak


def test_weights_past_the_limit_are_413(keras_file: Path) -> None:
    import h5py  # type: ignore[import-untyped]

    from app.registry.keras_weights import check_weights

    sizes: list[int] = []
    with zipfile.ZipFile(keras_file) as zf, zf.open(WEIGHTS) as f, h5py.File(f, "r") as h5:
        h5.visititems(lambda _, obj: sizes.append(obj.nbytes)
                      if isinstance(obj, h5py.Dataset) else None)
    check_weights(keras_file, sum(sizes))
    with pytest.raises(DomainError) as exc:
        check_weights(keras_file, sum(sizes) - 1)
    assert exc.value.status == 413
    assert f"declare at least {sum(sizes)} bytes; the limit is" in exc.value.detail


def _link(name: str) -> Entry:
    return stored(name, b"/etc/passwd", mode=stat.S_IFLNK | 0o777)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("entry", "says"), [
    pytest.param(stored("../config.json", b"{}"), "'..'", id="dot-dot"),
    pytest.param(stored("assets/../../evil.txt", b"x"), "'..'", id="assets-dot-dot"),
    pytest.param(stored("/etc/evil", b"x"), "absolute", id="absolute"),
    pytest.param(stored("C:/evil", b"x"), "absolute", id="drive-letter"),
    pytest.param(stored("assets\\..\\evil", b"x"), "Windows path", id="backslashes"),
    pytest.param(_link("assets/layers/link"), "symbolic link", id="symlink"),
    pytest.param(stored("evil.py", b"import os"), "holds only", id="not-a-keras-member"),
    pytest.param(stored("model.h5", b"\x89HDF\r\n\x1a\n"), "holds only", id="hdf5-inside"),
    pytest.param(stored(WEIGHTS, b"again"), "more than once", id="duplicate-weights"),
])
def test_members_keras_does_not_write_are_refused(client: Any, keras_file: Path, entry: Entry,
                                                  says: str) -> None:
    body = assert_problem(_post(client, _rebuilt(keras_file, extra=[entry])), 422,
                          member_pointer("/file", entry.name))
    assert says in body["detail"], body


@pytest.mark.usefixtures("unchanged")
def test_too_many_members_are_refused(client: Any, keras_file: Path) -> None:
    from app.core.config import get_settings

    limit = get_settings().max_archive_members
    assets = [stored(f"assets/a{i}.txt", b"x") for i in range(limit)]
    body = assert_problem(_post(client, _rebuilt(keras_file, extra=assets)), 422, "/file")
    assert f"has {limit + 3} members; at most {limit}" in body["detail"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("filename", ["M.H5", "model.HDF5"])
def test_hdf5_names_in_any_case_are_refused(client: Any, keras_file: Path,
                                            filename: str) -> None:
    body = assert_problem(_post(client, keras_file.read_bytes(), filename), 422, "/file")
    assert "HDF5" in body["detail"] and ".keras" in body["detail"]


# --- the header checks as a unit ----------------------------------------------------------

def test_total_uncompressed_size_is_bounded(keras_file: Path) -> None:
    total = sum(i.file_size for i in zipfile.ZipFile(keras_file).infolist())
    assert read_config(keras_file, total)["class_name"] == "Sequential"
    with pytest.raises(DomainError) as exc:
        read_config(keras_file, total - 1)
    assert exc.value.status == 413
    assert f"add up to {total} bytes uncompressed; the limit is {total - 1}" in exc.value.detail


def test_assets_keras_writes_pass(tmp_path: Path) -> None:
    """An adapted StringLookup saves its vocabulary under assets/."""
    import keras

    lookup = keras.layers.StringLookup()
    lookup.adapt(np.array(["a", "b", "c"]))
    inputs = keras.Input(shape=(1,), dtype="string")
    path = tmp_path / "lookup.keras"
    keras.Model(inputs, lookup(inputs)).save(path)
    names = zipfile.ZipFile(path).namelist()
    assert any(n.startswith("assets/") for n in names), names
    assert read_config(path, 1 << 30)["class_name"] == "Functional"


def test_real_weights_deflated_by_a_zip_tool_pass(tmp_path: Path) -> None:
    """18 MB of float weights (past the ratio's floor) re-zipped with deflate: far under the
    ratio, since trained or initialised floats barely compress."""
    import keras

    from app.core.config import get_settings
    from app.registry.keras_weights import check_weights

    model = keras.Sequential([keras.Input(shape=(4096,)), keras.layers.Dense(1100)])
    saved = tmp_path / "big.keras"
    model.save(saved)
    buf = io.BytesIO()
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    path = tmp_path / "deflated.keras"
    path.write_bytes(buf.getvalue())
    weights = zipfile.ZipFile(path).getinfo(WEIGHTS)
    assert weights.file_size > get_settings().archive_ratio_floor_bytes
    assert weights.compress_size < weights.file_size
    assert read_config(path, 1 << 30)["class_name"] == "Sequential"
    check_weights(path, 1 << 30)  # the deflated weights, inflated to a temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.keras", "deflated.keras"]


@pytest.mark.parametrize(("declare", "says"), [
    (lambda size, crc: (size + 1, crc), "inflates to {size} bytes; its header declares"),
    (lambda size, crc: (size, crc ^ 1), "does not match its CRC-32"),
])
def test_deflated_members_must_end_at_their_size_with_their_crc(
        keras_file: Path, tmp_path: Path, declare: Any, says: str) -> None:
    weights = zipfile.ZipFile(keras_file).read(WEIGHTS)
    data = deflated(weights, 0)
    size, crc = declare(data.size, data.crc)
    path = tmp_path / "m.keras"
    path.write_bytes(_rebuilt(keras_file, {WEIGHTS: Entry(WEIGHTS, data.data, size, crc)}))
    with pytest.raises(DomainError) as exc:
        read_config(path, 1 << 30)
    assert exc.value.status == 422 and says.format(size=data.size) in exc.value.detail
    assert exc.value.errors[0].pointer == f"/file/{WEIGHTS}"
