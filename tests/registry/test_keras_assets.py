"""A `.keras` file's assets/ members: bounded by count, bytes and compression ratio at upload,
and unpacked into the artifact store's staging area (then removed), never into the system temp
folder, whenever a version is loaded."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.errors import DomainError
from tests.archives import MiB, deflated, deflated_entry, peak_rss_growth, raw_zip, stored
from tests.helpers import assert_problem


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    path = tmp_path_factory.mktemp("keras-assets") / "m.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def lookup_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with a real asset: an adapted StringLookup saves its vocabulary under assets/."""
    import keras

    lookup = keras.layers.StringLookup()
    lookup.adapt(np.array(["a", "b", "c"]))
    inputs = keras.Input(shape=(1,), dtype="string")
    path = tmp_path_factory.mktemp("keras-lookup") / "lookup.keras"
    keras.Model(inputs, lookup(inputs)).save(path)
    assert any(n.startswith("assets/") for n in zipfile.ZipFile(path).namelist())
    return path


@pytest.fixture
def no_system_temp(tmp_path: Path) -> Iterator[Path]:
    """The system temp folder made unusable (a folder that does not exist): Keras's asset
    extraction (tempfile.mkdtemp) fails there, so a load that works never used it."""
    gone = tmp_path / "no-such-temp"
    saved = tempfile.tempdir
    tempfile.tempdir = str(gone)
    try:
        yield gone
    finally:
        tempfile.tempdir = saved


def _post(client: Any, payload: bytes, name: str) -> Any:
    return client.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", payload)})


def _staging(service_env: dict[str, str]) -> list[Path]:
    tmp = Path(service_env["KJ_ARTIFACT_ROOT"]) / "tmp"
    return sorted(p for p in tmp.iterdir() if p.is_dir()) if tmp.is_dir() else []


@pytest.mark.usefixtures("unchanged")
def test_assets_bomb_is_refused_from_the_headers(client: Any, keras_file: Path) -> None:
    """64 assets of 16 MiB of zeros, 1 MB sent: each member under any per-member floor, 1 GiB
    together. It was a 201 after 32 s, and 1.25 GB unpacked to /tmp on every load."""
    with zipfile.ZipFile(keras_file) as zf:
        members = [stored(i.filename, zf.read(i)) for i in zf.infolist()]
    asset = deflated(b"", 16 * MiB)
    payload = raw_zip(members + [deflated_entry(f"assets/a{i}.txt", asset) for i in range(64)])
    assert len(payload) < 2 * MiB
    with peak_rss_growth() as peak:
        r = _post(client, payload, "assets-bomb")
    body = assert_problem(r, 413)
    assert "inflate" in body["detail"] and "KJ_MAX_ARCHIVE_RATIO" in body["detail"], body
    assert peak.seconds < 1.0 and peak.growth < 64 * MiB, peak


def _entries(count: int, size: int) -> list[zipfile.ZipInfo]:
    entries = []
    for i in range(count):
        info = zipfile.ZipInfo(f"assets/layers/lookup/a{i}.txt")
        info.file_size = info.compress_size = size
        entries.append(info)
    return entries


def test_assets_are_bounded_by_bytes_and_count() -> None:
    """Stored (1:1) assets pass the ratio; their bytes and count have bounds of their own
    (KJ_MAX_KERAS_ASSETS_BYTES, KJ_MAX_KERAS_ASSETS)."""
    from app.core.config import get_settings
    from app.registry.keras_load import check_assets

    settings = get_settings()
    check_assets(_entries(settings.max_keras_assets, 1024))
    with pytest.raises(DomainError) as exc:
        check_assets(_entries(1, settings.max_keras_assets_bytes + 1))
    assert exc.value.status == 413 and "KJ_MAX_KERAS_ASSETS_BYTES" in exc.value.detail
    assert exc.value.extra == {"limit": settings.max_keras_assets_bytes,
                               "current": settings.max_keras_assets_bytes + 1}
    assert exc.value.errors[0].pointer == "/file/assets"
    with pytest.raises(DomainError) as exc:
        check_assets(_entries(settings.max_keras_assets + 1, 1))
    assert exc.value.status == 413 and "KJ_MAX_KERAS_ASSETS)" in exc.value.detail


def test_model_with_assets_loads_without_the_system_temp_folder(
        client: Any, service_env: dict[str, str], lookup_file: Path,
        no_system_temp: Path) -> None:
    """Upload (Keras loads it to check it), the serving load and a job's load all read the
    assets from a staging folder of the store, removed afterwards."""
    from app.core.db import session_scope
    from app.core.storage import get_store
    from app.predict.servable import Servable
    from app.registry import service as registry
    from app.training.runner import _load_version

    before = _staging(service_env)
    r = _post(client, lookup_file.read_bytes(), "with-assets")
    assert r.status_code == 201, r.text  # was a 422: Keras could not extract the assets
    version = get_store().model_file(get_store().path(f"models/local/with-assets/"
                                                      f"{r.json()['version']}"))
    from app.registry.keras_load import load_keras

    model = load_keras(version, compile=True)
    vocabulary = [str(v) for v in model.layers[-1].get_vocabulary()]
    assert vocabulary[0] == "[UNK]" and sorted(vocabulary[1:]) == ["a", "b", "c"]
    servable = Servable(version)
    [out] = servable([np.array([["b"], ["z"]])])
    assert out.ravel().tolist() == [vocabulary.index("b"), 0]
    with session_scope() as s:
        version_id = registry.resolve(s, "local", "with-assets", r.json()["version"]).id
    assert _load_version(version_id, get_store(), compile=False).layers[-1].vocabulary_size() == 4
    assert not no_system_temp.exists()
    assert _staging(service_env) == before  # the unpacked copies are gone
