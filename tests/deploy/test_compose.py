"""Static checks of docker-compose.yml / docker-compose.gpu.yml against the app's settings, and
of the hardened deployment (published on 127.0.0.1, API keys required, passwords only from
.env, Redis with a password, one migration before api and worker).

The compose files are read with PyYAML and interpolated here (``${VAR:-default}``,
``${VAR:?message}``, ``$$``) the way Compose does, so that most checks run without Docker.
``docker-compose config`` is run too when the binary is installed.
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
COMPOSE_FILES = (COMPOSE, COMPOSE_GPU)
ENV_EXAMPLE = ROOT / ".env.example"
APP_SERVICES = ("api", "worker")
REQUIRED_KJ_VARS = ("KJ_HOME", "KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT")
# The secrets compose takes from .env, and only from there (no default in the file).
SECRET_VARS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "KJ_KEY_PEPPER")
# The least a working .env holds: every secret, nothing else (the rest -> defaults).
SECRETS_ENV = {
    "POSTGRES_PASSWORD": "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c",
    "REDIS_PASSWORD": "0e1d2c3b4a59687766554433221100ff",
    "KJ_KEY_PEPPER": "a5a5a5a5b6b6b6b6c7c7c7c7d8d8d8d8",
}
# Every variable the compose files interpolate from the host, set to something else.
CUSTOM_HOST_ENV = {
    "POSTGRES_USER": "kj_user",
    "POSTGRES_PASSWORD": "s3cretpw",
    "POSTGRES_DB": "kj_db",
    "REDIS_PASSWORD": "r3dispw",
    "KJ_KEY_PEPPER": "pepper-0123",
    "KJ_LOG_LEVEL": "DEBUG",
    "KJ_PUBLISH_ADDRESS": "0.0.0.0",
    "KJ_PORT": "8080",
    "KJ_TENSORBOARD_PORT": "6007",
    "KJ_TF_EXTRA": "gpu",
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
    """The file interpolated with `env` (default: only the secrets a .env must hold)."""
    raw = yaml.safe_load(path.read_text())  # resolves the x- anchors and `<<` merge keys
    assert isinstance(raw, dict), f"{path.name} is not a mapping"
    cfg: dict[str, Any] = _interpolate_tree(raw, SECRETS_ENV if env is None else env)
    return cfg


def service(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    services = cfg.get("services") or {}
    assert name in services, f"service {name!r} missing from compose file"
    svc: dict[str, Any] = services[name]
    return svc


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


@pytest.fixture(params=[SECRETS_ENV, CUSTOM_HOST_ENV], ids=["defaults", "custom-host-env"])
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

    broker = urlsplit(settings.broker_url)
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert broker.password == service_env(service(cfg, "redis"))["REDISCLI_AUTH"]
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
        if isinstance(got, bool):
            assert got == (val.lower() in ("1", "true", "yes", "on")), f"{key}={val!r}: {got!r}"
        elif isinstance(got, int | float):
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
    assert "--requirepass" in args, "Redis must ask for a password"
    password = args[args.index("--requirepass") + 1]
    assert password and url.password == password


def test_custom_credentials_reach_both_sides() -> None:
    cfg = load_compose(env=CUSTOM_HOST_ENV)
    url = urlsplit(kj_env(service(cfg, "api"))["KJ_DATABASE_URL"])
    assert url.username == "kj_user" and url.password == "s3cretpw" and url.path == "/kj_db"
    assert service_env(service(cfg, "postgres"))["POSTGRES_PASSWORD"] == "s3cretpw"
    assert urlsplit(kj_env(service(cfg, "worker"))["KJ_BROKER_URL"]).password == "r3dispw"
    redis_args = command_args(service(cfg, "redis")["command"])
    assert redis_args[redis_args.index("--requirepass") + 1] == "r3dispw"
    assert kj_env(service(cfg, "api"))["KJ_KEY_PEPPER"] == "pepper-0123"


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


@pytest.mark.parametrize("name", ["api", "worker", "tensorboard", "postgres", "redis"])
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
        # It must authenticate, with the password out of its command line, and see a PONG
        # (redis-cli exits 0 on a NOAUTH reply).
        assert " -a " not in f" {text} " and "--pass" not in text and "--user" not in text
        redis = service(cfg, name)
        args = command_args(redis["command"])
        password = args[args.index("--requirepass") + 1]
        assert service_env(redis).get("REDISCLI_AUTH") == password
        assert password not in text
        assert "PONG" in text
    if name == "worker":
        # The broker URL (with Redis's password) comes from the app's settings, not from the
        # command line, where `ps` on the host would show it every 30 s.
        assert "inspect ping" in text and "KJ_BROKER_URL" not in text and "--broker" not in text


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_wait_for_healthy_backends(cfg: dict[str, Any], name: str) -> None:
    deps = service(cfg, name).get("depends_on")
    assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
    for backend in ("postgres", "redis"):
        assert deps.get(backend, {}).get("condition") == "service_healthy", (name, backend)


def published(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each short-syntax `ports` entry; an entry
    without an address would publish on every interface."""
    out = []
    for entry in svc.get("ports") or []:
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) == 3, f"port {entry!r} names no host address: every interface"
        out.append((parts[0], parts[1], parts[2]))
    return out


def test_api_is_published_on_loopback_by_default() -> None:
    assert published(service(load_compose(), "api")) == [("127.0.0.1", "8000", "8000")]


def test_api_publish_address_and_port_are_settable() -> None:
    ports = published(service(load_compose(env=CUSTOM_HOST_ENV), "api"))
    assert ports == [("0.0.0.0", "8080", "8000")]


def test_nothing_else_is_published_beyond_loopback(cfg: dict[str, Any]) -> None:
    """Only the API follows KJ_PUBLISH_ADDRESS; PostgreSQL, Redis and the worker's metrics stay
    inside the compose network, TensorBoard on the host's loopback."""
    for name, svc in cfg["services"].items():
        if name == "api":
            continue
        for address, _, _ in published(svc):
            assert address == "127.0.0.1", f"{name} is published on {address}"
    for name in ("postgres", "redis", "worker", "migrate"):
        assert not service(cfg, name).get("ports"), f"{name} must not be published"


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
    assert [p[2] for p in published(tb)] == [port]
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


def test_tensorboard_is_off_by_default_and_on_loopback(cfg: dict[str, Any]) -> None:
    """It has no authentication and shows every tenant's curves."""
    tb = service(cfg, "tensorboard")
    assert tb.get("profiles") == ["tensorboard"], "TensorBoard must not start by default"
    addresses = {address for address, _, _ in published(tb)}
    assert addresses == {"127.0.0.1"}, addresses
    assert "api" not in (tb.get("depends_on") or {}), "--profile tensorboard alone starts it"
    # It reads the artifact volume, nothing more: no database, broker or key secrets.
    assert set(kj_env(tb)) == {"KJ_HOME", "KJ_ARTIFACT_ROOT", "KJ_LOG_LEVEL"}, kj_env(tb)


def test_gpu_override_reserves_an_nvidia_gpu_for_the_worker() -> None:
    gpu = load_compose(COMPOSE_GPU)
    devices = service(gpu, "worker")["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices
    assert set(gpu["services"]) <= set(load_compose()["services"])


# ---------------------------------------------------------------------------------------------
# (d) hardening: secrets only from .env, Redis password, authentication, one migration
# ---------------------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")
_URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://(?P<user>[^:@/\s]*):(?P<password>[^@\s]*)@")


def raw_strings(node: Any) -> list[str]:
    """Every string in an uninterpolated compose tree (keys are names, not values)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for v in node for s in raw_strings(v)]
    if isinstance(node, dict):
        return [s for v in node.values() for s in raw_strings(v)]
    return []


def required_reference(value: str) -> str | None:
    """The variable `value` is, when it is exactly one `${NAME:?message}`."""
    m = _REFERENCE.fullmatch(value)
    return m.group("name") if m and m.group("op") == ":?" and m.group("arg") else None


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_secret_reference_is_required(path: Path) -> None:
    """A `${...PASSWORD...}` with a default (or none at all) would start the service with a
    password everybody can read here, or with an empty one."""
    text = path.read_text()
    for m in _REFERENCE.finditer(text):
        name = m.group("name")
        if any(word in name for word in ("PASSWORD", "PEPPER", "SECRET", "TOKEN")):
            assert m.group("op") == ":?", f"{path.name}: {m.group(0)} must be ${{{name}:?...}}"
            assert ".env.example" in m.group("arg"), f"{m.group(0)}: say how to set it"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_no_password_is_written_in_the_compose_files(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    for value in raw_strings(raw):
        for m in _URL_USERINFO.finditer(value):
            assert required_reference(m.group("password")), f"password written in {value!r}"
    for name, svc in (raw.get("services") or {}).items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping, please"
        for key, value in env.items():
            if any(word in key for word in ("PASSWORD", "PEPPER", "SECRET", "REDISCLI_AUTH")):
                assert isinstance(value, str) and required_reference(value), (name, key, value)
        args = command_args(svc.get("command"))
        if "--requirepass" in args:
            assert required_reference(args[args.index("--requirepass") + 1]), args
    if path == COMPOSE:
        for var in SECRET_VARS:
            assert f"${{{var}:?" in path.read_text(), f"{var} is not taken from .env"


def test_compose_refuses_to_start_without_each_secret() -> None:
    for var in SECRET_VARS:
        env = {k: v for k, v in SECRETS_ENV.items() if k != var}
        with pytest.raises(KeyError, match=var):
            load_compose(env=env)
        with pytest.raises(KeyError, match=var):  # an empty value is no better
            load_compose(env={**env, var: ""})


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: {line!r} is not KEY=value"
            out[key.strip()] = value.strip()
    return out


def test_env_example_lists_every_secret_and_gives_none() -> None:
    """Copied as it is, .env.example must not start a deployment with a shared password."""
    example = read_env_file(ENV_EXAMPLE)
    for var in SECRET_VARS:
        assert var in example, f".env.example does not list {var}"
        assert example[var] == "", f".env.example must leave {var} empty, not give one"
    assert "openssl rand -hex 32" in ENV_EXAMPLE.read_text()
    with pytest.raises(KeyError):
        load_compose(env=example)
    # Every host variable the compose files read is in the template (set or commented out).
    text = ENV_EXAMPLE.read_text()
    used = {m.group("name") for f in COMPOSE_FILES for m in _REFERENCE.finditer(f.read_text())}
    missing = sorted(v for v in used if not re.search(rf"^#?\s*{v}=", text, re.MULTILINE))
    assert not missing, f".env.example does not mention {missing}"


@pytest.mark.parametrize("path", [ROOT / ".gitignore", ROOT / ".dockerignore"],
                         ids=lambda p: p.name)
def test_env_file_is_neither_committed_nor_in_the_image(path: Path) -> None:
    assert ".env" in path.read_text().splitlines(), f"{path.name} must list .env"


def test_api_requires_api_keys(cfg: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    for name in APP_SERVICES:
        env = kj_env(service(cfg, name))
        assert env.get("KJ_AUTH") == "required", name
        for key, val in env.items():
            clean_env.setenv(key, val)
        assert Settings().auth == "required"


def test_migrate_runs_once_before_api_and_worker(cfg: dict[str, Any]) -> None:
    migrate = service(cfg, "migrate")
    assert command_args(migrate.get("command")) == ["keras-jobs", "migrate"]
    assert migrate.get("restart") == "no", "a one-shot service must not be restarted"
    assert (migrate.get("healthcheck") or {}).get("disable"), "the image's check is the API's"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert kj_env(migrate)["KJ_DATABASE_URL"] == kj_env(service(cfg, "api"))["KJ_DATABASE_URL"]
    assert "ports" not in migrate
    for name in APP_SERVICES:
        deps = service(cfg, name)["depends_on"]
        assert deps.get("migrate", {}).get("condition") == "service_completed_successfully", name


@pytest.mark.parametrize("name", APP_SERVICES)
def test_api_and_worker_do_not_migrate(cfg: dict[str, Any], name: str,
                                       clean_env: pytest.MonkeyPatch) -> None:
    env = kj_env(service(cfg, name))
    assert env.get("KJ_MIGRATE_ON_START") == "false", name
    for key, val in env.items():
        clean_env.setenv(key, val)
    assert Settings().migrate_on_start is False
    # The worker no longer waits for the API (which used to migrate): only for what it uses.
    if name == "worker":
        assert "api" not in service(cfg, name)["depends_on"]


def build_args(svc: dict[str, Any]) -> dict[str, str]:
    build = svc.get("build") or {}
    args = build.get("args") or {} if isinstance(build, dict) else {}
    if isinstance(args, list):
        return dict(str(a).partition("=")[::2] for a in args)
    return {str(k): str(v) for k, v in args.items()}


def test_images_are_built_for_the_cpu_by_default() -> None:
    cfg = load_compose()
    built = {name: svc for name, svc in cfg["services"].items() if "build" in svc}
    assert set(built) == {"migrate", "api", "worker", "tensorboard"}
    for name, svc in built.items():
        assert build_args(svc) == {"TF_EXTRA": "cpu"}, name
        assert svc["image"] == "keras-jobs:cpu", name
    custom = load_compose(env=CUSTOM_HOST_ENV)
    assert build_args(service(custom, "api")) == {"TF_EXTRA": "gpu"}
    assert service(custom, "api")["image"] == "keras-jobs:gpu"


def test_gpu_override_builds_the_worker_for_the_gpu() -> None:
    """Under its own image name: api and worker built with different TF_EXTRA under one name
    would overwrite each other's image."""
    base, gpu = service(load_compose(), "worker"), service(load_compose(COMPOSE_GPU), "worker")
    assert build_args(gpu) == {"TF_EXTRA": "gpu"}
    assert gpu["image"] != base["image"] and gpu["image"] == "keras-jobs:gpu"
    assert "context" not in (gpu.get("build") or {}), "the context is the base file's"


# ---------------------------------------------------------------------------------------------
# (e) docker-compose itself
# ---------------------------------------------------------------------------------------------


def _compose_env() -> dict[str, str]:
    """Host environment without the variables the compose file interpolates (-> defaults)."""
    return {k: v for k, v in os.environ.items() if k not in CUSTOM_HOST_ENV}


def _docker_compose(tmp_path: Path, *args: str,
                    env_file: dict[str, str] = SECRETS_ENV) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose binary not installed (apt-get install docker-compose)")
    path = tmp_path / "test.env"  # in place of a developer's ./.env
    path.write_text("".join(f"{k}={v}\n" for k, v in env_file.items()))
    return subprocess.run(
        [exe, "--env-file", str(path), *args],
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
    for name in (*APP_SERVICES, "migrate", "postgres", "redis"):
        assert service_env(service(resolved, name)) == service_env(service(ours, name)), name
    assert command_args(service(resolved, "redis")["command"]) == command_args(
        service(ours, "redis")["command"])
    published = service(resolved, "api")["ports"]
    assert published in (["127.0.0.1:8000:8000/tcp"], ["127.0.0.1:8000:8000"],
                         [{"host_ip": "127.0.0.1", "published": "8000", "target": 8000,
                           "protocol": "tcp", "mode": "ingress"}]), published


def test_docker_compose_refuses_a_missing_password(tmp_path: Path) -> None:
    env = {k: v for k, v in SECRETS_ENV.items() if k != "REDIS_PASSWORD"}
    proc = _docker_compose(tmp_path, "-f", COMPOSE.name, "config", "-q", env_file=env)
    assert proc.returncode != 0
    assert "REDIS_PASSWORD is not set" in proc.stderr and ".env.example" in proc.stderr
