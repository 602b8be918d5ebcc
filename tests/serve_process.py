"""`keras-jobs serve` as a real process for end-to-end tests: one launcher for all of them, so
that each starts it the same way (a free port, a log file, a wait on /readyz or /healthz rather
than a fixed sleep) and stops it the same way (a signal, then SIGKILL past a deadline)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from tests.helpers import ROOT, free_port

LOG_TAIL = 5000


class ServeProcess:
    """`python -m app.cli serve ARGS --port P` under ENV, its output in `log_dir`.

    Use as a context manager (started and waited on at entry, stopped at exit), or call
    `start()` and `stop()` yourself. `ready` is the path that must answer 200 before the server
    counts as up: "/readyz" (database and worker reachable) or "/healthz" (the process answers).
    `own_group` starts it in a process group of its own, as a shell runs a foreground command,
    and sends the stop signal to the whole group, as Ctrl-C does.
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path, *args: str,
                 ready: str = "/readyz", timeout: float = 300,
                 stop_signal: signal.Signals = signal.SIGTERM, own_group: bool = False) -> None:
        self.env, self.args, self.ready, self.timeout = dict(env), args, ready, timeout
        self.stop_signal, self.own_group = stop_signal, own_group
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"serve-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "app.cli", "serve", *self.args, "--port", str(self.port)]

    def start(self) -> ServeProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         start_new_session=self.own_group)
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll `ready` until it answers 200; fail with the log if the process exits first or
        the deadline passes."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            assert self.proc.poll() is None, (
                f"keras-jobs serve exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready}", timeout=10).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (
                f"{self.url}{self.ready} not 200 in {self.timeout} s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 90) -> int:
        """Send `stop_signal` (SIGTERM; SIGINT is what Ctrl-C sends), SIGKILL if it has not
        ended within `timeout` seconds; the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self._signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.own_group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def log(self) -> str:
        """The server's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def tail(self) -> str:
        """The end of the server's output (what a failing assertion shows)."""
        return self.log()[-LOG_TAIL:]

    def __enter__(self) -> ServeProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
