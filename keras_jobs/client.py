"""`Client`: train a Keras model built in a notebook on the service's workers and use what
they saved, in calls shaped like Keras's own (`fit`, `evaluate`, `predict`, `load_model`).

Only HTTP: the model travels as its config (`model.to_json()`) and compile settings, the data
as an `.npz` dataset, and the job's events come back as Server-Sent Events. NumPy, Keras and
tqdm are imported when a call needs them, so `import keras_jobs` (and the CLI) start fast and
work where TensorFlow is not installed."""

from __future__ import annotations

import builtins
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
    from keras_jobs.arrays import Array, Selector
    from keras_jobs.progress import EpochBars

ArrayLike = Any  # a NumPy array, or anything np.asarray takes
Data = Any  # one array, {input/output name: array}, or a list with one array per name


class Client:
    """`Client("http://host:8000", api_key=...)`; `api_key` is sent as
    `Authorization: Bearer <key>`. Every refusal, unreachable service and failed job raises
    `KerasJobsError`; its `errors` (and `str()`) point at what was wrong."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT) -> None:
        self.transport = Transport(url, api_key, timeout)
        self.url = self.transport.url
        self._datasets: dict[str, str] = {}  # fingerprint of uploaded arrays -> dataset id

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- Keras-shaped calls ----------------------------------------------------------------

    def fit(self, model: Any, x: Data, y: Data, epochs: int = 5, batch_size: int = 16,
            validation_split: float | None = 0.3,
            validation_data: tuple[Data, Data] | None = None, seed: int | None = None,
            name: str | None = None, *, progress: bool = True, file: IO[str] | None = None,
            **fit_options: Any) -> History:
        """Train `model` (built and compiled here) on a worker, like `model.fit`.

        The model goes as a spec in the import form (its config and compile settings; the
        service's allowlist decides what may run), `x`/`y` as a dataset; the job saves the
        trained model as the next version of `name` (default: `model.name`). A bar per epoch
        shows the live metrics (`progress=False` hides it, `file=` writes it there as text).
        `validation_data` replaces `validation_split`. Other keyword arguments are the job's
        own fit options (shuffle, callbacks as dicts, class_weight, keep_best,
        deterministic, steps_per_epoch, initial_epoch, input, ...); `sample_weight` may be an
        array. Ctrl-C asks whether to cancel the job or leave it running."""
        name = name or str(model.name)
        if fit_options.pop("verbose", 1) == 0:  # Keras's way of asking for no bar
            progress = False
        from keras_jobs.arrays import rows
        from keras_jobs.spec import model_spec

        spec_body = model_spec(model, name)
        arrays, x_sel, y_sel = _training_arrays(model, x, y, fit_options)
        if validation_data is not None and len(validation_data) != 2:
            raise ValueError("validation_data takes (x_val, y_val); the service has no "
                             "validation sample weights")
        val = (_training_arrays(model, validation_data[0], validation_data[1], {})[0]
               if validation_data is not None else None)
        n = rows(arrays)
        spec = self.create_spec(spec_body)  # refused here, with pointers, before any upload
        body: dict[str, Any] = {"type": "fit", "spec_id": spec["id"], "x": x_sel, "y": y_sel,
                                "epochs": epochs, "batch_size": batch_size, "model_name": name}
        body["dataset_id"] = self._dataset(arrays, f"{name}-train", progress, file)
        train_rows = n
        if val is not None:
            body["validation_dataset_id"] = self._dataset(val, f"{name}-validation",
                                                          progress, file)
        elif validation_split:
            body["validation_split"] = validation_split
            train_rows = math.ceil(n * (1 - validation_split))  # the service's (Keras's) split
        if seed is not None:
            body["seed"] = seed
        body.update(fit_options)
        job = self.submit(body)
        steps = fit_options.get("steps_per_epoch") or math.ceil(train_rows / batch_size)
        params = {"verbose": 1 if progress else 0, "epochs": epochs, "steps": steps}
        return self._fit_history(job["id"], params, int(fit_options.get("initial_epoch", 0)),
                                 progress, file)

    def attach(self, job_id: str, *, progress: bool = True,
               file: IO[str] | None = None) -> History:
        """Follow a fit job already submitted (say, one left running after Ctrl-C) and return
        its History once it has ended."""
        job = self.job(job_id)
        params = {"verbose": 1 if progress else 0, "epochs": job["epochs"],
                  "steps": self._expected_steps(job)}
        return self._fit_history(job_id, params, _initial_epoch(job), progress, file)

    def evaluate(self, model: str | History, x: Data, y: Data, batch_size: int = 32
                 ) -> dict[str, float]:
        """`model.evaluate` on a saved version (`"name"` is the latest, `"name/3"`, or the
        History a fit returned): the loss and metrics as a dict."""
        from keras_jobs.arrays import named_arrays

        ref = _ref(model)
        name, _, version = ref.partition("/")
        path = _model_path(name, int(version) if version else None)
        x_arrays, x_sel = named_arrays("x", x, self._names(path, "inputs", x))
        y_arrays, y_sel = named_arrays("y", y, self._names(path, "outputs", y))
        dataset_id = self._dataset({**x_arrays, **y_arrays}, f"{name}-evaluate",
                                   False, None)
        job = self.submit({"type": "evaluate", "model": ref, "dataset_id": dataset_id,
                           "x": x_sel, "y": y_sel, "batch_size": batch_size})
        done = self._follow(job["id"], None)
        if done is None:
            raise KeyboardInterrupt(f"evaluate interrupted; job {job['id']} left running")
        return {k: float(v) for k, v in (done.get("result") or {}).items()
                if isinstance(v, int | float)}

    def predict(self, name: str, x: Data, batch_size: int | None = None,
                version: int | None = None, label: str | None = None
                ) -> Array | dict[str, Array]:
        """Predictions of a served version (the latest, `version` or `label`), sent as
        `.npy`/`.npz` (no JSON round trip for the floats); a dict by output name for a model
        with several outputs. `batch_size` splits `x` into requests of that many rows."""
        from keras_jobs.arrays import concat, decode, encode, split

        if version is not None and label is not None:
            raise ValueError("give version or label, not both")
        import numpy as np

        path = _model_path(name, version, label)
        data = x
        if isinstance(x, list | tuple) and len(x) > 1 and not _is_rows(x):
            data = dict(zip(self._names(path, "inputs", x), x, strict=True))

        if isinstance(data, Mapping):
            data = {str(k): np.asarray(v) for k, v in data.items()}
        else:
            data = np.asarray(data)
        chunks = split(data, batch_size) if batch_size else [data]
        answers = []
        for chunk in chunks:
            body, media = encode(chunk)
            response = self.transport.request(
                "POST", f"{path}:predict", content=body,
                headers={"Content-Type": media,
                         "Accept": "application/x-npy, application/x-npz"})
            answers.append(decode(response.content))
        return concat(answers)

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

    def dataset(self, dataset_id: str) -> dict[str, Any]:
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
            n = int(self.dataset(str(job["dataset_id"]))["num_rows"])
        except (KerasJobsError, KeyError, TypeError, ValueError):
            return None
        if p.get("validation_split") and not p.get("validation_dataset_id"):
            n = math.ceil(n * (1 - float(p["validation_split"])))
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
                self.dataset(known)
                return known
            except KerasJobsError as exc:
                if exc.status != 404:
                    raise
        dataset_id = str(self.upload_arrays(arrays, name, progress=progress, file=file)["id"])
        self._datasets[key] = dataset_id
        return dataset_id

    def _names(self, path: str, key: str, value: Data) -> list[str]:
        """The model's input (or output) names, asked of the service (`…/metadata`) only when
        a list gives one array per input."""
        if isinstance(value, list | tuple) and len(value) > 1 and not _is_rows(value):
            metadata = self.transport.json("GET", f"{path}/metadata")
            return [str(t["name"]) for t in metadata[key]]
        return []


def _training_arrays(model: Any, x: Data, y: Data, fit_options: dict[str, Any]
                     ) -> tuple[dict[str, Array], Selector, Selector]:
    """The dataset arrays of a fit and the job's x/y selectors. A `sample_weight` array (and
    class_weight's integer keys) in `fit_options` become what the job takes: an array name,
    string keys."""
    from keras_jobs.arrays import named_arrays

    x_arrays, x_sel = named_arrays("x", x, _input_names(model))
    y_arrays, y_sel = named_arrays("y", y, _output_names(model))
    arrays = {**x_arrays, **y_arrays}
    weights = fit_options.get("sample_weight")
    if weights is not None and not isinstance(weights, str):
        import numpy as np

        arrays["sample_weight"] = np.asarray(weights)
        fit_options["sample_weight"] = "sample_weight"
    if isinstance(fit_options.get("class_weight"), Mapping):
        fit_options["class_weight"] = {str(int(k)): float(v)
                                       for k, v in fit_options["class_weight"].items()}
    return arrays, x_sel, y_sel


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


def _ref(model: str | History) -> str:
    if isinstance(model, History):
        if model.model_ref is None:
            raise ValueError("this fit saved no model version (it did not succeed)")
        return model.model_ref
    return model


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
