"""The server an abuse case runs against, and what its processes cost: resident memory and
bytes written, read from /proc for the whole process group (uvicorn, TensorFlow's threads and
anything they fork)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.helpers import temp_database

READY_TIMEOUT_S = 180.0
PR_SET_PDEATHSIG = 1
# Inherited settings that would point the server away from its fresh KJ_HOME.
KJ_LOCATIONS = ("KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT", "KJ_API_KEY")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if this bench dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (the server's session)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
            if int(raw[raw.rindex(")") + 2:].split()[2]) == pgid:
                found.append(int(entry.name))
    return found


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def written_by(pids: list[int]) -> int:
    """Bytes the processes caused to be written to storage (/proc/PID/io write_bytes)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total


class Server:
    """`keras-jobs serve --no-worker` running `code`'s app, in its own session, with `settings`
    (KJ_* variables) on top of the bench's own."""

    headers: dict[str, str] = {}  # open on loopback: no key needed

    def __init__(self, code: Path, args: argparse.Namespace, label: str,
                 settings: dict[str, str] | None = None) -> None:
        self.code, self.args, self.label = code, args, label
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.home: Path | None = None
        self.port = 0
        self.base = ""
        self._log: io.BufferedWriter | None = None
        self._databases = contextlib.ExitStack()

    def start(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=f"kj-abuse-{self.label}-"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in KJ_LOCATIONS}
        env.update({"PYTHONPATH": str(self.code), "KJ_HOME": str(self.home), "KJ_AUTH": "auto",
                    "KJ_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2",
                    "KJ_RATE_LIMIT_WRITES_PER_MIN": "0", "KJ_RATE_LIMIT_PREDICT_PER_MIN": "0",
                    **self.settings})
        if self.args.postgres:  # a database of its own: the cases write rows, quotas count them
            env["KJ_DATABASE_URL"] = self._databases.enter_context(
                temp_database(self.args.postgres, "kj_abuse"))
        if self.args.broker_url:
            env["KJ_BROKER_URL"] = self.args.broker_url
        self._log = (self.home / "server.log").open("wb")
        cmd = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())",
               "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.code, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.label} server exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the {self.label} server is not up after {READY_TIMEOUT_S:.0f} s")

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) if self.proc is not None else []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.home is None:
            return ""
        text = (self.home / "server.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            for sig, wait in (((signal.SIGKILL, 10.0),) if kill else
                              ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0))):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)  # its own session: pgid == pid
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
        self._databases.close()  # dropped


class ExternalServer:
    """A server this bench did not start (--url/--before-url): measured, never stopped. Its
    processes are the process group of whichever process listens on the URL's port (found in
    /proc when this user may read it; else RSS and writes read 0). A case past the memory cap
    only stops being waited for: the server goes on with it, so leave such cases out
    (--cases) where that would hurt."""

    settings: dict[str, str] = {}  # whatever it was started with

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.base, self.headers = url.rstrip("/"), headers
        port = httpx.URL(self.base).port or 80
        pid = _listener_pid(port)
        self.pgid = os.getpgid(pid) if pid is not None else None
        if pid is None:
            log(f"  (no readable process listens on port {port}: RSS and writes read 0)")

    def start(self) -> None:
        httpx.get(self.base + "/healthz", timeout=10, headers=self.headers).raise_for_status()

    def pids(self) -> list[int]:
        return group_pids(self.pgid) if self.pgid is not None else []

    def alive(self) -> bool:
        return True

    def stop(self, kill: bool = False) -> None:
        return None


def _listener_pid(port: int) -> int | None:
    """The process holding a listening TCP socket on `port` (IPv4 or IPv6), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{entry.name}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(fd.path) in inodes:
                            return int(entry.name)
    return None
