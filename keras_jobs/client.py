"""`Client`: train a Keras model built in a notebook on the service's workers and use what
they saved, in calls shaped like Keras's own (`fit`, `evaluate`, `predict`, `load_model`),
on top of the REST calls it inherits from `keras_jobs.resources.Resources`.

Only HTTP: the model travels as its `.keras` file (an upload the service checks), the data as
an `.npz` dataset, and the job's events come back as Server-Sent Events (followed with bars
by `keras_jobs.follow`). NumPy, Keras and tqdm are imported when a call needs them, so
`import keras_jobs` (and the CLI) start fast and work where TensorFlow is not installed."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

from keras_jobs.errors import KerasJobsError
from keras_jobs.follow import epoch_bars, expected_steps, follow_job, initial_epoch
from keras_jobs.history import History
from keras_jobs.model_state import input_names, output_names, start_name, state_key, take_trained
from keras_jobs.predict_rows import MAX_PREDICT_BYTES, MAX_PREDICT_ROWS, predict_rows
from keras_jobs.resources import ArrayLike, Resources, model_path
from keras_jobs.transport import DEFAULT_TIMEOUT, DEFAULT_URL, Transport

if TYPE_CHECKING:
    from keras_jobs.arrays import Array
    from keras_jobs.inputs import Packed

# Importers of keras_jobs.client take these names from here (MAX_PREDICT_* and ArrayLike are
# defined in keras_jobs.predict_rows and keras_jobs.resources).
__all__ = ["MAX_PREDICT_BYTES", "MAX_PREDICT_ROWS", "ArrayLike", "Client", "Data",
           "callback_options"]

Data = Any  # one array, {input/output name: array}, or a list with one array per name


class Client(Resources):
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
        in_names, out_names = input_names(model), output_names(model)
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
                "type": "fit", "from_model": self._start(model, start_name(name)),
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
                  "steps": expected_steps(self, job)}
        return self._fit_history(job_id, params, initial_epoch(job), progress, file)

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
        path = model_path(name, int(version) if version else None)
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
        done = follow_job(self, job["id"], None)
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
        path = model_path(name, version if version is not None else
                           (int(pinned) if pinned else None), label)
        if is_iterable_data(x):
            answers = [predict_rows(self.transport, path, self._predict_input(path, batch),
                                    batch_size) for batch in iter_batches(x, steps)]
            if not answers:
                raise ValueError("the data yielded no batches")
            return concat(answers)
        return predict_rows(self.transport, path, self._predict_input(path, x), batch_size)

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
        path = model_path(name, int(version) if version else None)
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
        done = follow_job(self, job["id"], None)
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

    def load_model(self, name: str, version: int | None = None) -> Any:
        """The saved version (the latest when `version` is None) as a Keras model:
        the `.keras` file is downloaded and opened with `keras.saving.load_model`."""
        import keras

        if version is None:
            version = int(self.model(name)["latest_version"])
        with tempfile.TemporaryDirectory(prefix="keras-jobs-") as folder:
            path = Path(folder) / f"{name}-{version}.keras"
            with path.open("wb") as out, self.transport.stream(
                    "GET", f"{model_path(name, version)}/download") as response:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            return keras.saving.load_model(path)

    # --- what the Keras-shaped calls share -------------------------------------------------

    def _fit_history(self, job_id: str, params: dict[str, Any], first_epoch: int,
                     progress: bool, file: IO[str] | None) -> History:
        bars = epoch_bars(self, None, params, first_epoch, progress, file, False)
        done = follow_job(self, job_id, bars)
        if done is None:  # left running after Ctrl-C: what it has done so far
            return History(self.job(job_id), params)
        return History(done, params)

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
        key = state_key(model, name)
        known = self._starts.get(key)
        if known is not None:
            ref_name, _, version = known.partition("/")
            try:
                self.transport.json("GET", model_path(ref_name, int(version)))
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
            return dict(self.transport.upload(f"{model_path(name)}/versions", data, size,
                                              path.name, on_chunk=bar.update))

    def _take_trained(self, model: Any, name: str, version: int) -> None:
        """Leave in `model` what `model.fit` would have: the trained version's state."""
        take_trained(model, self.load_model(name, version))

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

    def _names(self, path: str, key: str, value: Data) -> list[str]:
        """The model's input (or output) names, asked of the service (`…/metadata`) only when
        a list gives one array per input."""
        if isinstance(value, list | tuple) and len(value) > 1 and not _is_rows(value):
            metadata = self.transport.json("GET", f"{path}/metadata")
            return [str(t["name"]) for t in metadata[key]]
        return []


def _is_rows(value: list[Any] | tuple[Any, ...]) -> bool:
    """A list of rows (`[[0, 3], [3, 0]]`) rather than one array per input: its items are
    not arrays themselves."""
    return not all(hasattr(item, "shape") for item in value)


def callback_options(callbacks: list[Any] | None) -> dict[str, Any]:
    """The job options that stand for `callbacks`: Keras callback objects mapped to the job's
    callback form (keras_jobs.callbacks, which refuses, saying what to do instead, what the
    service does not run), dicts passed as they are."""
    from keras_jobs.callbacks import to_json

    return {"callbacks": to_json(callbacks)} if callbacks else {}


