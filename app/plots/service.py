"""Plots of what the service holds: a fit job's History, and a model version's decision line
over a dataset's points. Lookups and checks live here; the drawing is in render.py and runs in
one thread of its own (the routes never draw on the event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from anyio import to_thread

from app.core.db import session_scope
from app.core.errors import DomainError, FieldError, conflict, did_you_mean, invalid
from app.core.storage import get_store
from app.datasets import service as datasets
from app.jobs import service as jobs
from app.plots import render
from app.plots.render import Format, Image
from app.predict.servable import Servable
from app.predict.service import Ref, loaded_model
from app.predict.signature import TensorInfo, fmt_shape
from app.registry import service as registry
from app.tables import JobType

__all__ = ["Format", "Image", "boundary_image", "history_image", "pick_metrics"]

# Points drawn from a dataset: past a few thousand more points add ink, not information.
MAX_POINTS = 5000
MAX_PANELS = 12
# Grid rows per model call: bounds the memory a large 2-feature model needs for the contour.
CHUNK_ROWS = 4096
_NUMERIC = "biuf"  # booleans, integers, floats: what a class value or coordinate can be
MAX_QUEUED_RENDERS = 32
# One thread draws (matplotlib is not thread-safe; render.py's lock guards direct callers).
_renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plot-render")
_queued = 0


async def history_image(owner: str, job_id: str, metrics: str | None, width: int, height: int,
                        fmt: Format) -> Image:
    """The job's loss and metric curves, training and validation, one panel per metric."""
    hist, title = await to_thread.run_sync(_history, owner, job_id)
    names = pick_metrics(hist, metrics)
    return await _render(partial(render.history, hist, names, width, height, fmt, title=title))


def _history(owner: str, job_id: str) -> tuple[dict[str, list[float | None]], str]:
    """Blocking: the job's History, in a session of its own that is closed before any drawing
    (a render may wait for others; it must not hold a pooled connection meanwhile)."""
    with session_scope() as s:
        job = jobs.get(s, owner, job_id)
        if job.type is not JobType.fit:
            raise conflict(f"Job {job_id} is a {job.type} job; only fit jobs have a per-epoch "
                           "history to plot.")
        hist = jobs.history(s, job.id)
        if not hist:
            raise conflict(f"Job {job_id} ended ({job.status}) before its first epoch did; it "
                           "has no curves." if job.status.finished else
                           f"Job {job_id} ({job.status}) has no finished epoch yet; its curves "
                           "can be drawn once the first epoch has ended.")
        done = len(next(iter(hist.values())))
        return hist, f"{job.model_name or job.id}: {done}/{job.epochs} epochs"


async def _render(draw: Callable[[], Image]) -> Image:
    """Run `draw` on the one drawing thread. Waiting renders queue here as futures rather than
    each holding a thread of the shared pool while matplotlib is busy; past MAX_QUEUED_RENDERS
    a request is refused at once with 503 and Retry-After."""
    global _queued
    if _queued >= MAX_QUEUED_RENDERS:
        raise DomainError(503, "Overloaded", f"{_queued} plots are waiting to be drawn; retry "
                          "in a second.", type="/problems/overloaded",
                          headers={"Retry-After": "1"})
    _queued += 1  # only ever touched on the event loop
    try:
        return await asyncio.get_running_loop().run_in_executor(_renderer, draw)
    finally:
        _queued -= 1


def pick_metrics(hist: Mapping[str, Sequence[float | None]], asked: str | None) -> list[str]:
    """The panels to draw: the metrics asked for (`loss,binary_accuracy`; a `val_` name picks
    its metric, whose validation curve is drawn with it), or every metric, loss first."""
    available = [k for k in hist if not k.startswith("val_")]
    available += [k[4:] for k in hist if k.startswith("val_") and k[4:] not in hist]
    available.sort(key=lambda k: k != "loss")
    if asked is None:
        return available[:MAX_PANELS]
    names = [n.strip() for n in asked.split(",") if n.strip()]
    if not names or len(names) > MAX_PANELS:
        raise invalid("Name between 1 and 12 metrics, separated by commas.",
                      [FieldError("/query/metrics", f"the history has: {', '.join(available)}")])
    out: list[str] = []
    for name in names:
        base = name[4:] if name.startswith("val_") and name[4:] in available else name
        if base not in available:
            raise invalid(f"The job's history has no metric '{name}'.", [FieldError(
                "/query/metrics", f"unknown metric '{name}'{did_you_mean(name, available)}; "
                f"the history has: {', '.join(available)}")])
        if base not in out:
            out.append(base)
    return out


@dataclass(frozen=True)
class Points:
    xy: np.ndarray  # (m, 2) float64: at most MAX_POINTS rows, evenly spread over the dataset
    classes: np.ndarray  # (m,) bool: y > 0.5
    dataset_name: str


async def boundary_image(owner: str, name: str, version: int, dataset_id: str, x: str, y: str,
                         width: int, height: int, fmt: Format) -> Image:
    """The tutorial's plot for version `version` of `name`: the dataset's points coloured by
    class (`y` thresholded at 0.5) and the line where the model's output is 0.5. The model must
    take one input of 2 features and give one output."""
    points = await to_thread.run_sync(dataset_points, owner, name, version, dataset_id, x, y)
    # The serving code's loaded model (cached per process, warmed): no second copy in memory.
    model = await loaded_model(Ref(owner, name, version=version))
    check_classifier(model.servable.inputs, model.servable.outputs, name, version)
    return await _render(partial(
        render.boundary, points.xy, points.classes, partial(predict_rows, model.servable),
        width, height, fmt, labels=(f"{x}[0]", f"{x}[1]"),
        title=f"{name}/{version} on {points.dataset_name}"))


def dataset_points(owner: str, name: str, version: int, dataset_id: str, x: str,
                   y: str) -> Points:
    """Blocking: the model version must exist (404 first), then the dataset and its arrays;
    the rows drawn are read from the memory-mapped arrays, never the whole dataset."""
    with session_scope() as s:
        registry.resolve(s, owner, name, version)
        try:
            dataset = datasets.get(s, owner, dataset_id)
        except DomainError as exc:
            if exc.status != 404:
                raise
            raise invalid(f"Dataset '{dataset_id}' does not exist.",
                          [FieldError("/query/dataset_id", "no such dataset")]) from exc
        arrays: dict[str, Any] = dict(dataset.arrays)
        folder = get_store().path(dataset.storage_key)
        dataset_name = dataset.name
    for array, pointer in ((x, "/query/x"), (y, "/query/y")):
        if array not in arrays:
            raise invalid(f"Dataset {dataset_id} has no array '{array}'.", [FieldError(
                pointer, f"unknown array '{array}'{did_you_mean(array, arrays)}; the dataset "
                f"has: {', '.join(sorted(arrays))}")])
        if _kind(arrays[array]["dtype"]) not in _NUMERIC:
            raise invalid(f"Array '{array}' is not numeric.",
                          [FieldError(pointer, f"'{array}' holds {arrays[array]['dtype']}")])
    x_shape, y_shape = arrays[x]["shape"], arrays[y]["shape"]
    if len(x_shape) != 2 or x_shape[1] != 2:
        raise invalid(f"Array '{x}' is not a set of 2-D points.", [FieldError(
            "/query/x", f"rows of '{x}' have shape {x_shape[1:]}; the plot needs [2]")])
    if y_shape[1:] not in ([], [1]) or y_shape[0] != x_shape[0]:
        raise invalid(f"Array '{y}' is not one class value per point.", [FieldError(
            "/query/y", f"'{y}' has shape {y_shape}; the plot needs [{x_shape[0]}] or "
            f"[{x_shape[0]}, 1] (one value per row of '{x}')")])
    rows = int(x_shape[0])
    index = np.unique(np.linspace(0, rows - 1, min(rows, MAX_POINTS)).astype(np.int64))
    xs = np.load(folder / f"{x}.npy", mmap_mode="r", allow_pickle=False)
    ys = np.load(folder / f"{y}.npy", mmap_mode="r", allow_pickle=False)
    return Points(xy=np.asarray(xs[index], dtype=np.float64),
                  classes=np.asarray(ys[index], dtype=np.float64).reshape(-1) > 0.5,
                  dataset_name=dataset_name)


def _kind(dtype: str) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return "O"


def check_classifier(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], name: str,
                     version: int) -> None:
    """One input of 2 features (the plane we draw) and one output of one value (its 0.5 line)."""
    if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != (2,):
        got = ", ".join(f"{i.name} {fmt_shape(i.shape)}" for i in inputs)
        raise invalid(f"{name}/{version} does not take 2 features: a decision line is drawn "
                      "in the plane of a model's two inputs.", [FieldError(
                          "/path/version", f"the model's inputs are {got}; the plot needs one "
                          "input of shape [None, 2]")])
    if len(outputs) != 1 or tuple(outputs[0].shape[1:]) not in ((), (1,)):
        got = ", ".join(f"{o.name} {fmt_shape(o.shape)}" for o in outputs)
        raise invalid(f"{name}/{version} does not give one value per row, so it has no 0.5 "
                      "line.", [FieldError("/path/version", f"the model's outputs are {got}; "
                                           "the plot needs one output of shape [None, 1]")])


def predict_rows(servable: Servable, rows: np.ndarray) -> np.ndarray:
    """The model's output for each row (float64, flat), in chunks of CHUNK_ROWS; called on the
    render thread, straight through the servable's `tf.function` (the dynamic batcher's queue
    bound is for requests, and a plot's grid is larger than one request may be)."""
    dtype = np.dtype(servable.inputs[0].dtype)
    parts = [servable([rows[i:i + CHUNK_ROWS].astype(dtype)])[0].reshape(-1)
             for i in range(0, len(rows), CHUNK_ROWS)]
    return np.concatenate(parts).astype(np.float64) if parts else np.empty(0)
