"""Static checks of docker-compose.yml / docker-compose.gpu.yml against the app's settings.

The compose files are read with PyYAML and interpolated here (``${VAR:-default}``, ``$$``) the
way Compose does, so that most checks run without Docker. ``docker-compose config -q`` is run too
when the binary is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

yaml = pytest.importorskip("yaml")

from app.core.config import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
APP_SERVICES = ("api", "worker")
REQUIRED_KJ_VARS = ("KJ_HOME", "KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT")
# Variables the compose file interpolates from the host; none of them set -> defaults.
CUSTOM_HOST_ENV = {
    "POSTGRES_USER": "kj_user",
    "POSTGRES_PASSWORD": "s3cretpw",
    "POSTGRES_DB": "kj_db",
    "KJ_LOG_LEVEL": "DEBUG",
}

# ---------------------------------------------------------------------------------------------
# Loading and interpolation
# ---------------------------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose-style variable substitution (the subset Compose 1.29 supports)."""

    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        present = name in env
        val = env.get(name, "")
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if present else arg
        if op in (":?", "?") and (not present or (op == ":?" and not val)):
            raise KeyError(f"required variable {name} is not set: {arg}")
        return val

    return _VAR.sub(repl, value)


def _interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    return node


def load_compose(path: Path = COMPOSE, env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text())  # resolves the x- anchors and `<<` merge keys
    assert isinstance(raw, dict), f"{path.name} is not a mapping"
    return _interpolate_tree(raw, env or {})


def service(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    services = cfg.get("services") or {}
    assert name in services, f"service {name!r} missing from compose file"
    return services[name]


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str] = {}
        for item in env:
            key, _, val = str(item).partition("=")
            out[key] = val
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def kj_env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in service_env(svc).items() if k.startswith("KJ_")}


def mounts(cfg: dict[str, Any], svc: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes of a service as {source, target, read_only, named}, short or long syntax."""
    named_volumes = set((cfg.get("volumes") or {}).keys())
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) == 1:
                source, target, mode = None, parts[0], ""
            else:
                source, target = parts[0], parts[1]
                mode = parts[2] if len(parts) > 2 else ""
            read_only = "ro" in mode.split(",")
        else:
            source, target = vol.get("source"), vol["target"]
            read_only = bool(vol.get("read_only", False))
        out.append(
            {
                "source": source,
                "target": PurePosixPath(target),
                "read_only": read_only,
                "named": source in named_volumes,
            }
        )
    return out


def mount_for(cfg: dict[str, Any], svc: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The mount a container path lies on (deepest matching target)."""
    p = PurePosixPath(path)
    hits = [m for m in mounts(cfg, svc) if p == m["target"] or m["target"] in p.parents]
    return max(hits, key=lambda m: len(m["target"].parts), default=None)


def command_args(cmd: Any) -> list[str]:
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


@pytest.fixture(params=[{}, CUSTOM_HOST_ENV], ids=["defaults", "custom-host-env"])
def cfg(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_compose(env=dict(request.param))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.upper().startswith("KJ_"):
            monkeypatch.delenv(key)
    return monkeypatch


# ---------------------------------------------------------------------------------------------
# The interpolation helper itself (the other checks rely on it)
# ---------------------------------------------------------------------------------------------


def test_interpolate_helper() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("${A:-x}/${B:-y}/${E:-z}/${E-w}/$A/$$A/${A}", env) == "a/y/z//a/$A/a"
    with pytest.raises(KeyError):
        interpolate("${B:?must be set}", env)


# ---------------------------------------------------------------------------------------------
# (a) KJ_* variables vs. the settings loader
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_kj_variables_are_settings_fields(cfg: dict[str, Any], name: str) -> None:
    env = kj_env(service(cfg, name))
    missing = [v for v in REQUIRED_KJ_VARS if v not in env]
    assert not missing, f"{name}: compose does not set {missing}"
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "KJ_"
    fields = set(Settings.model_fields)
    # Settings(extra="ignore") would silently drop a misspelt variable, so check every one.
    unknown = sorted(k for k in env if k[len(prefix) :].lower() not in fields)
    assert not unknown, f"{name}: {unknown} are not read by Settings (fields: {sorted(fields)})"


def test_api_and_worker_get_the_same_settings(cfg: dict[str, Any]) -> None:
    api, worker = kj_env(service(cfg, "api")), kj_env(service(cfg, "worker"))
    for var in REQUIRED_KJ_VARS:
        assert api.get(var) == worker.get(var), f"api and worker disagree on {var}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_settings_loaded_from_compose_env(
    cfg: dict[str, Any], name: str, clean_env: pytest.MonkeyPatch
) -> None:
    svc = service(cfg, name)
    env = kj_env(svc)
    for key, val in env.items():
        clean_env.setenv(key, val)
    settings = Settings()

    db = urlsplit(settings.database_url)
    assert db.scheme == "postgresql+psycopg"
    assert db.hostname == "postgres"
    assert db.port == 5432
    assert settings.resolved_database_url == env["KJ_DATABASE_URL"]

    assert settings.broker_url == "redis://redis:6379/0"
    assert not settings.embedded_broker

    assert settings.home == Path("/data")
    assert settings.artifact_root is not None
    assert settings.resolved_artifact_root == Path(env["KJ_ARTIFACT_ROOT"])
    mount = mount_for(cfg, svc, str(settings.resolved_artifact_root))
    assert mount is not None, f"{name}: artifact root {settings.artifact_root} is on no volume"
    assert mount["named"], f"{name}: artifact root is not on a named volume: {mount}"
    assert not mount["read_only"], f"{name}: artifact volume is read-only"

    # Every KJ_ value must arrive unchanged (not fall back to a default).
    for key, val in env.items():
        field = key[3:].lower()
        got = getattr(settings, field)
        if isinstance(got, int | float) and not isinstance(got, bool):
            assert got == float(val), f"{key}={val!r} was loaded as {got!r}"
        else:
            assert str(got) == val, f"{key}={val!r} was loaded as {got!r}"


# ---------------------------------------------------------------------------------------------
# (b) credentials and hosts match the postgres / redis services
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_database_url_matches_postgres_service(cfg: dict[str, Any], name: str) -> None:
    url = urlsplit(kj_env(service(cfg, name))["KJ_DATABASE_URL"])
    pg = service(cfg, "postgres")
    pg_env = service_env(pg)
    assert url.hostname in cfg["services"], f"DB host {url.hostname!r} is not a service"
    assert url.hostname == "postgres"
    assert unquote(url.username or "") == pg_env["POSTGRES_USER"]
    assert unquote(url.password or "") == pg_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == pg_env.get("POSTGRES_DB", pg_env["POSTGRES_USER"])
    port = int(pg_env.get("PGPORT", "5432"))
    args = command_args(pg.get("command"))
    if "-p" in args:
        port = int(args[args.index("-p") + 1])
    assert (url.port or 5432) == port


@pytest.mark.parametrize("name", APP_SERVICES)
def test_broker_url_matches_redis_service(cfg: dict[str, Any], name: str) -> None:
    url = urlsplit(kj_env(service(cfg, name))["KJ_BROKER_URL"])
    redis = service(cfg, "redis")
    assert url.scheme == "redis"
    assert url.hostname in cfg["services"], f"broker host {url.hostname!r} is not a service"
    assert url.hostname == "redis"
    args = command_args(redis.get("command"))
    port = int(args[args.index("--port") + 1]) if "--port" in args else 6379
    assert (url.port or 6379) == port
    if "--requirepass" in args:
        assert url.password == args[args.index("--requirepass") + 1]


def test_custom_credentials_reach_both_sides() -> None:
    cfg = load_compose(env=CUSTOM_HOST_ENV)
    url = urlsplit(kj_env(service(cfg, "api"))["KJ_DATABASE_URL"])
    assert url.username == "kj_user" and url.password == "s3cretpw" and url.path == "/kj_db"
    assert service_env(service(cfg, "postgres"))["POSTGRES_PASSWORD"] == "s3cretpw"


# ---------------------------------------------------------------------------------------------
# (c) shared artifact volume, health checks, start order
# ---------------------------------------------------------------------------------------------


def test_api_and_worker_share_the_artifact_volume(cfg: dict[str, Any]) -> None:
    found = {}
    for name in APP_SERVICES:
        svc = service(cfg, name)
        root = kj_env(svc)["KJ_ARTIFACT_ROOT"]
        mount = mount_for(cfg, svc, root)
        assert mount is not None, f"{name}: {root} is not on a volume"
        assert mount["named"], f"{name}: {root} is on {mount['source']!r}, not a named volume"
        found[name] = (mount["source"], mount["target"])
    assert found["api"] == found["worker"], f"api and worker mount different volumes: {found}"


def test_postgres_data_on_named_volume(cfg: dict[str, Any]) -> None:
    mount = mount_for(cfg, service(cfg, "postgres"), "/var/lib/postgresql/data")
    assert mount is not None and mount["named"]


@pytest.mark.parametrize("name", ["api", "worker", "postgres", "redis"])
def test_every_service_has_a_healthcheck(cfg: dict[str, Any], name: str) -> None:
    hc = service(cfg, name).get("healthcheck") or {}
    assert not hc.get("disable"), f"{name}: healthcheck disabled"
    test = hc.get("test")
    assert test and test != ["NONE"], f"{name}: no healthcheck"
    text = " ".join(test) if isinstance(test, list) else test
    if name == "postgres":
        assert "pg_isready" in text
    if name == "redis":
        assert "redis-cli" in text and "ping" in text


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_healthy_backends(cfg: dict[str, Any], name: str) -> None:
    deps = service(cfg, name).get("depends_on")
    assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
    for backend in ("postgres", "redis"):
        assert deps.get(backend, {}).get("condition") == "service_healthy", (name, backend)


def test_api_publishes_8000(cfg: dict[str, Any]) -> None:
    ports = [str(p) for p in service(cfg, "api").get("ports") or []]
    assert any(p.split(":")[-1].split("/")[0] == "8000" for p in ports), ports


def test_worker_command() -> None:
    cmd = command_args(service(load_compose(), "worker").get("command"))
    assert cmd[:2] == ["keras-jobs", "worker"]


def test_tensorboard_reads_the_artifact_volume(cfg: dict[str, Any],
                                              clean_env: pytest.MonkeyPatch) -> None:
    """`keras-jobs tensorboard` over the same store the API and the worker write (read-only),
    published on the port it listens on, with a healthcheck of its own (the image's is the
    API's)."""
    tb = service(cfg, "tensorboard")
    cmd = command_args(tb.get("command"))
    assert cmd[:2] == ["keras-jobs", "tensorboard"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1] if "--port" in cmd else "6006"
    ports = [str(p) for p in tb.get("ports") or []]
    assert any(p.split(":")[-1].split("/")[0] == port for p in ports), ports
    for key, val in kj_env(tb).items():
        clean_env.setenv(key, val)
    root = str(Settings().resolved_artifact_root)
    api = service(cfg, "api")
    assert root == kj_env(api)["KJ_ARTIFACT_ROOT"]
    ours, theirs = mount_for(cfg, tb, root), mount_for(cfg, api, root)
    assert ours is not None and theirs is not None and ours["named"]
    assert ours["source"] == theirs["source"], (ours, theirs)
    assert ours["read_only"], "TensorBoard only reads the store"
    test = (tb.get("healthcheck") or {}).get("test") or []
    assert f"127.0.0.1:{port}" in " ".join(test), test


def test_gpu_override_reserves_an_nvidia_gpu_for_the_worker() -> None:
    gpu = load_compose(COMPOSE_GPU)
    devices = service(gpu, "worker")["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices
    assert set(gpu["services"]) <= set(load_compose()["services"])


# ---------------------------------------------------------------------------------------------
# (d) docker-compose itself
# ---------------------------------------------------------------------------------------------


def _compose_env() -> dict[str, str]:
    """Host environment without the variables the compose file interpolates (-> defaults)."""
    return {k: v for k, v in os.environ.items() if k not in CUSTOM_HOST_ENV}


def _docker_compose(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose binary not installed (apt-get install docker-compose)")
    empty_env_file = tmp_path / "empty.env"  # ignore a developer's ./.env
    empty_env_file.write_text("")
    return subprocess.run(
        [exe, "--env-file", str(empty_env_file), *args],
        cwd=ROOT,
        env=_compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "files",
    [[COMPOSE.name], [COMPOSE.name, COMPOSE_GPU.name]],
    ids=["base", "base+gpu"],
)
def test_docker_compose_config_is_valid(files: list[str], tmp_path: Path) -> None:
    args = [a for f in files for a in ("-f", f)]
    proc = _docker_compose(tmp_path, *args, "config", "-q")
    assert proc.returncode == 0, f"docker-compose config -q failed:\n{proc.stdout}{proc.stderr}"


def test_docker_compose_resolves_the_same_environment(tmp_path: Path) -> None:
    """Our interpolation above agrees with docker-compose's own."""
    proc = _docker_compose(tmp_path, "-f", COMPOSE.name, "config")
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    ours = load_compose()
    for name in (*APP_SERVICES, "postgres"):
        assert service_env(service(resolved, name)) == service_env(service(ours, name)), name
