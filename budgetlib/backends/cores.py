"""One llama.cpp engine at a time, and its threads on free cores.

llama.cpp's worker threads busy-wait between steps. Two engines on the same
cores starve each other: two llama-server processes with 2 threads each on a
2-core machine ran the 1.5B at 0.3 tokens/s, against 6.5 with one. So a
`LlamaServerBackend` claims the machine's llama.cpp engine slot
(`claim_engine`): a file per live engine under ``<cache>/engines/``. Another
live engine of this process (a notebook cell run twice) is closed first, with
a warning; one of another process (a second notebook, `make medium` beside a
notebook) is an error naming its pid, unless the caller passes
``exclusive=False``. Before starting, `busy_cores` samples ``/proc/stat``
for a moment, and a thread count above the free cores is warned about.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Callable

from ..paths import cache_dir
from ..runs import process_alive

__all__ = ["EngineBusy", "claim_engine", "release_engine", "busy_cores", "check_threads"]

_CLOSERS: dict[int, Callable[[], None]] = {}  # engine server pid -> how to close it (engines of this process)


class EngineBusy(RuntimeError):
    """Another process runs a llama.cpp engine on this machine."""


def _engines_dir() -> Path:
    path = cache_dir() / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _live_engines() -> list[tuple[Path, int, int, str]]:
    """(file, owner pid, server pid, what) of every engine whose owner and server still run; stale files go."""
    live = []
    for f in sorted(_engines_dir().glob("*.engine")):
        try:
            owner, server, what = f.read_text().split(" ", 2)
            owner, server = int(owner), int(server)
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        if process_alive(owner) and process_alive(server):
            live.append((f, owner, server, what.strip()))
        else:
            f.unlink(missing_ok=True)
    return live


def claim_engine(server_pid: int, what: str, close: Callable[[], None], *, exclusive: bool = True) -> Path:
    """Record the llama.cpp engine `server_pid` (started by this process) as the machine's one engine.
    This process's earlier engines are closed first (warning); another process's live engine raises
    `EngineBusy` when `exclusive`. Returns the record's file (for `release_engine`)."""
    me = os.getpid()
    for f, owner, server, other in _live_engines():
        if server == server_pid:
            continue
        if owner == me and server in _CLOSERS:
            warnings.warn(f"closing this process's earlier llama.cpp engine ({other}, pid {server}): two engines "
                          "on the same cores starve each other", stacklevel=3)
            _CLOSERS.pop(server)()
            f.unlink(missing_ok=True)
        elif exclusive:
            raise EngineBusy(f"another llama.cpp engine runs on this machine: {other} (server pid {server}, started "
                             f"by pid {owner}). llama.cpp threads busy-wait, so two engines on the same cores run "
                             "many times slower: stop it first (close its backend, or kill that process), or pass "
                             "exclusive=False")
    record = _engines_dir() / f"{server_pid}.engine"
    record.write_text(f"{me} {server_pid} {what}\n")
    _CLOSERS[server_pid] = close
    return record


def release_engine(server_pid: int) -> None:
    _CLOSERS.pop(server_pid, None)
    (_engines_dir() / f"{server_pid}.engine").unlink(missing_ok=True)


def busy_cores(seconds: float = 0.3) -> float | None:
    """How many cores other work keeps busy, from two samples of ``/proc/stat`` `seconds` apart
    (None where there is no /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def check_threads(threads: int, *, busy: float | None = None) -> int:
    """Warn when `threads` exceeds the cores that are free now (busy-waiting threads on busy cores slow
    everything down many times). Returns the free cores (rounded down, at least 1)."""
    cores = os.cpu_count() or 1
    busy = busy_cores() if busy is None else busy
    free = max(1, int(cores - (busy or 0.0) + 0.25))
    if threads > free:
        warnings.warn(f"llama.cpp gets {threads} threads but only {free} of {cores} cores are free now "
                      f"({busy:.1f} busy): its threads busy-wait, so sharing cores slows it many times; "
                      f"stop the other work or pass threads={free}", stacklevel=3)
    return free
