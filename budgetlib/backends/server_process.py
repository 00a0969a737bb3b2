"""Start a local model server as a child process and tell a crash from a slow start.

`ServerProcess(cmd, health_url)` starts `cmd` with its output in a log file
(never a pipe, which would block the server once full), polls `health_url`
until it answers 200, and raises `ServerCrashed` with the exit status (the
signal by name when it was killed by one, e.g. a segfault) and the log's last
lines if the process dies, or `ServerTimeout` if it never answers. A backend
that loses its server mid-run asks `check()`, which raises the same errors.

On Linux the server dies with the process that started it (``PR_SET_PDEATHSIG``):
a notebook kernel killed mid-run (SIGTERM or SIGKILL, where ``atexit`` never
runs) leaves no llama.cpp server behind spinning on the cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

__all__ = ["ServerProcess", "ServerCrashed", "ServerTimeout", "describe_exit", "free_port"]


class ServerCrashed(RuntimeError):
    """The server process exited (the message has its status and log tail)."""


class ServerTimeout(RuntimeError):
    """The server did not answer its health check in time."""


def _parent_death_signal():
    """A `preexec_fn` for Linux: the child gets SIGTERM when its parent dies (resolved before the fork, so the
    child only makes one libc call), or None elsewhere."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_exit(returncode: int) -> str:
    """``-11`` -> ``"killed by signal SIGSEGV (11)"``; ``1`` -> ``"exit status 1"``.

    >>> describe_exit(-11)
    'killed by signal SIGSEGV (11)'
    >>> describe_exit(1)
    'exit status 1'
    >>> describe_exit(139)   # a shell's 128 + signal
    'exit status 139 (128 + SIGSEGV: killed by a signal)'
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {name} ({-returncode})"
    if returncode > 128:
        try:
            return f"exit status {returncode} (128 + {signal.Signals(returncode - 128).name}: killed by a signal)"
        except ValueError:
            pass
    return f"exit status {returncode}"


class ServerProcess:
    def __init__(self, cmd: Sequence[str], health_url: str, *, name: str = "server", start_timeout: float = 120.0,
                 log_path: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 tail_lines: int = 25):
        self.cmd, self.health_url, self.name = list(cmd), health_url, name
        self.tail_lines = tail_lines
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"budgetlib-{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, preexec_fn=_parent_death_signal())
        try:
            self._wait_healthy(start_timeout)
        except BaseException:
            self.stop()
            raise

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-self.tail_lines:])

    def check(self, grace: float = 0.0) -> None:
        """Raise `ServerCrashed` if the process has exited (waiting up to
        `grace` seconds for it: a dropped connection comes before the exit)."""
        try:
            code = self.proc.wait(timeout=grace) if grace else self.proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            raise ServerCrashed(f"{self.name} ({self.cmd[0]}) {describe_exit(code)}; last lines of "
                                f"{self.log_path}:\n{self.log_tail()}")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or loading (503)
            if time.monotonic() > deadline:
                raise ServerTimeout(f"{self.name} did not answer {self.health_url} within {timeout:.0f} s; last "
                                    f"lines of {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
