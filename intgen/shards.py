"""Sharded runs and their merge (docs/scale.md, "Shards").

``intgen generate SPEC --shard i/N`` runs the problems whose stable id hashes to shard ``i``
of ``N``: the spec's limits are applied first (problems in source order, exactly as an
unsharded run loads them), then each problem goes to shard ``sha256(problem_id) mod N``.
Every record of a run belongs to one problem, so a shard is a complete run of its problems:
its own folder, sample store and tables, resumable like any run, and its ``manifest.json``
status (``complete``) is its completion marker. ``shard.json`` says which shard the folder
holds, of which spec, and each of its problems' position in the unsharded problem list.

``intgen merge RUN... --out DIR`` checks that the shards come from one spec (the results
fingerprint: the spec without the keys that cannot change results, :data:`intgen.resume.NEUTRAL_KEYS`),
that every shard ``0..N-1`` is there once and complete, and writes one run directory equal to
the unsharded run's: every table holds the union of the shards' rows in the table's canonical
order (docs/architecture.md, "Tables, order and resume"), the funnel and token counts are
summed, the engine sessions of every shard are kept (so GPU-hours add up), and the sample
stores are merged, so the merged run can be resumed or exported like any other.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from intgen import tables
from intgen.resume import NEUTRAL_KEYS, _flatten
from intgen.store import STORE_NAME, SampleStore

SHARD_FILE = "shard.json"
#: the run tables a merge combines (``name.parquet``)
TABLES = ("problems", "rollouts", "candidates", "continuations", "interventions", "sft", "rejects")
#: tables a run has only when its spec asks for them (docs/hard-pool.md, docs/hints.md): merged when the shards have them
OPTIONAL_TABLES = ("hard_pool", "conditions")
#: the order of ``rejects.parquet``'s stages (the runner's canonical order)
_REJECT_STAGES = ("load", "rollout", "solve", "propose", "check", "baseline")


class ShardError(RuntimeError):
    """A shard that cannot be run or merged: wrong ``--shard``, a folder made for another
    shard, a missing, incomplete or foreign shard. The message names the folder or shard."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``--shard index/count``, 0-based)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/N"`` with ``0 <= i < N``.

        Raises:
            ShardError: anything else (the message shows the expected form).
        """
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
            raise ShardError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. --shard 0/8 "
                             "(a Slurm array passes --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, record_id: str) -> bool:
        """Whether the problem (or load reject) with this id belongs to this shard."""
        return shard_of(record_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(record_id: str, count: int) -> int:
    """The shard of a problem id: the first 8 bytes of its sha256, modulo ``count``; the
    same on every machine and Python (no ``hash()`` salt)."""
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "big") % count


class ShardRejects:
    """Passes on the load rejects whose record belongs to ``shard`` (so the merged
    ``rejects.parquet`` holds each load reject once)."""

    def __init__(self, flow: Any, shard: Shard):
        self.flow, self.shard = flow, shard

    def reject(self, stage: str, record_id: str, problem_id: str | None, reason: str, detail: str = "") -> None:
        if self.shard.owns(problem_id or record_id):
            self.flow.reject(stage, record_id, problem_id, reason, detail)


def results_fingerprint(resolved: dict[str, Any]) -> str:
    """sha256 of a resolved spec without the keys that cannot change results
    (:data:`intgen.resume.NEUTRAL_KEYS`): shards run with other window sizes, workers or
    engine counts still merge."""
    flat = {k: v for k, v in _flatten(_norm(resolved)).items() if k not in NEUTRAL_KEYS}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def _norm(spec: dict[str, Any]) -> dict[str, Any]:
    spec = dict(spec)
    if isinstance(spec.get("source"), dict):
        spec["source"] = [spec["source"]]
    return spec


def check_shard_folder(out: Path, shard: Shard | None) -> None:
    """A run folder is resumed only as what it was made as: the same shard, or unsharded.

    Raises:
        ShardError: the folder holds another shard, a shard when none is asked, or an
            unsharded run when a shard is asked.
    """
    path = out / SHARD_FILE
    if not (out / "job.yaml").exists() or not (out / "manifest.json").exists():
        return  # nothing run yet (a run writes its manifest after its shard file)
    held = None
    if path.exists():
        info = json.loads(path.read_text())
        held = Shard(int(info["index"]), int(info["count"]))
    if held == shard:
        return
    if held is None:
        raise ShardError(f"{out} holds an unsharded run; run --shard {shard} into another --out")
    if shard is None:
        raise ShardError(f"{out} holds shard {held}; resume it with --shard {held}, or choose another --out")
    raise ShardError(f"{out} holds shard {held}, not {shard}; resume it with --shard {held}, or choose another --out")


def write_shard_file(out: Path, shard: Shard, resolved: dict[str, Any], positions: list[int], total: int) -> None:
    """``shard.json``: which shard, of which spec, and each problem's position (in the
    order of this shard's ``problems.parquet``) among the ``total`` problems of the unsharded run."""
    tables.write_json({"index": shard.index, "count": shard.count, "results_fingerprint": results_fingerprint(resolved),
                       "problems_total": total, "positions": positions}, out / SHARD_FILE)


# -- merge ----------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """The merged run: its folder, the funnel, and the shard folders it came from (in shard order)."""

    out_dir: Path
    funnel: dict[str, int]
    shards: list[Path]


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path.parent} is not a finished intgen shard: cannot read {what} ({e})") from None


def _load_shards(runs: Iterable[str | Path]) -> list[tuple[Path, dict, dict]]:
    """(folder, shard.json, manifest.json) per shard, in shard order, after every check."""
    import yaml

    found: dict[int, tuple[Path, dict, dict]] = {}
    count = None
    reference: tuple[Path, dict] | None = None
    for run in runs:
        run = Path(run)
        if not run.is_dir():
            raise ShardError(f"{run}: no such run folder")
        if not (run / SHARD_FILE).exists():
            raise ShardError(f"{run} is not a shard (no {SHARD_FILE}): only runs made with intgen generate --shard "
                             "i/N can be merged")
        info = _read(run / SHARD_FILE, SHARD_FILE)
        manifest = _read(run / "manifest.json", "manifest.json")
        with open(run / "job.yaml", encoding="utf-8") as f:
            spec = yaml.safe_load(f)
        if manifest.get("status") != "complete":
            why = (f"{manifest.get('failed_requests', 0)} requests failed" if manifest.get("status") == "incomplete"
                   else "it was stopped before it finished, or is still running")
            raise ShardError(f"shard {info['index']}/{info['count']} in {run} is not complete ({why}); resume it with "
                             f"intgen generate {run / 'job.yaml'} --shard {info['index']}/{info['count']} --out {run}, "
                             "then merge again")
        if count is None:
            count, reference = info["count"], (run, spec)
        elif info["count"] != count:
            raise ShardError(f"{run} is shard {info['index']}/{info['count']}, but {reference[0]} is one of {count} "
                             "shards: shards of one run share N")
        if info.get("results_fingerprint") != results_fingerprint(spec) or \
                results_fingerprint(spec) != results_fingerprint(reference[1]):
            a, b = _flatten(_norm(reference[1])), _flatten(_norm(spec))
            diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k) and k not in NEUTRAL_KEYS]
            raise ShardError(f"{run} is a foreign shard: it was made with another spec than {reference[0]} "
                             f"({'; '.join(diff[:5]) or 'its job.yaml was changed after the run'})")
        for name in [f"{t}.parquet" for t in TABLES] + ["stats.json"]:
            if not (run / name).exists():
                raise ShardError(f"shard {info['index']}/{info['count']} in {run} has no {name}; resume the shard "
                                 "to write it, then merge again")
        if info["index"] in found:
            raise ShardError(f"shard {info['index']}/{count} is given twice: {found[info['index']][0]} and {run}")
        found[info["index"]] = (run, info, manifest)
    if count is None:
        raise ShardError("give the shard folders to merge")
    missing = [i for i in range(count) if i not in found]
    if missing:
        raise ShardError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}/{count}' for i in missing)} "
                         f"missing: got {', '.join(f'{i}/{count} ({found[i][0]})' for i in sorted(found))}")
    shards = [found[i] for i in range(count)]
    positions = sorted(p for _, info, _ in shards for p in info["positions"])
    total = shards[0][1]["problems_total"]
    if positions != list(range(total)):
        raise ShardError(f"the shards' problems do not make up the run's {total} problems (were they made with "
                         "different sources or limits?)")
    return shards


def _sorted_table(name: str, parts: list[pa.Table], position: dict[str, int]) -> pa.Table:
    """The shards' rows of one table in its canonical order: every row belongs to one problem,
    and each shard's table is already in canonical order, so a stable sort by the problem's
    position (continuations: checks before baselines) restores the unsharded order; rejects
    are sorted by stage, record id and reason as the runner sorts them."""
    t = pa.concat_tables(parts)
    if t.num_rows == 0:
        return t
    if name == "rejects":
        stages = {s: i for i, s in enumerate(_REJECT_STAGES)}
        cols = [t.column(c).to_pylist() for c in ("stage", "record_id", "reason")]
        keys = [(stages.get(s, 99), rid, reason) for s, rid, reason in zip(*cols)]
    else:
        pids = t.column("problem_id").to_pylist()
        kinds = t.column("kind").to_pylist() if name == "continuations" else [None] * len(pids)
        keys = [(k not in (None, "check"), position[p]) for p, k in zip(pids, kinds)]
    order = sorted(range(t.num_rows), key=keys.__getitem__)
    return t.take(pa.array(order, pa.int64()))


def _sum(values: list[Any]) -> Any:
    """Merge one stats value across shards: numbers add up, dicts merge key by key, lists
    concatenate, anything else is the first shard's."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, bool) for v in present):
        return all(present)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return sum(present)
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: _sum([v.get(k) for v in present]) for k in keys}
    if all(isinstance(v, list) for v in present):
        return [x for v in present for x in v]
    return present[0]


def _merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    merged = _sum([{k: v for k, v in s.items() if k not in ("in_flight_seconds", "ledger")} for s in stats])
    merged["in_flight_seconds"] = {f"shard-{i}/{k}": v for i, s in enumerate(stats)
                                   for k, v in (s.get("in_flight_seconds") or {}).items()}
    ledgers = [s.get("ledger") or {} for s in stats]
    merged["ledger"] = {"stages": _sum([l.get("stages") or {} for l in ledgers]),
                        "sessions": [{**x, "shard": i} for i, l in enumerate(ledgers) for x in l.get("sessions", [])],
                        "engine_seconds": round(sum(l.get("engine_seconds", 0) for l in ledgers), 3),
                        "gpu_hours": sum(l.get("gpu_hours", 0) for l in ledgers)}
    return merged


def _merge_manifests(manifests: list[dict[str, Any]], folders: list[Path]) -> dict[str, Any]:
    first = manifests[0]
    stages: dict[str, dict[str, Any]] = {}
    for name in first.get("stages", {}):
        entries = [m["stages"][name] for m in manifests]
        st = _sum([{k: v for k, v in e.items() if k not in ("status", "first_at", "last_at")} for e in entries])
        firsts = [e.get("first_at") for e in entries if e.get("first_at") is not None]
        lasts = [e.get("last_at") for e in entries if e.get("last_at") is not None]
        statuses = {e.get("status") for e in entries}
        st.update(status="done" if statuses == {"done"} else ("running" if "running" in statuses else "pending"),
                  first_at=min(firsts) if firsts else None, last_at=max(lasts) if lasts else None)
        stages[name] = st
    out = {k: v for k, v in first.items() if k not in ("shard", "stages", "versions", "spec_fingerprint")}
    out.update(status="complete", complete=True, stages=stages, failed_requests=0,
               merged_from=[{"folder": str(f.resolve()), "shard": m.get("shard"),
                             "spec_fingerprint": m.get("spec_fingerprint")} for f, m in zip(folders, manifests)])
    return out


def _merge_stores(folders: list[Path], dest: Path) -> int:
    SampleStore(dest).close()  # the store's own schema
    db = sqlite3.connect(str(dest), isolation_level=None)
    try:
        for i, folder in enumerate(folders):
            src = folder / STORE_NAME
            if not src.exists():
                continue
            # read through SQLite (the shard's WAL is read too), never copied as bytes
            db.execute("ATTACH DATABASE ? AS shard", (str(src),))
            db.execute("BEGIN")
            db.execute("INSERT OR IGNORE INTO samples SELECT * FROM shard.samples")
            db.execute("COMMIT")
            db.execute("DETACH DATABASE shard")
        return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    finally:
        db.close()


def merge_runs(runs: Iterable[str | Path], out_dir: str | Path) -> MergeResult:
    """Merge the shards of one run into ``out_dir`` (module docstring); a merge that fails
    removes what it wrote, so it can be run again into the same folder.

    Args:
        runs: the shard folders (any order; every shard ``0..N-1`` exactly once).
        out_dir: a new or empty folder for the merged run.

    Returns:
        The merged run's folder and funnel.

    Raises:
        ShardError: a folder is not a shard, is incomplete, comes from another spec (a
            *foreign* shard), or a shard is missing or given twice; the message names it.
        RunDirError: ``out_dir`` is not empty, or is in use.
    """
    from intgen.rundir import RunDirError, check_out_dir, run_lock

    out = Path(out_dir)
    shards = _load_shards(runs)
    folders = [f for f, _, _ in shards]
    check_out_dir(out)
    if (out / "job.yaml").exists():
        raise RunDirError(f"--out {out} already holds a run; merge into a new or empty folder")
    if any(out.resolve() == f.resolve() for f in folders):
        raise RunDirError(f"--out {out} is one of the shards; merge into a new or empty folder")
    with run_lock(out, "merge"):
        try:
            return _merge_locked(shards, folders, out)
        except BaseException:  # leave the folder as it was (empty), so the merge can be run again
            for name in [f"{t}.parquet" for t in TABLES + OPTIONAL_TABLES] + [STORE_NAME, STORE_NAME + "-wal", STORE_NAME + "-shm",
                                                            "stats.json", "plan.json", "manifest.json", ".job.yaml.tmp"]:
                (out / name).unlink(missing_ok=True)
            raise


def _merge_locked(shards: list[tuple[Path, dict, dict]], folders: list[Path], out: Path) -> MergeResult:
    from intgen.config import JobSpec
    from intgen.rundir import versions, write_stats

    shutil.copyfile(folders[0] / "job.yaml", out / ".job.yaml.tmp")
    position: dict[str, int] = {}
    for folder, info, _ in shards:
        pids = pq.read_table(folder / "problems.parquet", columns=["problem_id"]).column(0).to_pylist()
        if len(pids) != len(info["positions"]):
            raise ShardError(f"{folder}: problems.parquet has {len(pids)} problems, {SHARD_FILE} lists "
                             f"{len(info['positions'])}; the shard folder was changed after its run")
        position.update(zip(pids, info["positions"]))
    for name in TABLES + tuple(t for t in OPTIONAL_TABLES if (folders[0] / f"{t}.parquet").exists()):
        parts = []
        for folder in folders:
            if not (folder / f"{name}.parquet").exists():
                raise ShardError(f"{folder} has no {name}.parquet but {folders[0]} has; resume that shard, then "
                                 "merge again")
            parts.append(pq.read_table(folder / f"{name}.parquet"))
        t = _sorted_table(name, parts, position)
        tables._atomic_write(out / f"{name}.parquet", lambda tmp, t=t: pq.write_table(t, tmp))
    _merge_stores(folders, out / STORE_NAME)
    stats = _merge_stats([_read(f / "stats.json", "stats.json") for f in folders])
    for source in (stats.get("pass_at_k") or {}).values():  # a share is recomputed, not summed
        source["pass_at_k"] = source["solved"] / source["problems"] if source["problems"] else None
    if "conditions" in stats:
        from intgen.stages.hint import condition_table

        stats["conditions"] = {"hint_fraction": _read(folders[0] / "stats.json", "stats.json")["conditions"].get(
            "hint_fraction"), "table": condition_table(pq.read_table(out / "interventions.parquet").to_pylist())}
    write_stats(out, stats)
    plans = [_read(f / "plan.json", "plan.json") for f in folders if (f / "plan.json").exists()]
    if plans:
        plan = _sum(plans)
        for key in ("funnel", "engine", "counted_with"):
            plan[key] = plans[0].get(key)
        tables.write_json(plan, out / "plan.json")
    import yaml

    with open(folders[0] / "job.yaml", encoding="utf-8") as f:
        spec = JobSpec.model_validate(yaml.safe_load(f))
    manifest = _merge_manifests([m for _, _, m in shards], folders)
    tables.write_json({"spec_fingerprint": spec.fingerprint(), "versions": versions(), **manifest},
                      out / "manifest.json")
    (out / ".job.yaml.tmp").replace(out / "job.yaml")  # last: the folder is a run once everything is in it
    return MergeResult(out, stats.get("funnel", {}), folders)
