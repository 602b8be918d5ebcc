"""`Client`: train a Keras model built in a notebook on the service's workers and use what
they saved, in calls shaped like Keras's own (`fit`, `evaluate`, `predict`, `load_model`).

Only HTTP: the model travels as its `.keras` file (an upload the service checks), the data as
an `.npz` dataset, and the job's events come back as Server-Sent Events. NumPy, Keras and
tqdm are imported when a call needs them, so `import keras_jobs` (and the CLI) start fast and
work where TensorFlow is not installed."""

from __future__ import annotations

import builtins
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from keras_jobs.errors import KerasJobsError
from keras_jobs.events import TERMINAL, Event, follow
from keras_jobs.history import History
from keras_jobs.transport import DEFAULT_TIMEOUT, DEFAULT_URL, Transport

if TYPE_CHECKING:
    from keras_jobs.arrays import Array
    from keras_jobs.inputs import Packed
    from keras_jobs.progress import EpochBars

ArrayLike = Any  # a NumPy array, or anything np.asarray takes
Data = Any  # one array, {input/output name: array}, or a list with one array per name
# What one predict request may hold by default (KJ_MAX_PREDICT_ROWS, KJ_PREDICT_MAX_BODY_BYTES
# less room for the .npz framing); a service configured lower answers 413 and is met there.
MAX_PREDICT_ROWS = 65_536
MAX_PREDICT_BYTES = 48 << 20


class Client:
    """`Client("http://host:8000", api_key=...)`; `api_key` is sent as
    `Authorization: Bearer <key>`. Every refusal, unreachable service and failed job raises
    `KerasJobsError`; its `errors` (and `str()`) point at what was wrong."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT) -> None:
        self.transport = Transport(url, api_key, timeout)
        self.url = self.transport.url
        self._datasets: dict[str, str] = {}  # fingerprint of uploaded arrays -> dataset id
        self._trained: dict[int, str] = {}  # id() of a model fit here -> "name/version"
        self._starts: dict[str, str] = {}  # fingerprint of a model sent -> "name/version"

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- Keras-shaped calls ----------------------------------------------------------------

    def fit(self, model: Any, x: Data = None, y: Data = None, batch_size: int | None = None,
            epochs: int = 1, verbose: int | str = "auto", callbacks: list[Any] | None = None,
            validation_split: float = 0.0, validation_data: Any = None, shuffle: bool = True,
            class_weight: Mapping[Any, float] | None = None, sample_weight: ArrayLike = None,
            initial_epoch: int = 0, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, validation_batch_size: int | None = None,
            validation_freq: int = 1, *, seed: int | None = None, name: str | None = None,
            progress: bool = True, file: IO[str] | None = None,
            **job_options: Any) -> History:
        """`model.fit(...)` on a worker, with Keras's arguments and defaults; the job starts
        from this very model and leaves its trained weights in it, as `model.fit` does.

        The model travels as its `.keras` file (weights, adapted preprocessing state and
        optimizer state included; the service checks it as any upload) and is stored as a
        version of `<name>.start`; the job saves the trained model as the next version of
        `name` (default: `model.name`), which is then loaded back into `model` (weights and
        optimizer state). `x`/`y` are arrays (dicts or lists for several inputs/outputs), or
        `x` is a `tf.data.Dataset`, a generator of `(x, y[, sample_weight])` batches or a
        `keras.utils.PyDataset`, read once and streamed up (trained in the order read, as
        Keras trains a dataset: its own batches, not shuffled). `validation_split` holds out
        the last rows, as Keras does. `seed` makes the job repeatable: the same History as
        `keras.utils.set_random_seed(seed)` then `model.fit(...)` here. Other keyword
        arguments are the job's own options (`keep_best`, `deterministic`, `input`,
        `validation_split_shuffled`, ...). A bar per epoch shows the live metrics
        (`verbose=0` or `progress=False` hides it, `file=` writes it as text). Ctrl-C asks
        whether to cancel the job or leave it running."""
        from keras_jobs.inputs import is_iterable_data, pack_arrays, pack_batches

        if validation_steps is not None or validation_batch_size is not None:
            raise ValueError("validation_steps and validation_batch_size are not job options: "
                             "the validation data is read whole, at batch_size")
        name = name or str(model.name)
        progress = progress and verbose != 0
        in_names, out_names = _input_names(model), _output_names(model)
        if is_iterable_data(x):
            if y is not None or sample_weight is not None:
                raise ValueError("with a dataset or generator, y and sample_weight come from "
                                 "its batches: (x, y) or (x, y, sample_weight)")
            if batch_size is not None:
                raise ValueError("do not give batch_size with a dataset or generator (as in "
                                 "Keras): its batches are the batches")
            if validation_split:
                raise ValueError("validation_split is only supported for arrays (as in "
                                 "Keras); give validation_data")
            train = pack_batches(x, in_names, out_names, max_batches=steps_per_epoch)
            batch_size, shuffle, steps_per_epoch = train.batch_size, False, None
        else:
            if x is None or y is None:
                raise ValueError("fit needs x and y (or x a dataset of (x, y) batches)")
            train = pack_arrays(x, y, sample_weight, in_names, out_names)
        batch_size = 32 if batch_size is None else int(batch_size)
        val = None
        try:
            if validation_data is not None:
                val = self._validation(validation_data, in_names, out_names)
            options = callback_options(callbacks)  # refused here, before any upload
            body: dict[str, Any] = {
                "type": "fit", "from_model": self._start(model, _start_name(name)),
                "x": train.x, "y": train.y, "epochs": epochs, "batch_size": batch_size,
                "shuffle": shuffle, "initial_epoch": initial_epoch,
                "validation_freq": validation_freq, "model_name": name}
            body["dataset_id"] = self._upload(train, f"{name}-train", progress, file)
            train_rows = train.rows
            if val is not None:
                body["validation_dataset_id"] = self._upload(val, f"{name}-validation",
                                                             progress, file)
            elif validation_split:
                body["validation_split"] = validation_split
                train_rows = int(math.floor(train.rows * (1.0 - validation_split)))  # Keras's
            if train.sample_weight:
                body["sample_weight"] = train.sample_weight
            if class_weight:
                body["class_weight"] = {str(int(k)): float(v) for k, v in class_weight.items()}
            if steps_per_epoch is not None:
                body["steps_per_epoch"] = steps_per_epoch
            if seed is not None:
                body["seed"] = seed
            body.update(options)
            body.update(job_options)
            job = self.submit(body)
        finally:
            train.close()
            if val is not None:
                val.close()
        steps = steps_per_epoch or math.ceil(train_rows / batch_size)
        params = {"verbose": 1 if progress else 0, "epochs": epochs, "steps": steps}
        history = self._fit_history(job["id"], params, initial_epoch, progress, file)
        if history.status == "succeeded" and history.version is not None:
            self._take_trained(model, str(history.model_name), history.version)
            self._trained[id(model)] = str(history.model_ref)
        history.model = model
        return history

    def attach(self, job_id: str, *, progress: bool = True,
               file: IO[str] | None = None) -> History:
        """Follow a fit job already submitted (say, one left running after Ctrl-C) and return
        its History once it has ended."""
        job = self.job(job_id)
        params = {"verbose": 1 if progress else 0, "epochs": job["epochs"],
                  "steps": self._expected_steps(job)}
        return self._fit_history(job_id, params, _initial_epoch(job), progress, file)

    def evaluate(self, model: Any, x: Data = None, y: Data = None,
                 batch_size: int | None = None, verbose: int | str = "auto",
                 sample_weight: ArrayLike = None, steps: int | None = None,
                 callbacks: list[Any] | None = None, return_dict: bool = False
                 ) -> float | list[float] | dict[str, float]:
        """`model.evaluate` as an evaluate job on a saved version: `model` is `"name"` (the
        latest), `"name/3"`, the History a fit returned, or a model this client trained. As in
        Keras: the loss (a float) when there are no metrics, else `[loss, *metrics]` (the
        metrics in the order the job recorded them), or a dict with `return_dict=True`. `x`
        may be a dataset or generator of `(x, y)` batches (its batch size is the job's)."""
        from keras_jobs.inputs import is_iterable_data, pack_arrays, pack_batches

        if sample_weight is not None:
            raise ValueError("evaluate jobs take no sample_weight")
        if callbacks:
            raise ValueError("evaluate jobs run no callbacks")
        ref = self._ref(model)
        name, _, version = ref.partition("/")
        path = _model_path(name, int(version) if version else None)
        if is_iterable_data(x):
            packed = pack_batches(x, [], [], max_batches=steps)
            batch_size = packed.batch_size
        else:
            packed = pack_arrays(x, y, None, self._names(path, "inputs", x),
                                 self._names(path, "outputs", y))
        try:
            dataset_id = self._upload(packed, f"{name}-evaluate", False, None)
        finally:
            packed.close()
        job = self.submit({"type": "evaluate", "model": ref, "dataset_id": dataset_id,
                           "x": packed.x, "y": packed.y, "batch_size": batch_size or 32})
        done = self._follow(job["id"], None)
        if done is None:
            raise KeyboardInterrupt(f"evaluate interrupted; job {job['id']} left running")
        result = {k: float(v) for k, v in (done.get("result") or {}).items()
                  if isinstance(v, int | float)}
        if return_dict:
            return result
        # Keras's order puts the loss first (the job records the others by name).
        values = [result[k] for k in sorted(result, key=lambda k: k != "loss")]
        return values[0] if len(values) == 1 else values

    def predict(self, model: Any, x: Data, batch_size: int | None = None,
                verbose: int | str = "auto", steps: int | None = None,
                callbacks: list[Any] | None = None, *, version: int | None = None,
                label: str | None = None) -> Array | dict[str, Array]:
        """`model.predict(x)` by a served version (`model`: `"name"`, `"name/3"`, a History or
        a model this client trained; or `version`/`label`), sent as `.npy`/`.npz` in requests
        that fit the service's limits on rows and bytes (a 413 halves them); a dict by output
        name for a model with several outputs. `batch_size` caps the rows of one request.
        `x` may be a dataset or generator of batches (`x` or `(x, ...)`; at most `steps`)."""
        from keras_jobs.arrays import concat
        from keras_jobs.inputs import is_iterable_data, iter_batches

        if callbacks:
            raise ValueError("predict runs no callbacks")
        if version is not None and label is not None:
            raise ValueError("give version or label, not both")
        ref = self._ref(model)
        name, _, pinned = ref.partition("/")
        path = _model_path(name, version if version is not None else
                           (int(pinned) if pinned else None), label)
        if is_iterable_data(x):
            answers = [self._predict_rows(path, self._predict_input(path, batch), batch_size)
                       for batch in iter_batches(x, steps)]
            if not answers:
                raise ValueError("the data yielded no batches")
            return concat(answers)
        return self._predict_rows(path, self._predict_input(path, x), batch_size)

    def predict_job(self, model: Any, x: Data, batch_size: int | None = None, *,
                    output_name: str = "predictions", progress: bool = False,
                    file: IO[str] | None = None) -> Array | dict[str, Array]:
        """A batch-predict job (`model.predict(x, batch_size)` on a worker, for data too large
        for request/response predict): `x` is uploaded as a dataset (arrays, or a dataset or
        generator of batches, streamed), the job writes the predictions as a new dataset, and
        they are read back as NumPy (a dict by output name for several outputs)."""
        from keras_jobs.inputs import is_iterable_data, pack_arrays, pack_batches

        ref = self._ref(model)
        name, _, version = ref.partition("/")
        path = _model_path(name, int(version) if version else None)
        if is_iterable_data(x):
            names = [str(t["name"]) for t in self.transport.json(
                "GET", f"{path}/metadata")["inputs"]]
            packed = pack_batches(x, names, [], with_targets=False)
        else:
            packed = pack_arrays(x, None, None, self._names(path, "inputs", x), [])
        try:
            dataset_id = self._upload(packed, f"{name}-predict", progress, file)
        finally:
            packed.close()
        job = self.submit({"type": "predict", "model": ref, "dataset_id": dataset_id,
                           "x": packed.x, "batch_size": batch_size or 32,
                           "output_name": output_name})
        done = self._follow(job["id"], None)
        if done is None:
            raise KeyboardInterrupt(f"predict interrupted; job {job['id']} left running")
        arrays = self.dataset(str(done["result"]["dataset_id"]))
        assert isinstance(arrays, dict)
        if set(arrays) == {output_name}:
            return arrays[output_name]
        prefix = f"{output_name}."
        return {k.removeprefix(prefix): v for k, v in arrays.items()}

    def upload_model(self, model: Any, name: str, *, progress: bool = False,
                     file: IO[str] | None = None) -> dict[str, Any]:
        """A `.keras` file (a path) or a Keras model (saved to one here) as the next version of
        `name`, streamed; the service checks it (allowlist, limits, compile settings) before
        storing it. The created version's JSON (`name`, `version`, ...)."""
        if isinstance(model, str | os.PathLike):
            return self._upload_model_file(Path(model), name, progress, file)
        with tempfile.TemporaryDirectory(prefix="keras-jobs-") as folder:
            path = Path(folder) / f"{name}.keras"
            model.save(path)
            return self._upload_model_file(path, name, progress, file)

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

    def load_model(self, name: str, version: int | None = None) -> Any:
        """The saved version (the latest when `version` is None) as a Keras model:
        the `.keras` file is downloaded and opened with `keras.saving.load_model`."""
        import keras

        if version is None:
            version = int(self.model(name)["latest_version"])
        with tempfile.TemporaryDirectory(prefix="keras-jobs-") as folder:
            path = Path(folder) / f"{name}-{version}.keras"
            with path.open("wb") as out, self.transport.stream(
                    "GET", f"{_model_path(name, version)}/download") as response:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            return keras.saving.load_model(path)

    # --- the REST resources (the CLI's building blocks) --------------------------------------

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
        bars = self._bars(job, None, _initial_epoch(job), progress, file, table, table_file)
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
        return dict(self.transport.json("GET", _model_path(name)))

    def delete_version(self, name: str, version: int) -> None:
        """Delete a version of `name` (its file too); refused (409) while a label points at
        it or a queued or running job uses it."""
        self.transport.request("DELETE", _model_path(name, version))

    def predict_json(self, name: str, body: Any, version: int | None = None,
                     label: str | None = None) -> dict[str, Any]:
        """TensorFlow Serving's JSON predict: `{"instances": ...}` or `{"inputs": ...}`."""
        path = _model_path(name, version, label) + ":predict"
        return dict(self.transport.json("POST", path, json=body))

    # --- following jobs ----------------------------------------------------------------------

    def _fit_history(self, job_id: str, params: dict[str, Any], first_epoch: int,
                     progress: bool, file: IO[str] | None) -> History:
        bars = self._bars(None, params, first_epoch, progress, file, False)
        done = self._follow(job_id, bars)
        if done is None:  # left running after Ctrl-C: what it has done so far
            return History(self.job(job_id), params)
        return History(done, params)

    def _bars(self, job: dict[str, Any] | None, params: dict[str, Any] | None,
              first_epoch: int, progress: bool, file: IO[str] | None,
              table: bool, table_file: IO[str] | None = None) -> EpochBars:
        from keras_jobs.progress import EpochBars

        if job is not None:
            epochs = int(job["epochs"])
            steps = self._expected_steps(job)
        else:
            assert params is not None
            epochs, steps = int(params["epochs"]), params.get("steps")
        return EpochBars(epochs, steps, first_epoch=first_epoch, file=file, table=table,
                         table_file=table_file, disable=not progress)

    def _expected_steps(self, job: dict[str, Any]) -> int | None:
        """Batches per epoch of a fit job, for the bar's length before the first progress
        event says it: the dataset's rows less the held-out fraction, over the batch size."""
        p = job.get("params") or {}
        if job.get("type") != "fit":
            return None
        if p.get("steps_per_epoch"):
            return int(p["steps_per_epoch"])
        try:
            n = int(self.dataset_info(str(job["dataset_id"]))["num_rows"])
        except (KerasJobsError, KeyError, TypeError, ValueError):
            return None
        if p.get("validation_split"):
            n = int(math.floor(n * (1.0 - float(p["validation_split"]))))
        elif p.get("validation_split_shuffled"):
            n = math.ceil(n * (1 - float(p["validation_split_shuffled"])))
        return math.ceil(n / int(p.get("batch_size") or 32))

    def _follow(self, job_id: str, bars: EpochBars | None) -> dict[str, Any] | None:
        """Follow the job to its end and return its JSON if it succeeded (KerasJobsError if it
        failed or was cancelled). Ctrl-C asks whether to cancel it: yes re-raises the
        KeyboardInterrupt once the cancel is sent, no returns None (it keeps running)."""
        try:
            for event in self.events(job_id):
                if bars is not None:
                    bars.handle(event)
        except KeyboardInterrupt:
            if bars is not None:
                bars.close()
            if _ask_cancel(job_id):
                self.cancel(job_id)
                print(f"Cancel requested for {job_id}.")
                raise
            print(f"{job_id} keeps running; Client.attach({job_id!r}) follows it again.")
            return None
        finally:
            if bars is not None:
                bars.close()
        job = self.job(job_id)
        if job["status"] == "succeeded":
            return job
        status = job["status"]
        if status not in TERMINAL:  # the stream said it ended; the row must agree
            raise KerasJobsError("Job still running", f"{job_id} is {status}", job=job)
        raise KerasJobsError(f"Job {status}", str(job.get("error") or f"{job_id} was {status}"),
                             job=job)

    def _dataset(self, arrays: Mapping[str, Array], name: str, progress: bool,
                 file: IO[str] | None) -> str:
        """The id of a dataset holding `arrays`: the one uploaded earlier by this client if the
        same arrays were sent and it still exists (re-running a notebook cell does not store
        the data again), else a new upload."""
        from keras_jobs.arrays import fingerprint

        key = fingerprint(arrays)
        known = self._datasets.get(key)
        if known is not None:
            try:
                self.dataset_info(known)
                return known
            except KerasJobsError as exc:
                if exc.status != 404:
                    raise
        dataset_id = str(self.upload_arrays(arrays, name, progress=progress, file=file)["id"])
        self._datasets[key] = dataset_id
        return dataset_id

    def _ref(self, model: Any) -> str:
        """'name' or 'name/3' of a name, a History or a model this client trained."""
        if isinstance(model, str):
            return model
        if isinstance(model, History):
            if model.model_ref is None:
                raise ValueError("this fit saved no model version (it did not succeed)")
            return model.model_ref
        ref = self._trained.get(id(model))
        if ref is None:
            raise ValueError("this model was not trained by this client; give the name of a "
                             "saved version ('name' or 'name/3')")
        return ref

    def _start(self, model: Any, name: str) -> str:
        """The version a fit starts from: `model` uploaded as the next version of `name`, or
        the version this client uploaded earlier for the same model (config, compile
        settings, weights and optimizer state alike: re-running a cell stores nothing
        again), if it still exists."""
        import numpy as np

        from keras_jobs.arrays import fingerprint

        state = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        optimizer = getattr(model, "optimizer", None)
        for i, v in enumerate(getattr(optimizer, "variables", None) or []):
            state[f"o{i}"] = np.asarray(v)
        config = json.dumps([model.to_json(), model.get_compile_config()], sort_keys=True,
                            default=str)
        key = f"{name}|{fingerprint(state)}|{hashlib.sha256(config.encode()).hexdigest()}"
        known = self._starts.get(key)
        if known is not None:
            ref_name, _, version = known.partition("/")
            try:
                self.transport.json("GET", _model_path(ref_name, int(version)))
                return known
            except KerasJobsError as exc:
                if exc.status != 404:
                    raise
        created = self.upload_model(model, name)
        self._starts[key] = f"{created['name']}/{created['version']}"
        return self._starts[key]

    def _validation(self, data: Any, in_names: list[str], out_names: list[str]) -> Packed:
        from keras_jobs.inputs import is_iterable_data, pack_arrays, pack_batches

        if is_iterable_data(data):
            return pack_batches(data, in_names, out_names)
        if not isinstance(data, tuple | list) or len(data) not in (2, 3):
            raise ValueError("validation_data takes (x_val, y_val), or a dataset of batches")
        if len(data) == 3 and data[2] is not None:
            raise ValueError("validation_data: the service takes no validation sample weights")
        return pack_arrays(data[0], data[1], None, in_names, out_names)

    def _upload(self, packed: Packed, name: str, progress: bool,
                file: IO[str] | None) -> str:
        """The dataset id of packed data: NumPy arrays through the fingerprint cache, batches
        read from an iterable from their `.npz` on disk."""
        if packed.arrays is not None:
            return self._dataset(packed.arrays, name, progress, file)
        assert packed.path is not None
        return str(self.upload_file(packed.path, name, progress=progress, file=file)["id"])

    def _upload_model_file(self, path: Path, name: str, progress: bool,
                           file: IO[str] | None) -> dict[str, Any]:
        from keras_jobs.progress import upload_bar

        size = path.stat().st_size
        with path.open("rb") as data, upload_bar(size, f"Uploading {path.name}", file,
                                                 disable=not progress) as bar:
            return dict(self.transport.upload(f"{_model_path(name)}/versions", data, size,
                                              path.name, on_chunk=bar.update))

    def _take_trained(self, model: Any, name: str, version: int) -> None:
        """Leave in `model` what `model.fit` would have: the trained version's weights and,
        where the optimizers match, its optimizer state (step count, moments)."""
        trained = self.load_model(name, version)
        model.set_weights(trained.get_weights())
        source, target = getattr(trained, "optimizer", None), getattr(model, "optimizer", None)
        if source is None or target is None or not getattr(source, "built", False):
            return
        if not getattr(target, "built", False):
            target.build(model.trainable_variables)
        pairs = list(zip(target.variables, source.variables, strict=False))
        if len(target.variables) == len(source.variables) and all(
                tuple(t.shape) == tuple(s.shape) for t, s in pairs):
            for t, s in pairs:
                t.assign(s)

    def _predict_input(self, path: str, x: Any) -> Array | dict[str, Array]:
        """One array, or {input name: array} for a dict or a list with one array per input."""
        import numpy as np

        from keras_jobs.inputs import to_numpy

        x = to_numpy(x)
        if isinstance(x, list | tuple) and len(x) > 1 and not _is_rows(x):
            x = dict(zip(self._names(path, "inputs", x), x, strict=True))
        if isinstance(x, Mapping):
            return {str(k): np.asarray(v) for k, v in x.items()}
        return np.asarray(x)

    def _predict_rows(self, path: str, x: Array | dict[str, Array],
                      batch_size: int | None) -> Array | dict[str, Array]:
        """Requests of at most `batch_size` rows that fit the service's limits (65,536 rows
        and 64 MiB by default): a 413 halves the rows (or takes the limit it names) and sends
        that chunk again."""
        from keras_jobs.arrays import concat, decode, encode, rows

        n = rows(x) if isinstance(x, Mapping) else len(x)
        row_bytes = max(1, _nbytes(x) // max(n, 1))
        chunk = max(1, min(n, batch_size or n, MAX_PREDICT_ROWS,
                           MAX_PREDICT_BYTES // row_bytes))
        answers = []
        start = 0
        while start < n:
            part = ({k: v[start:start + chunk] for k, v in x.items()}
                    if isinstance(x, Mapping) else x[start:start + chunk])
            body, media = encode(part)
            try:
                response = self.transport.request(
                    "POST", f"{path}:predict", content=body,
                    headers={"Content-Type": media,
                             "Accept": "application/x-npy, application/x-npz"})
            except KerasJobsError as exc:
                if exc.status != 413 or chunk == 1:
                    raise
                limit = exc.problem.get("limit")
                chunk = (min(int(limit), chunk // 2) if isinstance(limit, int) and limit > 0
                         else chunk // 2) or 1
                continue
            answers.append(decode(response.content))
            start += chunk
        return concat(answers)

    def _names(self, path: str, key: str, value: Data) -> list[str]:
        """The model's input (or output) names, asked of the service (`…/metadata`) only when
        a list gives one array per input."""
        if isinstance(value, list | tuple) and len(value) > 1 and not _is_rows(value):
            metadata = self.transport.json("GET", f"{path}/metadata")
            return [str(t["name"]) for t in metadata[key]]
        return []


def _ask_cancel(job_id: str) -> bool:
    """Cancel (the default: Ctrl-C usually means stop) or leave the job running. A second
    Ctrl-C, or no terminal to ask on, takes the default."""
    try:
        answer = builtins.input(f"\nInterrupted. Cancel job {job_id} on the service? "
                                "[Y/n] (n leaves it running) ")
    except (EOFError, KeyboardInterrupt):
        return True
    return answer.strip().lower() not in ("n", "no")


def _is_rows(value: list[Any] | tuple[Any, ...]) -> bool:
    """A list of rows (`[[0, 3], [3, 0]]`) rather than one array per input: its items are
    not arrays themselves."""
    return not all(hasattr(item, "shape") for item in value)


def _start_name(name: str) -> str:
    """The model a fit's starting point is stored under (a name the registry takes)."""
    return f"{name[:94]}.start"


def callback_options(callbacks: list[Any] | None) -> dict[str, Any]:
    """The job options that stand for `callbacks`: Keras callback objects mapped to the job's
    callback form (keras_jobs.callbacks, which refuses, saying what to do instead, what the
    service does not run), dicts passed as they are."""
    from keras_jobs.callbacks import to_json

    return {"callbacks": to_json(callbacks)} if callbacks else {}


def _nbytes(x: Any) -> int:
    if isinstance(x, Mapping):
        return sum(int(v.nbytes) for v in x.values())
    return int(x.nbytes)


def _initial_epoch(job: dict[str, Any]) -> int:
    return int((job.get("params") or {}).get("initial_epoch") or 0)


def _model_path(name: str, version: int | None = None, label: str | None = None) -> str:
    path = f"/v1/models/{quote(name, safe='')}"
    if version is not None:
        return f"{path}/versions/{int(version)}"
    if label is not None:
        return f"{path}/labels/{quote(label, safe='')}"
    return path


def _input_names(model: Any) -> list[str]:
    try:
        return [str(t.name) for t in model.inputs]
    except (AttributeError, ValueError, TypeError):  # a subclassed or unbuilt model
        return []


def _output_names(model: Any) -> list[str]:
    try:
        return [str(n) for n in model.output_names]
    except (AttributeError, ValueError, TypeError):
        return []
