"""The tutorial's plots as images: a fit job's curves (history.png) and a model's decision line
over a dataset (boundary.png). Pixels are read back at data coordinates through the
`X-Plot-Axes` header (each plot area's data limits and box in the image)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.plots.render import CLASS_COLOURS, REGION_COLOURS, TRAIN_COLOUR, VAL_COLOUR, AxesBox
from app.plots.router import negotiate
from app.plots.service import Format, pick_metrics
from tests.helpers import SEED_SPEC, assert_problem, tutorial_fit, two_classes, upload, wait_for_job

CHROME_IMG_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


# --- helpers -------------------------------------------------------------------------------

def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int32)


def decode(r: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """The PNG answer as an (h, w, 3) array; checks the media type and the size asked for."""
    from PIL import Image

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG"
    if size is not None:
        assert image.size == size
    return np.asarray(image.convert("RGB"), dtype=np.int32)


def axes(r: Any) -> list[AxesBox]:
    return [AxesBox(tuple(a["xlim"]), tuple(a["ylim"]), tuple(a["box"]))  # type: ignore[arg-type]
            for a in json.loads(r.headers["x-plot-axes"])]


def pixel(box: AxesBox, x: float, y: float) -> tuple[int, int]:
    """(row, column) of the image pixel at data point (x, y)."""
    col, row = box.to_image(x, y)
    return int(row), int(col)


def near(colour: np.ndarray, hex_colour: str, tolerance: int = 30) -> bool:
    return bool(np.abs(colour - rgb(hex_colour)).max() <= tolerance)


def has_colour(image: np.ndarray, row: int, col: int, hex_colour: str, radius: int = 2) -> bool:
    patch = image[max(row - radius, 0):row + radius + 1, max(col - radius, 0):col + radius + 1]
    return bool((np.abs(patch - rgb(hex_colour)).max(axis=-1) <= 30).any())


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tutorial(client: Any, worker: Any) -> dict[str, Any]:
    """The tutorial's fit as a job: two classes, Dense(1), RMSprop, MSE, 5 epochs, 30% held
    out; waits for it to succeed."""
    x, y = two_classes()
    ds = upload(client, "ui-two-classes", x=x, y=y)
    spec = client.post("/v1/specs", json={**SEED_SPEC, "name": "ui-plots-linear"}).json()
    job = wait_for_job(client, tutorial_fit(client, spec["id"], ds["id"], "ui-plots-linear"))
    assert job["status"] == "succeeded", job
    return {"job": job, "dataset": ds, "x": x, "y": y}


@pytest.fixture(scope="module")
def line_model(client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A hand-set Dense(1): output = x - y + 0.5, so its decision line is x = y and class 1
    (mean [3, 0]) lies where x > y. Uploaded as version 1 of `ui-hand-line`."""
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.array([[1.0], [-1.0]], "float32"),
                                 np.array([0.5], "float32")])
    path = tmp_path_factory.mktemp("keras") / "line.keras"
    model.save(path)
    r = client.post("/v1/models/ui-hand-line/versions",
                    files={"file": ("line.keras", path.read_bytes())})
    assert r.status_code == 201, r.text
    return f"/v1/models/ui-hand-line/versions/{r.json()['version']}"


@pytest.fixture(scope="module")
def points(client: Any) -> dict[str, Any]:
    x, y = two_classes(seed=3)
    ds = upload(client, "ui-points", x=x, y=y, x3=np.hstack([x, x[:, :1]]), y2=np.hstack([y, y]))
    return {"dataset": ds, "x": x, "y": y}


@pytest.fixture
def job_row(client: Any) -> Iterator[Any]:
    """Makes job rows straight in the table (ended, so no worker or sweep ever takes them)
    and removes them afterwards."""
    from app.core.db import session_scope
    from app.tables import Job, JobStatus, JobType

    made: list[str] = []

    def make(type_: str, status: str) -> str:
        with session_scope() as s:
            job = Job(owner="local", type=JobType(type_), status=JobStatus(status), params={},
                      epochs=5)
            s.add(job)
            s.flush()
            made.append(job.id)
            return job.id

    yield make
    with session_scope() as s:
        for job_id in made:
            s.delete(s.get(Job, job_id))


# --- history -------------------------------------------------------------------------------

@pytest.mark.slow
def test_history_png_has_the_asked_size_and_a_point_per_epoch(
        client: Any, tutorial: dict[str, Any]) -> None:
    job = tutorial["job"]
    hist = job["history"]
    r = client.get(f"/v1/jobs/{job['id']}/history.png", params={"width": 700, "height": 330})
    image = decode(r, (700, 330))
    assert r.headers["cache-control"] == "no-cache"
    loss, accuracy = axes(r)  # loss first, then binary_accuracy
    for box, name in ((loss, "loss"), (accuracy, "binary_accuracy")):
        for epoch in range(5):
            train = pixel(box, epoch + 1, hist[name][epoch])
            val = pixel(box, epoch + 1, hist[f"val_{name}"][epoch])
            if abs(train[0] - val[0]) > 8:  # markers apart: each curve's own colour shows
                assert has_colour(image, *train, TRAIN_COLOUR), (name, epoch, "training")
                assert has_colour(image, *val, VAL_COLOUR), (name, epoch, "validation")
            else:
                assert has_colour(image, *val, VAL_COLOUR) or has_colour(
                    image, *train, TRAIN_COLOUR), (name, epoch)
    # Default size.
    decode(client.get(f"/v1/jobs/{job['id']}/history.png"), (960, 400))


@pytest.mark.slow
def test_history_metrics_choice_and_svg(client: Any, tutorial: dict[str, Any]) -> None:
    url = f"/v1/jobs/{tutorial['job']['id']}/history"
    for asked, panels in (("loss", 1), ("loss,binary_accuracy", 2), ("val_loss", 1),
                          ("binary_accuracy, loss,loss", 2)):
        r = client.get(f"{url}.png", params={"metrics": asked, "width": 400, "height": 300})
        decode(r, (400, 300))
        assert len(axes(r)) == panels, asked
    body = assert_problem(client.get(f"{url}.png", params={"metrics": "los"}), 422,
                          "/query/metrics")
    assert "did you mean 'loss'" in body["errors"][0]["detail"]
    assert_problem(client.get(f"{url}.png", params={"metrics": " , "}), 422, "/query/metrics")
    assert_problem(client.get(f"{url}.png", params={"width": 10}), 422, "/query/width")
    assert_problem(client.get(f"{url}.png", params={"height": 10**6}), 422, "/query/height")
    assert_problem(client.get(f"{url}.gif"), 422, "/path/fmt")

    for r in (client.get(f"{url}.svg"),
              client.get(f"{url}.png", headers={"Accept": "image/svg+xml"})):
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/svg+xml"
        assert r.headers["vary"] == "Accept"
        assert b"<svg" in r.content[:500]
    # A browser's <img> ranks SVG and PNG alike: it gets what the path says.
    decode(client.get(f"{url}.png", headers={"Accept": CHROME_IMG_ACCEPT}))


def test_history_refusals(client: Any, job_row: Any) -> None:
    assert_problem(client.get("/v1/jobs/job_nope/history.png"), 404)
    body = assert_problem(client.get(f"/v1/jobs/{job_row('fit', 'cancelled')}/history.png"), 409)
    assert "before its first epoch" in body["detail"]
    body = assert_problem(client.get(f"/v1/jobs/{job_row('evaluate', 'failed')}/history.png"),
                          409)
    assert "only fit jobs" in body["detail"]


# --- decision line -------------------------------------------------------------------------

def test_boundary_draws_the_line_and_the_classes(client: Any, line_model: str,
                                                 points: dict[str, Any]) -> None:
    size = (640, 560)
    r = client.get(f"{line_model}/boundary.png",
                   params={"dataset_id": points["dataset"]["id"], "width": size[0],
                           "height": size[1]})
    image = decode(r, size)
    (box,) = axes(r)
    left, top, right, bottom = box.box
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    x, y = points["x"], points["y"].reshape(-1)

    def in_legend(row: int, col: int) -> bool:  # the legend sits in the upper right corner
        return col > right - 0.4 * (right - left) and row < top + 0.25 * (bottom - top)

    # 1. Points well away from the line x = y have their class's colour.
    checked = [0, 0]
    for (px, py), cls in zip(x.tolist(), (y > 0.5).tolist(), strict=True):
        row, col = pixel(box, px, py)
        if abs(px - py) < 1.5 or in_legend(row, col):
            continue
        assert near(image[row, col], CLASS_COLOURS[cls]), (px, py, cls, image[row, col])
        checked[cls] += 1
    assert min(checked) > 500, checked

    # 2. Background pixels away from every point are tinted by the side of the line they
    # are on: class 1's region where x > y.
    drawn = np.array([pixel(box, px, py) for px, py in x.tolist()])
    regions = [0, 0]
    for row in range(int(top) + 4, int(bottom) - 4, 9):
        for col in range(int(left) + 4, int(right) - 4, 9):
            if in_legend(row, col) or (np.abs(drawn - [row, col]).max(axis=1) < 7).any():
                continue
            xs = box.xlim[0] + (col + 0.5 - left) / (right - left) * (box.xlim[1] - box.xlim[0])
            ys = box.ylim[1] - (row + 0.5 - top) / (bottom - top) * (box.ylim[1] - box.ylim[0])
            if abs(xs - ys) * (right - left) / (box.xlim[1] - box.xlim[0]) < 8:
                continue  # too close to the line
            side = int(xs > ys)
            assert near(image[row, col], REGION_COLOURS[side], 12), (row, col, xs, ys)
            regions[side] += 1
    assert min(regions) > 50, regions

    # 3. The line itself: dark pixels along x = y.
    lo = max(box.xlim[0], box.ylim[0])
    hi = min(box.xlim[1], box.ylim[1])
    along = 0
    for t in np.linspace(lo, hi, 40)[1:-1]:
        row, col = pixel(box, t, t)
        if in_legend(row, col):
            continue
        patch = image[row - 2:row + 3, col - 2:col + 3]
        assert patch.sum(axis=-1).min() < 150, (t, patch.min())
        along += 1
    assert along > 20


def test_boundary_svg_and_defaults(client: Any, line_model: str,
                                   points: dict[str, Any]) -> None:
    params = {"dataset_id": points["dataset"]["id"]}
    decode(client.get(f"{line_model}/boundary.png", params=params), (640, 560))
    for r in (client.get(f"{line_model}/boundary.svg", params=params),
              client.get(f"{line_model}/boundary.png", params=params,
                         headers={"Accept": "image/svg+xml, image/png;q=0.5"})):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/svg+xml"
        assert b"<svg" in r.content[:500]
        (box,) = axes(r)
        assert box.box[2] <= 640 * 0.72 + 1  # SVG units: points (72 per inch, 100 px/inch)


def test_boundary_refusals(client: Any, line_model: str, points: dict[str, Any],
                           tmp_path: Path) -> None:
    import keras

    ds = points["dataset"]["id"]
    url = f"{line_model}/boundary.png"
    assert_problem(client.get(url, params={"dataset_id": "ds_nope"}), 422, "/query/dataset_id")
    body = assert_problem(client.get(url, params={"dataset_id": ds, "x": "xx"}), 422,
                          "/query/x")
    assert "did you mean 'x'" in body["errors"][0]["detail"]
    assert_problem(client.get(url, params={"dataset_id": ds, "y": "nope"}), 422, "/query/y")
    assert_problem(client.get(url, params={"dataset_id": ds, "x": "x3"}), 422, "/query/x")
    assert_problem(client.get(url, params={"dataset_id": ds, "x": "y"}), 422, "/query/x")
    assert_problem(client.get(url, params={"dataset_id": ds, "y": "y2"}), 422, "/query/y")
    assert_problem(client.get(url, params={"dataset_id": ds, "y": "x"}), 422, "/query/y")
    assert_problem(client.get(url), 422, "/query/dataset_id")
    assert_problem(client.get(url, params={"dataset_id": ds, "width": 99999}), 422,
                   "/query/width")
    assert_problem(client.get("/v1/models/ui-nope/versions/1/boundary.png",
                              params={"dataset_id": ds}), 404)
    assert_problem(client.get(url.replace("/versions/1/", "/versions/9/"),
                              params={"dataset_id": ds}), 404)

    # A model of 3 features has no line in the plane of 2.
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(1)])
    model.save(tmp_path / "three.keras")
    r = client.post("/v1/models/ui-three/versions",
                    files={"file": ("three.keras", (tmp_path / "three.keras").read_bytes())})
    assert r.status_code == 201, r.text
    body = assert_problem(client.get("/v1/models/ui-three/versions/1/boundary.png",
                                     params={"dataset_id": ds}), 422, "/path/version")
    assert "[None, 3]" in body["errors"][0]["detail"]
    # Two outputs per row: no single 0.5 line either.
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(2)])
    model.save(tmp_path / "two.keras")
    r = client.post("/v1/models/ui-two-out/versions",
                    files={"file": ("two.keras", (tmp_path / "two.keras").read_bytes())})
    assert r.status_code == 201, r.text
    assert_problem(client.get("/v1/models/ui-two-out/versions/1/boundary.png",
                              params={"dataset_id": ds}), 422, "/path/version")


@pytest.mark.slow
def test_boundary_of_the_trained_tutorial_model(client: Any, tutorial: dict[str, Any]) -> None:
    """The job's own model over its own data: class 0's cloud (mean [0, 3]) in the upper left
    of the plot is on one side of the line, class 1's (mean [3, 0]) on the other."""
    job = tutorial["job"]
    r = client.get(f"/v1/models/{job['model_name']}/versions/{job['model_version']}"
                   "/boundary.png", params={"dataset_id": tutorial["dataset"]["id"]})
    image = decode(r, (640, 560))
    (box,) = axes(r)
    left, top, right, bottom = (int(v) for v in box.box)
    assert near(image[top + 3, left + 3], REGION_COLOURS[0], 12)
    assert near(image[bottom - 3, right - 3], REGION_COLOURS[1], 12)


def test_too_many_waiting_renders_are_refused(client: Any, line_model: str,
                                             points: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from app.plots import service

    monkeypatch.setattr(service, "_queued", service.MAX_QUEUED_RENDERS)
    r = client.get(f"{line_model}/boundary.png", params={"dataset_id": points["dataset"]["id"]})
    assert_problem(r, 503)
    assert r.headers["retry-after"] == "1"


def test_renders_from_many_threads_come_out_whole() -> None:
    """matplotlib is not thread-safe: renders called from several threads at once (the lock
    serializes them) each give a whole image of its own size."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from app.plots import render

    hist: dict[str, list[float | None]] = {"loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.6, 0.4]}
    sizes = [(300 + 37 * i, 200 + 11 * i) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda wh: render.history(hist, ["loss"], *wh, Format.png),
                               sizes))
    for (w, h), image in zip(sizes, images, strict=True):
        assert Image.open(io.BytesIO(image.body)).size == (w, h)


# --- units ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("accept", "asked", "expected"), [
    (None, Format.png, Format.png),
    ("image/svg+xml", Format.png, Format.svg),
    ("image/png", Format.png, Format.png),
    (CHROME_IMG_ACCEPT, Format.png, Format.png),
    ("image/svg+xml, image/png;q=0.5", Format.png, Format.svg),
    ("image/svg+xml;q=0.4, image/*", Format.png, Format.png),
    ("*/*", Format.png, Format.png),
    ("image/png", Format.svg, Format.svg),  # the path's .svg wins
    ("image/svg+xml;q=bad, image/png;q=0.1", Format.png, Format.png),
])
def test_negotiate(accept: str | None, asked: Format, expected: Format) -> None:
    assert negotiate(accept, asked) is expected


def test_pick_metrics() -> None:
    hist: dict[str, list[float | None]] = {"binary_accuracy": [1.0], "loss": [1.0],
                                           "val_loss": [1.0], "val_binary_accuracy": [1.0]}
    assert pick_metrics(hist, None) == ["loss", "binary_accuracy"]
    assert pick_metrics(hist, "val_binary_accuracy,loss") == ["binary_accuracy", "loss"]
    assert pick_metrics({"val_loss": [1.0]}, None) == ["loss"]
