"""`Resources`: the service's REST resources one call each (specs, keys, datasets, jobs and
their events, models and versions, JSON predict), the building blocks of `Client` and of the
CLI's commands. NumPy and tqdm are imported when a call needs them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from keras_jobs.events import Event, follow
from keras_jobs.follow import epoch_bars, initial_epoch

if TYPE_CHECKING:
    from keras_jobs.arrays import Array
    from keras_jobs.transport import Transport

ArrayLike = Any  # a NumPy array, or anything np.asarray takes


class Resources:
    """One method per REST call, on `self.transport`; `Client` adds the Keras-shaped calls."""

    transport: Transport

    def create_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self.transport.json("POST", "/v1/specs", json=spec))

    def specs(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A page of specs: {"items", "total", "limit", "offset"}."""
        return dict(self.transport.json("GET", "/v1/specs",
                                        params={"limit": limit, "offset": offset}))

    def spec(self, spec_id: str) -> dict[str, Any]:
        return dict(self.transport.json("GET", f"/v1/specs/{quote(spec_id)}"))

    def create_key(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/keys (an admin's or operator's key): the new key, its `key` shown once."""
        return dict(self.transport.json("POST", "/v1/keys", json=body))

    def keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        params = {"tenant": tenant} if tenant else None
        return list(self.transport.json("GET", "/v1/keys", params=params))

    def revoke_key(self, name: str) -> dict[str, Any]:
        return dict(self.transport.json("DELETE", f"/v1/keys/{quote(name)}"))

    def datasets(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A page of datasets: {"items", "total", "limit", "offset"}."""
        return dict(self.transport.json("GET", "/v1/datasets",
                                        params={"limit": limit, "offset": offset}))

    def upload_file(self, path: str | os.PathLike[str], name: str | None = None, *,
                    progress: bool = True, file: IO[str] | None = None) -> dict[str, Any]:
        """Upload a `.npz`, `.npy` or CSV file as a dataset, streamed, with a bytes bar."""
        from keras_jobs.progress import upload_bar

        path = Path(path)
        size = path.stat().st_size
        fields = {"name": name} if name else {}
        with path.open("rb") as data, upload_bar(size, f"Uploading {path.name}", file,
                                                 disable=not progress) as bar:
            return dict(self.transport.upload("/v1/datasets", data, size, path.name, fields,
                                              on_chunk=bar.update))

    def upload_arrays(self, arrays: Mapping[str, ArrayLike], name: str, *,
                      progress: bool = False, file: IO[str] | None = None) -> dict[str, Any]:
        """Named arrays as one `.npz` dataset (written to a temporary file, then streamed)."""
        import numpy as np

        from keras_jobs.arrays import write_npz

        with tempfile.TemporaryDirectory(prefix="keras-jobs-") as folder:
            path = Path(folder) / f"{name}.npz"
            with path.open("wb") as out:
                write_npz({k: np.asarray(v) for k, v in arrays.items()}, out)
            return self.upload_file(path, name, progress=progress, file=file)

    def dataset_info(self, dataset_id: str) -> dict[str, Any]:
        """A dataset's metadata: name, rows, and each array's shape and dtype."""
        return dict(self.transport.json("GET", f"/v1/datasets/{quote(dataset_id)}"))

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs: a fit, evaluate or predict job body; the queued job."""
        return dict(self.transport.json("POST", "/v1/jobs", json=body))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.transport.json("GET", f"/v1/jobs/{quote(job_id)}"))

    def jobs(self, status: str | None = None, limit: int = 50, offset: int = 0
             ) -> dict[str, Any]:
        """A page of jobs, newest first: {"items", "total", "limit", "offset"}."""
        query: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            query["status"] = status
        return dict(self.transport.json("GET", "/v1/jobs", params=query))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self.transport.json("POST", f"/v1/jobs/{quote(job_id)}:cancel"))

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """The job's events until it ends, resumed after a dropped connection."""
        return follow(self.transport, job_id, last_event_id)

    def watch(self, job_id: str, *, table: bool = True, progress: bool = True,
              file: IO[str] | None = None, table_file: IO[str] | None = None
              ) -> dict[str, Any]:
        """Follow a job with epoch bars (to `file`) and a table of each epoch's metrics (to
        `table_file`) until it ends; its final JSON. Ctrl-C is not caught here: the job keeps
        running."""
        job = self.job(job_id)
        bars = epoch_bars(self, job, None, initial_epoch(job), progress, file, table, table_file)
        try:
            for event in self.events(job_id):
                bars.handle(event)
        finally:
            bars.close()
        return self.job(job_id)

    def models(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return dict(self.transport.json("GET", "/v1/models",
                                        params={"limit": limit, "offset": offset}))

    def model(self, name: str) -> dict[str, Any]:
        return dict(self.transport.json("GET", model_path(name)))

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version of `name` (its file too); refused (409) while a label points at
        it or a queued or running job uses it."""
        self.transport.request("DELETE", model_path(name, version))

    def predict_json(self, name: str, body: Any, version: int | None = None,
                     label: str | None = None) -> dict[str, Any]:
        """TensorFlow Serving's JSON predict: `{"instances": ...}` or `{"inputs": ...}`."""
        path = model_path(name, version, label) + ":predict"
        return dict(self.transport.json("POST", path, json=body))

    def dataset(self, dataset_id: str, name: str | None = None
                ) -> Array | dict[str, Array]:
        """A dataset's arrays as NumPy (`GET /v1/datasets/{id}/arrays/{name}`, `.npy`
        streamed): {name: array}, or the one array `name`. A batch-predict job's
        `result["dataset_id"]` holds its predictions."""
        import numpy as np

        names = [name] if name is not None else list(self.dataset_info(dataset_id)["arrays"])
        out: dict[str, Array] = {}
        with tempfile.TemporaryDirectory(prefix="keras-jobs-") as folder:
            for array in names:
                path = Path(folder) / f"{len(out)}.npy"
                with path.open("wb") as sink, self.transport.stream(
                        "GET", f"/v1/datasets/{quote(dataset_id)}/arrays/{quote(array)}",
                        headers={"Accept": "application/x-npy"}) as response:
                    for chunk in response.iter_bytes():
                        sink.write(chunk)
                out[array] = np.load(path, allow_pickle=False)
        return out[name] if name is not None else out


def model_path(name: str, version: int | None = None, label: str | None = None) -> str:
    """The URL path of a model, one of its versions, or the version a label points at."""
    path = f"/v1/models/{quote(name, safe='')}"
    if version is not None:
        return f"{path}/versions/{int(version)}"
    if label is not None:
        return f"{path}/labels/{quote(label, safe='')}"
    return path
