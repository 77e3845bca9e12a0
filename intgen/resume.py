"""Resuming a run directory: which spec changes are allowed (issue 6).

A run directory is the source of truth. Rerunning ``intgen generate JOB --out DIR`` on
a directory that holds a run resumes it: answered samples come from its sample store
(:mod:`intgen.store`), everything else is computed again. A spec change that can change
results is refused, naming the keys; changes that cannot (worker and concurrency
counts) are allowed, and a larger ``limit`` extends the run with the new problems.
"""

from __future__ import annotations

import re
from typing import Any

#: keys whose value cannot change what a run computes (dotted; ``*`` matches one level)
NEUTRAL_KEYS = ("grading.workers", "backend.concurrency", "proposer.backend.concurrency", "executor.window",
                "backend.prompt_format", "proposer.backend.prompt_format",  # the same ids either way (docs/servers.md)
                "executor.schedule", "executor.slice", "executor.store_group_size", "executor.store_group_ms",
                "executor.kind", "executor.engines", "executor.ray.address", "executor.ray.num_cpus",
                "executor.ray.cpus_per_engine", "executor.ray.gpus_per_engine", "executor.ray.max_restarts")
#: keys added after runs were made, with the value that computes what those runs computed:
#: a run whose job.yaml lacks one resumes when the new spec has this value
ADDED_KEYS = {"rollout.keep": "failed", "rollout.wave": None, "conditions": None, "hint.fraction": 0.5,
              "hint.template": "{problem}\n\nHint: a solution begins as follows.\n\n{hint}"}
#: keys that may grow (None = no limit is the largest)
GROWABLE_KEYS = ("limit", r"source(\.\d+)?\.limit")


class ResumeError(ValueError):
    """A spec that differs from the run directory's in a way that changes results."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out or {prefix: []}
    return {prefix: value}


def _grows(old: Any, new: Any) -> bool:
    if new is None:
        return True
    return old is not None and new >= old


def check_resume(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Compare the resolved spec stored in a run directory with the new one.

    Args:
        old, new: resolved specs (``JobSpec.resolved()``); a single ``source`` mapping and
            a one-element list compare equal.

    Returns:
        The dotted keys that changed in an allowed way (for the log).

    Raises:
        ResumeError: some key changed in a way that can change results; the message names
            every such key with its old and new value, and says what to do.
    """
    def norm(spec: dict) -> dict:
        spec = dict(spec)
        if isinstance(spec.get("source"), dict):
            spec["source"] = [spec["source"]]
        return spec

    a, b = _flatten(norm(old)), _flatten(norm(new))
    allowed, refused = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if key in NEUTRAL_KEYS:
            allowed.append(key)
        elif key not in a and key in ADDED_KEYS and vb == ADDED_KEYS[key]:
            continue  # a key added since, at the value the old run computed with
        elif any(re.fullmatch(p, key) for p in GROWABLE_KEYS) and _grows(va, vb):
            allowed.append(key)
        else:
            refused.append(f"{key}: {va!r} -> {vb!r}")
    if refused:
        raise ResumeError("this run directory was made with a different spec, and these changes can change its "
                          "results:\n  " + "\n  ".join(refused) +
                          "\nUse the spec it was made with (its job.yaml) to resume it, or choose another --out.")
    return allowed
