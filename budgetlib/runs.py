"""Run directories: ``results/<step>/<run_id>/`` with

- ``config.json``   what was asked for (the run id is a hash of it by default),
- ``metadata.json`` what the run is, written by the code that creates it: its
  human ``label`` (e.g. "TALE-PT SFT", "fixed budget β=50 (words)"), its
  ``kind`` ("evaluation", "search", "sweep", "training", "training data",
  "cold-start samples", ...) and ``dataset``; then model, n, profile, device,
  versions, git sha. Readers (`results`) take the label from here and never
  guess it from names or paths;
- ``items.jsonl``   one row per finished item, appended as items finish,
- artefacts (`Run.artifact`): an adapter, its checkpoints, training data;
- ``summary.json``  written last and atomically: its presence means finished.

The run id is a hash of the config, and the config holds every input that
decides the result (model identity and revision, prompts, decoding, data ids,
training items, reward, starting adapter), so a rerun with any input changed
starts a new run and a rerun with nothing changed reuses (or resumes) the old
one. Reopening a run with the same config resumes it; a different config
under the same id is refused, and a finished summary is never overwritten
silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .paths import project_root

__all__ = ["Run", "RunError", "reuse", "start_run", "open_run", "find_runs", "append_csv", "run_metadata", "config_hash", "environment_info",
           "results_root", "read_jsonl", "append_jsonl", "process_alive"]

log = logging.getLogger(__name__)
VERSIONED = ("budgetlib", "torch", "transformers", "trl", "peft", "datasets", "numpy", "pandas")


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (config mismatch, finished...)."""


def results_root() -> Path:
    """`BUDGETLIB_RESULTS`, else ``<project root>/results``."""
    return Path(os.environ.get("BUDGETLIB_RESULTS") or project_root() / "results")


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_info() -> dict[str, Any]:
    """Python, platform, package versions, git sha and accelerator, for metadata and benchmarks."""
    versions = {}
    for pkg in VERSIONED:
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "cpu": cpu_model(), "cpu_count": os.cpu_count(), "versions": versions,
            "git_sha": _git_sha()}
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["cuda"] = None
    return info


def run_metadata(identity: dict[str, Any], *, dataset: str, n: int, profile: str) -> dict[str, Any]:
    """The metadata every run records besides the environment: model,
    dataset, n, profile and device (from a backend's `identity()`)."""
    return {"model": identity.get("model"), "dataset": dataset, "n": n, "profile": profile,
            "device": identity.get("device")}


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file. A last line cut off mid-write (no newline) is
    dropped with a warning, and with `repair` also removed from the file so
    appends continue cleanly; any other malformed line is an error naming
    file and line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}:{lineno}: malformed JSON line: {exc.msg}") from exc
    if tail.strip():
        log.warning("%s:%d: dropping a truncated last line (an interrupted write)", path, len(lines) + 1)
        if repair:
            with path.open("r+b") as f:
                f.truncate(len(raw) - len(tail))
    return rows


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append `rows` to a JSONL file (created with its folder if missing) and flush them to disk,
    so a run interrupted later keeps them (`read_jsonl(..., repair=True)` reads them back)."""
    lines = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Run:
    """An open run directory."""

    dir: Path

    @property
    def items_path(self) -> Path:
        return self.dir / "items.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.json"

    @property
    def finished(self) -> bool:
        return self.summary_path.exists()

    @property
    def config(self) -> dict[str, Any]:
        return _read_json(self.dir / "config.json")

    @property
    def metadata(self) -> dict[str, Any]:
        return _read_json(self.dir / "metadata.json")

    @property
    def label(self) -> str | None:
        """The human label its creator recorded (None for a run made before labels were recorded)."""
        return self.metadata.get("label")

    def artifact(self, name: str) -> Path:
        """The path of an artefact of this run (an adapter, training data, ...) inside its directory."""
        if not name or "/" in name or name in ("config.json", "metadata.json", "items.jsonl", "summary.json", "lock"):
            raise RunError(f"{self.dir}: {name!r} is not an artefact name")
        return self.dir / name

    def keep_answers(self, backend, *, sampled: bool = False):
        """`backend` with every answer it gives stored as it arrives in this run's
        ``answers.sqlite`` (a generation cache keyed by backend identity, model input and
        decoding): a step killed mid-way replays the answers it had already got. With
        `sampled`, sampled answers are kept too (keyed by their seed): the draws this run made."""
        from .backends.cache import CachedBackend

        return CachedBackend(backend, self.artifact("answers.sqlite"), enabled=True, sampled=sampled)

    def items(self) -> list[dict[str, Any]]:
        return read_jsonl(self.items_path, repair=not self.finished)

    def done_ids(self) -> set[str]:
        return {row["id"] for row in self.items()}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append finished items (each with an ``id``) and flush them to disk."""
        if self.finished:
            raise RunError(f"{self.dir} is finished (summary.json exists); start a new run")
        rows = list(rows)
        for row in rows:
            if "id" not in row:
                raise RunError(f"item without an 'id' field: keys {sorted(row)}")
        append_jsonl(self.items_path, rows)

    def clear_items(self) -> None:
        """Drop the items of an unfinished run (for steps that write all
        their items at once and recompute them when interrupted)."""
        if self.finished:
            raise RunError(f"{self.dir} is finished (summary.json exists); its items are kept")
        partial = read_jsonl(self.items_path)  # says so if the last line was torn by a kill
        if partial:
            log.info("%s: redoing the %d items an interrupted attempt had written", self.items_path, len(partial))
        self.items_path.unlink(missing_ok=True)

    def summary(self) -> dict[str, Any]:
        if not self.finished:
            raise RunError(f"{self.dir} has no summary yet (unfinished run)")
        return _read_json(self.summary_path)

    @contextmanager
    def writing(self) -> Iterator["Run"]:
        """Hold this run's lock file (``lock``, with this process's pid) while writing to it: another
        process that tries to write the same run gets a RunError naming the run and the pid holding it;
        a lock left by a dead process is taken over with a warning. Re-entrant in one process."""
        lock = self.dir / "lock"
        me = os.getpid()
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = int(lock.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    holder = None  # being written right now, or garbage: check again
                if holder == me:
                    yield self
                    return
                if holder is not None and process_alive(holder):
                    raise RunError(f"{self.dir} is being written by process {holder} (its lock file {lock}); "
                                   "wait for it to finish, or stop it") from None
                log.warning("%s: taking over the lock of process %s, which is no longer running", self.dir, holder)
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{me} {platform.node()}\n")
            break
        try:
            yield self
        finally:
            lock.unlink(missing_ok=True)

    def finish(self, summary: dict[str, Any], *, overwrite: bool = False) -> None:
        """Write summary.json atomically; refuses to replace an existing one unless `overwrite`."""
        if self.finished and not overwrite:
            raise RunError(f"{self.summary_path} exists; pass overwrite=True to replace it")
        _write_json(self.summary_path, summary)


def start_run(step: str, config: dict[str, Any], *, metadata: dict[str, Any] | None = None,
              run_id: str | None = None, root: str | Path | None = None, label: str | None = None,
              kind: str | None = None, dataset: str | None = None) -> Run:
    """Open ``<root>/<step>/<run_id>/`` (root: `results_root()`; run id: a hash of
    `config`). A new directory gets config.json and metadata.json (`label`,
    `kind`, `dataset` and `metadata` merged over `environment_info()`); an
    existing one must have the same config and is resumed."""
    root = Path(root) if root is not None else results_root()
    return open_run(root / step / (run_id or config_hash(config)), config, metadata=metadata, label=label,
                    kind=kind, dataset=dataset)


def open_run(run_dir: str | Path, config: dict[str, Any], *, metadata: dict[str, Any] | None = None,
             label: str | None = None, kind: str | None = None, dataset: str | None = None) -> Run:
    """Open the run directory `run_dir` for `config`: set it up when new,
    resume it when it holds the same config, refuse it otherwise. A reused
    run whose creator now gives another label gets the new one (the label
    describes the result; it does not change it), with a log message."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    normalised = json.loads(json.dumps(config, sort_keys=True, default=str))
    described = {k: v for k, v in (("label", label), ("kind", kind), ("dataset", dataset)) if v is not None}
    if config_path.exists():
        existing = _read_json(config_path)
        if existing != normalised:
            changed = sorted(k for k in set(existing) | set(normalised) if existing.get(k) != normalised.get(k))
            raise RunError(f"{run_dir} holds a run with a different config (differs in {changed}); "
                           "use another run_id or remove that directory")
        run = Run(run_dir)
        meta = _read_json(run_dir / "metadata.json") if (run_dir / "metadata.json").exists() else {}
        theirs, ours = (meta.get("versions") or {}).get("budgetlib"), _budgetlib_version()
        if theirs != ours:
            log.warning("%s was written by budgetlib %s, this is %s: reusing it because its config (every input "
                        "that decides its result) is the same", run_dir, theirs, ours)
        if any(meta.get(k) != v for k, v in described.items()):
            log.info("%s: recording %s (was %s)", run_dir, described, {k: meta.get(k) for k in described})
            _write_json(run_dir / "metadata.json", {**meta, **described})
        return run
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {**environment_info(), **(metadata or {}), **described,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (run_dir / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    _write_json(config_path, normalised)  # config.json last: its presence means the run is set up
    return Run(run_dir)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> Any:
    """A run's JSON file, or a RunError naming it when it is corrupt (cut off, edited, another format)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: corrupt run file ({exc}); move that run directory away to recompute it") from None


def _budgetlib_version() -> str | None:
    try:
        return importlib_metadata.version("budgetlib")
    except importlib_metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, value: Any) -> None:
    """Write `value` as JSON atomically (a temporary file renamed into place): never half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def reuse(step: str, config: dict[str, Any], compute: Callable[[Run], Any], load: Callable[[Run], Any], *,
          label: str, kind: str, dataset: str, profile: str, identity: dict[str, Any] | None = None,
          problems: Sequence[Any] | None = None, n: int | None = None, root: str | Path | None = None,
          run_dir: str | Path | None = None) -> tuple[Any, Run]:
    """The one way a step's result is computed once and reused: open the run
    keyed by `config` (under `root`/`step`, or `run_dir`), recording its
    `label`, `kind`, `dataset` (``source/split`` when every problem id shares
    one, `data.dataset_name`), `profile`, n and the backend `identity`'s model
    and device. A finished run gives ``load(run)``; otherwise ``compute(run)``
    resumes from whatever the run already holds and must finish it. Returns
    (value, run)."""
    from .data import dataset_name

    dataset = dataset_name(problems, dataset) if problems is not None else dataset
    identity = identity or {}
    meta = {"model": identity.get("model"), "device": identity.get("device"), "profile": profile,
            "n": len(problems) if problems is not None else n}
    run = (open_run(run_dir, config, metadata=meta, label=label, kind=kind, dataset=dataset) if run_dir is not None
           else start_run(step, config, metadata=meta, root=root, label=label, kind=kind, dataset=dataset))
    if run.finished:
        return load(run), run
    with run.writing():
        value = compute(run)
    if not run.finished:
        raise RunError(f"{run.dir}: the {kind} step returned without finishing its run (no summary.json)")
    return value, run


def find_runs(step: str, where: Callable[[dict[str, Any]], bool] | None = None, *,
              root: str | Path | None = None) -> list[Run]:
    """The finished runs of `step` whose config passes `where`, oldest first
    (by the time their summary was written): how a later notebook reads an
    earlier one's results without recomputing them."""
    root = Path(root) if root is not None else results_root()
    runs = [Run(d) for d in sorted((root / step).glob("*/")) if (d / "summary.json").exists()
            and (d / "config.json").exists()]
    runs = [r for r in runs if where is None or where(r.config)]
    return sorted(runs, key=lambda r: r.summary_path.stat().st_mtime_ns)


def append_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Append `rows` (dicts with the same keys) to the CSV at `path` (benchmark
    results accumulate across runs). A new file gets a header; an existing
    file written with other columns is never mixed with new rows: it is kept
    under a timestamped name and a new file is started."""
    import csv

    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to append to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fieldnames = list(rows[0])
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != fieldnames:
            kept = path.with_name(f"{path.stem}.{datetime.now():%Y%m%d-%H%M%S}{path.suffix}")
            path.rename(kept)
            log.warning("%s had other columns: its rows are kept in %s", path, kept)
    new_file = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    return path
