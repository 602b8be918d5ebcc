"""The dashboard (/ui) and the API docs (/docs), served from the package.

Pages are static HTML with one small script each; they read the public API (`/v1/...`) from
the browser, and a job page follows the job's Server-Sent Events. The pages hold no data and
need no key; where the API does, a page that gets a 401 asks for the key and sends it with
every call (static/common.js). Every script, style and library (uPlot, Swagger UI) ships in
`app/ui/static/`, so neither needs the internet: FastAPI's own /docs loads Swagger UI from a
CDN and is blank on an offline host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from app.core.errors import not_found

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages"
STATIC = HERE / "static"
VENDOR = STATIC / "vendor"
SWAGGER_UI = "/ui/static/vendor/swagger-ui-5.35.0"
# Our own files change with the package: revalidate. Vendored ones carry their version in
# their folder's name, so a browser may keep them.
OWN_CACHE = "no-cache"
VENDOR_CACHE = "public, max-age=31536000, immutable"

router = APIRouter(include_in_schema=False)


UPLOT = "/ui/static/vendor/uplot-1.6.32"
# Every page is the one layout with its title, its script (static/<page>.js) and, for the job
# page, the chart library.
TITLES = {"jobs": "Jobs", "job": "Job", "models": "Models", "model": "Model",
          "datasets": "Datasets"}
HEAD = {"job": f'<link rel="stylesheet" href="{UPLOT}/uPlot.min.css">\n'
               f'<script src="{UPLOT}/uPlot.iife.min.js"></script>'}


def _render(layout: str, name: str) -> str:
    return layout.replace("{title}", TITLES[name]).replace("{page}", name).replace(
        "{head}", HEAD.get(name, ""))


# The pages change only with the package: rendered once, when this module is imported.
_LAYOUT = (PAGES / "layout.html").read_text()
HTML = {name: _render(_LAYOUT, name) for name in TITLES}


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(HTML[name], headers={"Cache-Control": OWN_CACHE})


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui")
async def jobs_page() -> HTMLResponse:
    return _page("jobs")


@router.get("/ui/jobs/{job_id}")
async def job_page(job_id: str) -> HTMLResponse:
    return _page("job")  # the script reads the id from the path and asks the API


@router.get("/ui/models")
async def models_page() -> HTMLResponse:
    return _page("models")


@router.get("/ui/models/{name}")
async def model_page(name: str) -> HTMLResponse:
    return _page("model")


@router.get("/ui/datasets")
async def datasets_page() -> HTMLResponse:
    return _page("datasets")


@router.get("/ui/static/{path:path}")
async def static_file(path: str) -> FileResponse:
    # async: one stat() on the event loop costs less than a hop to the thread pool.
    file = (STATIC / path).resolve()
    if not file.is_relative_to(STATIC) or not file.is_file():
        raise not_found("File", path)
    cache = VENDOR_CACHE if file.is_relative_to(VENDOR) else OWN_CACHE
    return FileResponse(file, headers={"Cache-Control": cache})


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI from the package; otherwise what FastAPI's own /docs serves."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{root}{SWAGGER_UI}/favicon-32x32.png",
        # The online validator badge would post the document to swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
