"""Rules are applied by the code that owns what they guard, not by its callers.

The layers, as these checks read them (every module of app/ and worker/ is in exactly one):
- HTTP: app/main.py, app/api/, and every `router.py` or `*_router.py`; the only modules that
  may import FastAPI or Starlette.
- domain: every other module of app/specs, datasets, registry, jobs, predict, plots and auth
  (their services). Only these call a quota check or write an audit record, so both hold
  whoever calls: a route, the worker, the CLI.
- other: worker/ and app/training/ (what a Celery worker runs), app/cli.py (the command line),
  app/core/ and app/tables/ (below the domain), app/ui/ (the pages: its router only).

Every `import` counts, including those inside functions, and a quota check is "called" wherever
it is named (passing `quotas.upload_limit` to a thread pool calls it as surely as a call does)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HTTP_FRAMEWORKS = ("fastapi", "starlette")
# app/<package>/ folders whose modules (router.py aside) are domain services.
DOMAIN_PACKAGES = ("auth", "datasets", "jobs", "plots", "predict", "registry", "specs")
OTHER_PACKAGES = ("api", "core", "tables", "training", "ui")

QUOTAS = "app.auth.quotas"
# What enforces a quota: counting under the tenant's lock, refusing, or the limit a caller
# would enforce itself.
QUOTA_CHECKS = frozenset({"hold", "reserve_job", "reserve_bytes", "check_queued",
                          "check_stored", "upload_limit", "running_limit"})
# What only reads or sets them (the admin routes show and set quotas), or builds an error.
QUOTA_READS = frozenset({"defaults", "overrides", "quota", "usage", "stored_bytes",
                         "describe", "set_overrides", "upload_too_large"})
AUDIT = "app.auth.audit"
AUDIT_WRITES = frozenset({"record"})


def own_files() -> list[Path]:
    return sorted(p for pkg in ("app", "worker") for p in (ROOT / pkg).rglob("*.py"))


def kind(path: Path) -> str:
    """"http", "domain" or "other" (tasks, CLI, core, tables), per the module's docstring."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "worker":
        return "other"
    if parts[-1].endswith("router") or parts[:2] in (("app", "main"), ("app", "api")):
        return "http"
    if len(parts) == 2:  # app/__init__.py, app/cli.py
        return "other"
    if parts[1] in DOMAIN_PACKAGES:
        return "domain"
    assert parts[1] in OTHER_PACKAGES, f"{path}: a new folder of app/ needs a kind in this test"
    return "other"


def framework_imports(source: str) -> list[str]:
    """The FastAPI/Starlette modules `source` imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        found += [n for n in names if n.split(".")[0] in HTTP_FRAMEWORKS]
    return found


def uses(source: str, module: str, names: frozenset[str]) -> list[str]:
    """Where `source` names one of `module`'s functions `names` (`line: name`), through
    `from pkg import mod [as m]`, `import pkg.mod` or `from pkg.mod import name`."""
    package, _, short = module.rpartition(".")
    tree = ast.parse(source)
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            aliases |= {a.asname or a.name for a in node.names if a.name == short}
        elif isinstance(node, ast.ImportFrom) and node.module == module:
            found += [f"{node.lineno}: {a.name}" for a in node.names if a.name in names]
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == module and a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names and (
                (isinstance(node.value, ast.Name) and node.value.id in aliases)
                or ast.unparse(node.value) == module):
            found.append(f"{node.lineno}: {node.attr}")
    return found


def outside_domain(module: str, names: frozenset[str]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{use}" for path in own_files() if kind(path) != "domain"
            for use in uses(path.read_text(), module, names)]


def test_only_the_http_layer_imports_fastapi_or_starlette() -> None:
    found = [f"{path.relative_to(ROOT)} imports {name}" for path in own_files()
             if kind(path) != "http" for name in framework_imports(path.read_text())]
    assert not found, "\n".join(found)


def test_the_worker_process_never_imports_fastapi_or_starlette() -> None:
    """What `keras-jobs worker` and a job's child process import, FastAPI comes in with none."""
    code = ("import sys, app.cli, worker.celery_app, worker.tasks, app.training.runner, "
            "app.training.batch_predict, app.jobs.recovery, app.registry.upload\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HTTP_FRAMEWORKS)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]", out


def test_quota_checks_are_called_only_by_domain_services() -> None:
    found = outside_domain(QUOTAS, QUOTA_CHECKS)
    assert not found, "\n".join(found)


def test_every_quota_function_is_a_check_or_a_read() -> None:
    """A new function of app/auth/quotas.py is put in one list or the other, deliberately."""
    tree = ast.parse((ROOT / "app/auth/quotas.py").read_text())
    public = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)
              and not n.name.startswith("_")}
    assert public == QUOTA_CHECKS | QUOTA_READS
    assert not QUOTA_CHECKS & QUOTA_READS


def test_audit_records_are_written_only_by_domain_services() -> None:
    found = outside_domain(AUDIT, AUDIT_WRITES)
    assert not found, "\n".join(found)


def test_the_checks_can_fail() -> None:
    """Each check sees what it is meant to see: the old routers' ways of breaking the rules are
    found, and the real services' calls are."""
    router = ("from fastapi.concurrency import run_in_threadpool\n"
              "from app.auth import quotas as q\n"
              "import app.auth.audit\n"
              "from app.auth.quotas import reserve_bytes\n"
              "async def f(s):\n"
              "    from starlette.responses import Response\n"
              "    await run_in_threadpool(q.upload_limit, s, 'tenant')\n"
              "    app.auth.audit.record(s, tenant='t', actor='a', action='x', target='y')\n")
    assert framework_imports(router) == ["fastapi.concurrency", "starlette.responses"]
    assert uses(router, QUOTAS, QUOTA_CHECKS) == ["4: reserve_bytes", "7: upload_limit"]
    assert uses(router, AUDIT, AUDIT_WRITES) == ["8: record"]
    assert kind(ROOT / "app/datasets/router.py") == "http"
    assert kind(ROOT / "app/datasets/service.py") == "domain"
    assert kind(ROOT / "app/training/runner.py") == "other"
    assert kind(ROOT / "worker/tasks.py") == "other"
    jobs = (ROOT / "app/jobs/service.py").read_text()
    assert any(u.endswith("reserve_job") for u in uses(jobs, QUOTAS, QUOTA_CHECKS))
    assert any(u.endswith("record") for u in uses(jobs, AUDIT, AUDIT_WRITES))
