"""Process-wide state lives in the application state (app/core/state.py), and Redis clients are
made in one module (app/core/redis_clients.py).

Two ways state used to hide: a factory cached with `functools.lru_cache`/`cache` (one object
per process, which a test could only replace by clearing caches one by one), and a module
global made at import (`KEYS = KeyTable()`). Both are found here in app/ and worker/ by
reading the code (ast); a cache of pure data is allowed by name, with the reason it holds the
same answer whatever the state."""

from __future__ import annotations

import ast

from tests.structure.test_import_layers import own_modules

STATE_MODULE = "app.core.state"
REDIS_MODULE = "app.core.redis_clients"
# Cached functions that are not app state: what they return is the same for every state.
PURE_CACHES = {
    "app.jobs.job_arrays.version_inputs": "a saved version's inputs, read from its .keras "
    "file (keyed by the file; a version never changes)",
    "app.jobs.recovery.host_key": "the kernel's boot id and this process's pid namespace: "
    "facts of the process, not of its settings",
}
# Calls that make (or read) a piece of app state: at a module's top level, they would hold it
# in a global of that module.
STATE_MAKERS = frozenset({
    "Settings", "AppState", "make_engine", "create_engine", "sessionmaker", "ArtifactStore",
    "Celery", "Redis", "from_url", "KeyTable", "RateLimiter", "Serving", "ModelCache",
    "current",
})
# Module globals that hold a piece of state on purpose.
STATE_GLOBALS = {
    "worker.celery_app.app": "Celery finds the worker's app here (`celery -A "
    "worker.celery_app`): the worker state's own, taken at import",
}


def _cache_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Names this module binds to functools.lru_cache/cache, and to functools itself."""
    caches, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "functools":
            caches |= {a.asname or a.name for a in node.names if a.name in ("lru_cache", "cache")}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "functools"}
    return caches, modules


def _is_cache(decorator: ast.expr, caches: set[str], modules: set[str]) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Name):
        return target.id in caches
    return (isinstance(target, ast.Attribute) and target.attr in ("lru_cache", "cache")
            and isinstance(target.value, ast.Name) and target.value.id in modules)


def cached_functions(module: str, source: str) -> list[str]:
    """The qualified names of the functions (and methods) `source` caches with functools."""
    tree = ast.parse(source)
    caches, modules = _cache_names(tree)
    found: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef) and any(
                        _is_cache(d, caches, modules) for d in child.decorator_list):
                    found.append(name)
                visit(child, name)

    visit(tree, module)
    return found


def state_globals(module: str, source: str) -> list[str]:
    """Module globals assigned, at import, from a call that makes a piece of app state."""
    found = []
    for node in ast.parse(source).body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) and node.value
                   else [])
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if not isinstance(value, ast.Call):
            continue
        func = value.func
        called = (func.id if isinstance(func, ast.Name)
                  else func.attr if isinstance(func, ast.Attribute) else "")
        if called in STATE_MAKERS or called.startswith("get_"):
            found += [f"{module}.{t.id}" for t in targets if isinstance(t, ast.Name)]
    return found


def redis_imports(source: str) -> list[str]:
    """The redis-py modules `source` imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n == "redis" or n.startswith("redis.")]


def _sources() -> dict[str, str]:
    return {name: path.read_text() for name, path in own_modules().items()}


def test_no_cached_factory_of_app_state() -> None:
    cached = {name for module, source in _sources().items() if module != STATE_MODULE
              for name in cached_functions(module, source)}
    hidden = sorted(cached - set(PURE_CACHES))
    assert not hidden, ("process-wide state belongs in app/core/state.py (a `Part`), not in a "
                        "cached function: " + ", ".join(hidden))
    assert set(PURE_CACHES) <= cached, "an allowed cache no longer exists: drop its entry"


def test_no_module_global_made_from_app_state() -> None:
    made = {name for module, source in _sources().items() if module != STATE_MODULE
            for name in state_globals(module, source)}
    hidden = sorted(made - set(STATE_GLOBALS))
    assert not hidden, ("a module global holds app state made at import: " + ", ".join(hidden))
    assert set(STATE_GLOBALS) <= made, "an allowed global no longer exists: drop its entry"


def test_redis_clients_are_made_in_one_module() -> None:
    importers = sorted(module for module, source in _sources().items()
                       if module != REDIS_MODULE and redis_imports(source))
    assert not importers, f"Redis clients come from {REDIS_MODULE}: " + ", ".join(importers)


def test_the_checks_can_fail() -> None:
    """Each check finds what it looks for in a snippet written to be caught, and the real
    code holds what the allow-lists name (so the walkers see the tree)."""
    caught = cached_functions("m", "import functools\nfrom functools import cache as c\n"
                              "@functools.lru_cache(maxsize=2)\ndef get_a(): ...\n"
                              "@c\ndef b(): ...\nclass K:\n    @functools.cache\n"
                              "    def d(self): ...\ndef plain(): ...\n")
    assert caught == ["m.get_a", "m.b", "m.K.d"]
    assert state_globals("m", "KEYS = KeyTable()\nx: Any = get_store()\nN = 3\n"
                         "P = Part('p', f)\n") == ["m.KEYS", "m.x"]
    assert redis_imports("import redis.asyncio as r\nfrom redis import Redis\nimport json\n") \
        == ["redis.asyncio", "redis"]
    assert redis_imports(_sources()[REDIS_MODULE])
