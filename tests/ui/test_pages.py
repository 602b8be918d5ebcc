"""The dashboard's pages and assets are served from the package, /docs uses only local assets,
and everything a page needs ships as package data (no CDN, no build step)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.ui.router import HERE, SWAGGER_UI
from tests.helpers import ROOT, assert_problem

PAGES = ["/ui", "/ui/jobs/job_x", "/ui/models", "/ui/models/seed-linear", "/ui/datasets"]
# src="…" and href="…" in a page (data: URLs aside).
REFERENCE = re.compile(r'(?:src|href)="([^"]+)"')


@pytest.mark.parametrize("path", PAGES)
def test_pages_load_only_local_assets(client: Any, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    refs = [u for u in REFERENCE.findall(r.text) if not u.startswith("data:")]
    assert any(u.endswith(".js") for u in refs)
    for url in refs:
        assert url.startswith("/"), f"{path} refers to {url}: only this server's files"
        if url.startswith("/ui/static/"):
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.content


def test_job_page_brings_the_chart_library(client: Any) -> None:
    html = client.get("/ui/jobs/job_x").text
    assert "/ui/static/vendor/uplot-1.6.32/uPlot.iife.min.js" in html
    js = client.get("/ui/static/vendor/uplot-1.6.32/uPlot.iife.min.js")
    assert js.headers["content-type"].split(";")[0] in ("text/javascript",
                                                        "application/javascript")
    assert "immutable" in js.headers["cache-control"]  # the version is in the path
    assert client.get("/ui/static/job.js").headers["cache-control"] == "no-cache"


def test_docs_use_the_vendored_swagger_ui(client: Any) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    refs = REFERENCE.findall(r.text)
    assert f"{SWAGGER_UI}/swagger-ui-bundle.js" in refs
    assert f"{SWAGGER_UI}/swagger-ui.css" in refs
    assert all(u.startswith("/") for u in refs), refs
    assert "cdn." not in r.text and "'/openapi.json'" in r.text
    for url in refs:
        assert client.get(url).status_code == 200, url
    assert len(client.get(f"{SWAGGER_UI}/swagger-ui-bundle.js").content) > 1_000_000
    # FastAPI's CDN-backed ReDoc is off rather than blank offline; the document stays.
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "keras-jobs"
    assert "/v1/jobs/{job_id}/history.{fmt}" in client.get("/openapi.json").json()["paths"]


def test_root_leads_to_the_dashboard(client: Any) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui"


@pytest.mark.parametrize("path", ["/ui/static/nope.js", "/ui/static/..%2Frouter.py",
                                  "/ui/static/%2e%2e/router.py", "/ui/static/vendor",
                                  "/ui/static/..%2F..%2Fmain.py"])
def test_static_serves_nothing_outside_its_folder(client: Any, path: str) -> None:
    assert_problem(client.get(path), 404)


def test_every_asset_is_package_data() -> None:
    """What setuptools ships is what pyproject's package-data globs match: every page, script,
    style and vendored file under app/ui must match one, or an installed copy would lack it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["app.ui"]
    files = [p.relative_to(HERE) for p in HERE.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert any(p.name == "swagger-ui-bundle.js" for p in files)
    missing = [str(p) for p in files if not any(p.match(g) and len(p.parts) == len(Path(g).parts)
                                                for g in globs)]
    assert missing == []


def test_vendored_libraries_keep_their_licenses() -> None:
    vendor = HERE / "static" / "vendor"
    for folder in (p for p in vendor.iterdir() if p.is_dir()):
        assert (folder / "LICENSE").is_file(), folder
        assert folder.name in (vendor / "README.md").read_text()


@pytest.mark.parametrize("path", [*PAGES, "/ui/static/common.js", "/docs", "/openapi.json"])
def test_pages_need_no_key(client: Any, path: str) -> None:
    """The pages are static shells that hold no data: anyone may load them; their scripts ask
    the API with the key the user gives them."""
    request = client.build_request("GET", path)
    del request.headers["authorization"]
    assert client.send(request).status_code == 200
    api = client.build_request("GET", "/v1/jobs")
    del api.headers["authorization"]
    assert_problem(client.send(api), 401)


def test_every_api_call_carries_the_key() -> None:
    """Only common.js talks to the server (`request` adds the key to every call, the event
    stream included); no page script calls fetch or EventSource itself, and the key is kept
    in sessionStorage, never localStorage."""
    scripts = {p.name: p.read_text() for p in (HERE / "static").glob("*.js")}
    common = scripts.pop("common.js")
    for name, text in scripts.items():
        for direct in ("fetch(", "EventSource", "XMLHttpRequest", "Storage"):
            assert direct not in text, f"{name} uses {direct}: go through KJ.request"
    assert common.count("fetch(") == 1 and "EventSource(" not in common
    assert "sessionStorage.setItem" in common and "localStorage." not in common
    assert 'headers.set("Authorization", `Bearer ${key}`)' in common


def test_an_empty_job_log_says_why_it_is_empty(client: Any) -> None:
    """The job page's "logs" link opens this route: a blank page read as broken."""
    from sqlalchemy import update

    from app.core.db import session_scope
    from app.tables.job import Job, JobStatus
    from tests.helpers import SEED_SPEC, two_classes, upload

    x, y = two_classes(n=40)
    dataset = upload(client, "empty-log", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    r = client.post("/v1/jobs", json={"type": "fit", "spec_id": spec["id"],
                                      "dataset_id": dataset["id"], "epochs": 1})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    logs = client.get(f"/v1/jobs/{job_id}/logs")
    assert logs.status_code == 200 and logs.headers["content-type"].startswith("text/plain")
    assert logs.text == "no log lines yet: the job is queued\n"
    # A job that ran and logged nothing (no worker here: its end is written as a worker would).
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.cancelled))
    assert "no log lines were recorded for this job" in client.get(f"/v1/jobs/{job_id}/logs").text


@pytest.mark.parametrize("script", ["models.js", "model.js"])
def test_number_columns_align_their_headers(client: Any, script: str) -> None:
    """Right-aligned number cells under left-aligned headers read as a misaligned column:
    each table marks as many headers `num` as it has `num` cells, and the CSS aligns both."""
    js = client.get(f"/ui/static/{script}").text
    cells = js.count('el("td", { class: "num" }')
    assert cells and js.count('el("th", { class: "num" }') == cells
    css = client.get("/ui/static/ui.css").text
    assert re.search(r"th\.num[^{]*\{[^}]*text-align: right", css)


def test_the_decision_line_form_starts_at_the_latest_version(client: Any) -> None:
    js = client.get("/ui/static/model.js").text
    assert "selected: v.version === model.latest_version" in js
    assert ".sort((a, b) => b.version - a.version)" in js
