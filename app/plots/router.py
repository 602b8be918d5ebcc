"""Plot routes: a fit job's curves and a model version's decision line, as PNG or SVG.

`.png` or `.svg` in the path picks the format; on `.png`, an `Accept` that prefers
`image/svg+xml` to `image/png` gets SVG (a browser's `<img>` ranks both alike, so it gets
PNG). The `X-Plot-Axes` header says where each plot area landed: its data limits and its box
in the image (PNG pixels, SVG points, from the top-left), so a client can map a pixel to data.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.api import problems
from app.api.deps import CallerDep
from app.plots import service
from app.plots.service import Format, Image
from app.registry.schemas import NameParam, VersionParam

router = APIRouter(tags=["plots"], responses=problems.responses(404, 409, 422, 503))
# 503: a model that cannot be loaded, or too many plots waiting to be drawn (Retry-After).

_IMAGE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The plot: PNG, or SVG as the path or Accept asks",
          "content": {"image/png": {}, "image/svg+xml": {}}}}
# Bounded: a 4000 x 4000 PNG is 64 MB of pixels while it is drawn.
Width = Annotated[int, Query(ge=160, le=4000, description="pixels")]
Height = Annotated[int, Query(ge=120, le=4000, description="pixels")]
ArrayQuery = Annotated[str, Query(min_length=1, max_length=100)]


@router.get("/v1/jobs/{job_id}/history.{fmt}", response_class=Response, responses=_IMAGE)
async def job_history_plot(
    request: Request, caller: CallerDep, job_id: str, fmt: Format,
    metrics: Annotated[str | None, Query(max_length=1000, examples=["loss,binary_accuracy"],
                                         description="comma-separated; default: all")] = None,
    width: Width = 960, height: Height = 400,
) -> Response:
    """Loss and metric curves per epoch, training and validation, as `model.fit`'s History
    holds them (one panel per metric). 409 while the job has no finished epoch."""
    image = await service.history_image(caller.owner, job_id, metrics, width, height,
                                        negotiate(request.headers.get("accept"), fmt))
    # A running job's curves grow: always ask again.
    return _response(image, "no-cache")


@router.get("/v1/models/{name}/versions/{version}/boundary.{fmt}", response_class=Response,
            responses=_IMAGE)
async def model_boundary_plot(
    request: Request, caller: CallerDep, name: NameParam, version: VersionParam, fmt: Format,
    dataset_id: Annotated[str, Query(min_length=1, max_length=100)],
    x: ArrayQuery = "x", y: ArrayQuery = "y",
    width: Width = 640, height: Height = 560,
) -> Response:
    """The tutorial's plot: the dataset's points (`x`, 2 columns) coloured by class (`y`
    thresholded at 0.5) and the decision line where the model's output is 0.5. The model must
    take one input of 2 features and give one value per row (422 otherwise)."""
    image = await service.boundary_image(caller.owner, name, version, dataset_id, x, y, width,
                                         height, negotiate(request.headers.get("accept"), fmt))
    # A version and a dataset never change once made.
    return _response(image, "private, max-age=3600")


def _response(image: Image, cache: str) -> Response:
    axes = json.dumps([a.as_dict() for a in image.axes], separators=(",", ":"))
    return Response(image.body, media_type=image.format.media_type,
                    headers={"Cache-Control": cache, "Vary": "Accept", "X-Plot-Axes": axes})


def negotiate(accept: str | None, asked: Format) -> Format:
    """`.svg` is SVG; `.png` is PNG unless Accept ranks image/svg+xml above image/png."""
    if asked is Format.svg or not accept:
        return asked
    return Format.svg if _quality(accept, "image/svg+xml") > _quality(accept, "image/png") \
        else Format.png


def _quality(accept: str, media: str) -> float:
    """The q of the most specific range in `accept` that matches `media` (0 if none)."""
    kind = media.split("/")[0]
    best, best_q = -1, 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        rng = fields[0].lower()
        specificity = {media: 2, f"{kind}/*": 1, "*/*": 0}.get(rng)
        if specificity is None or specificity < best:
            continue
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best, best_q = specificity, q
    return best_q
