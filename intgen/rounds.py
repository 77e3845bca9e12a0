"""Repeated InT rounds (docs/rounds.md): intervene, fine-tune on the interventions, then
intervene again on the new policy's failures.

Round 1 is ``intgen generate`` on the job spec. Round ``i + 1`` first fine-tunes round
``i``'s policy on round ``i``'s SFT rows (``intgen train sft``, the paper's SFT step,
arXiv 2601.14209 section 4), then generates again from the *original* problems with the
new checkpoint as the policy, so the rollouts (and, with ``rollout.keep: hard``, the hard
pool) are the new policy's. Everything lives under one folder::

    OUT/rounds.json   the funnel across rounds, the steps done, why the job ended
    OUT/round-1/      a normal run folder (intgen inspect / view / export work on it)
    OUT/model-1/      the policy fine-tuned on round-1's SFT rows (used by round 2)
    OUT/round-2/ ...

Each step runs as its own process (``python -m intgen.cli generate`` / ``train sft``): the
vLLM engine's and the trainer's GPU memory are freed only when their process ends, and the
next step needs the whole GPU. The job's state is the folders themselves: a round whose
``manifest.json`` says complete and a model folder holding ``intgen_train.json`` (written
after the weights) are done and are skipped on a rerun; anything else is (re)run, and
``intgen generate`` resumes a half-done round from its sample store. So a killed job is
resumed by running the same command again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from intgen import tables
from intgen.rundir import check_out_dir, run_lock

ROUNDS_FILE = "rounds.json"
#: why a rounds job ended (``rounds.json``, ``ended_by``)
ENDINGS = {
    "rounds_done": "all requested rounds ran",
    "no_hard_problems": "the policy solved every problem within k samples: the hard pool is empty",
    "no_sft_rows": "a round accepted no intervention, so there is nothing to fine-tune on",
    "round_incomplete": "a round's run did not finish (failed requests or a stop); rerun the command to resume",
    "generate_failed": "intgen generate failed (see its message above)",
    "train_failed": "intgen train sft failed (see its message above)",
    "stopped": "stopped by a signal; rerun the command to resume",
}
#: funnel counts copied from each round's stats.json into rounds.json
FUNNEL_KEYS = ("problems", "hard_problems", "rollouts", "failed_rollouts", "candidates", "parsed_candidates",
               "accepted", "sft_rows")


#: the settings a rounds folder is made with; a rerun must give the same (``rounds`` may change)
SETTINGS = ("job", "overrides", "limit", "model", "seed", "train")


class RoundsError(RuntimeError):
    """A rounds job that cannot start or go on; the message names the folder or setting."""


@dataclass
class RoundsJob:
    """What ``intgen rounds`` was asked to do.

    Attributes:
        job: the job spec file (already resolved from a bundled name).
        out: the rounds folder.
        rounds: how many rounds at most (>= 1).
        overrides: ``key=value`` overrides of the job spec, applied to every round.
        seed: the spec's seed; round ``i`` uses ``seed + i - 1`` so its samples are new draws.
        model: the spec's policy model (round 1's policy).
        train_preset: ``intgen train sft --preset`` (None: that command's default).
        train_overrides: ``key=value`` overrides of the training preset.
        limit: ``--limit`` for every round, or None.
        quiet: no progress bars in the rounds' runs.
    """

    job: Path
    out: Path
    rounds: int
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    model: str = ""
    train_preset: str | None = None
    train_overrides: list[str] = field(default_factory=list)
    limit: int | None = None
    quiet: bool = False

    def round_dir(self, i: int) -> Path:
        return self.out / f"round-{i}"

    def model_dir(self, i: int) -> Path:
        """The policy fine-tuned on round ``i``'s SFT rows (round ``i + 1``'s policy)."""
        return self.out / f"model-{i}"

    def partial_model_dir(self, i: int) -> Path:
        """Where ``model-i`` is trained; renamed to :meth:`model_dir` once training finished."""
        return self.out / f"model-{i}.partial"

    def settings(self) -> dict[str, Any]:
        """The settings that make the folder's rounds (:data:`SETTINGS`)."""
        return {"job": str(self.job), "overrides": list(self.overrides), "limit": self.limit, "model": self.model,
                "seed": self.seed, "train": {"preset": self.train_preset, "overrides": list(self.train_overrides)}}

    def policy(self, i: int) -> str:
        """Round ``i``'s policy: the spec's model for round 1, else ``model-(i-1)``."""
        return self.model if i == 1 else str(self.model_dir(i - 1))

    def generate_command(self, i: int) -> list[str]:
        """The ``intgen generate`` arguments of round ``i`` (after ``intgen``)."""
        cmd = ["generate", str(self.job), "--out", str(self.round_dir(i))] + (["--quiet"] if self.quiet else [])
        if self.limit is not None:
            cmd += ["--limit", str(self.limit)]
        # the path as a quoted YAML scalar: '#', ': ' or '{' in a folder name stay part of it
        return cmd + list(self.overrides) + [f"model={json.dumps(self.policy(i))}", f"seed={self.seed + i - 1}"]

    def train_command(self, i: int) -> list[str]:
        """The ``intgen train sft`` arguments that make ``model-i`` from round ``i``'s rows."""
        cmd = ["train", "sft", "--data", str(self.round_dir(i)), "--model", self.policy(i),
               "--out", str(self.partial_model_dir(i))]
        if self.train_preset:
            cmd += ["--preset", self.train_preset]
        return cmd + list(self.train_overrides)


@dataclass
class RoundsResult:
    """How a rounds job ended: ``ended_by`` is a key of :data:`ENDINGS`; ``exit_status`` is
    the command's exit status; ``record`` is what ``rounds.json`` holds."""

    ended_by: str
    exit_status: int
    record: dict[str, Any]


def round_complete(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a run whose manifest says it is complete."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(manifest, dict) and manifest.get("complete"))


def model_trained(model_dir: Path) -> bool:
    """True when ``model_dir`` holds a finished ``intgen train sft``: a readable
    ``intgen_train.json`` (written, atomically, after the weights and the tokenizer), a
    ``config.json`` and safetensors weights."""
    try:
        record = json.loads((model_dir / "intgen_train.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and (model_dir / "config.json").is_file()
            and any(model_dir.glob("*.safetensors")))


def round_summary(job: RoundsJob, i: int) -> dict[str, Any]:
    """Round ``i``'s entry of ``rounds.json``: its policy, seed, folder, status, funnel counts
    (:data:`FUNNEL_KEYS`, from the run's ``stats.json``) and pass@k per source; with the
    model trained on its rows when there is one.

    Raises:
        RoundsError: a complete round's stats.json is unreadable.
    """
    run_dir = job.round_dir(i)
    entry: dict[str, Any] = {"round": i, "policy": job.policy(i), "seed": job.seed + i - 1,
                             "run_dir": run_dir.name, "status": "complete" if round_complete(run_dir) else "incomplete"}
    if entry["status"] == "complete":
        try:
            stats = json.loads((run_dir / "stats.json").read_text())
        except (OSError, ValueError) as e:
            raise RoundsError(f"{run_dir / 'stats.json'} is unreadable ({e}) although the round's manifest says "
                              f"complete; rerun intgen generate on {run_dir} (the same spec) to rewrite it") from None
        funnel = stats.get("funnel", {})
        entry.update({k: funnel[k] for k in FUNNEL_KEYS if k in funnel})
        if "pass_at_k" in stats:
            entry["pass_at_k"] = stats["pass_at_k"]
    model_dir = job.model_dir(i)
    if model_trained(model_dir):
        record = json.loads((model_dir / "intgen_train.json").read_text())  # readable: model_trained
        entry["trained"] = {"model_dir": model_dir.name, "rows": record.get("rows"),
                            "global_step": record.get("global_step"), "preset": record.get("preset")}
    return entry


def _die_with_parent() -> None:  # pragma: no cover  (runs in the child between fork and exec)
    """Linux: the step gets SIGTERM when the rounds process dies, even by SIGKILL (prctl
    PR_SET_PDEATHSIG), and then stops the way ``intgen generate`` stops on SIGTERM: what was
    answered is kept."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def run_step(args: list[str]) -> int:
    """Run ``intgen ARGS`` as a child process and return its exit status. A SIGINT or
    SIGTERM of this process is passed on to the step, which stops cleanly; then
    KeyboardInterrupt is raised here."""
    cmd = [sys.executable, "-m", "intgen.cli", *args]
    child = subprocess.Popen(cmd, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    try:
        return child.wait()
    except KeyboardInterrupt:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait()
        raise


def describe(args: list[str]) -> str:
    """A step's command line as a user would type it."""
    return "intgen " + " ".join(shlex.quote(a) for a in args)


def _say(line: str) -> None:
    print(line, flush=True)  # before the step's own output, also when stdout is a file


def run_rounds(job: RoundsJob, step: Callable[[list[str]], int] = run_step,
               say: Callable[[str], None] = _say) -> RoundsResult:
    """Run (or resume) a rounds job in ``job.out`` (module docstring; docs/rounds.md).

    For i = 1..rounds: generate round i unless it is complete; stop with ``no_sft_rows``
    when it has no SFT rows (``no_hard_problems`` when its hard pool is empty); unless it is the last round, fine-tune its policy on its SFT
    rows into ``model-i`` unless that is done. ``rounds.json`` is rewritten (atomically)
    after every step. The folder is locked for the whole job.

    Args:
        job: what to run.
        step: runs one ``intgen`` command (argument list), returns its exit status
            (default :func:`run_step`: a child process; tests may run it in-process).
        say: where progress lines go.

    Returns:
        how it ended. Exit statuses: 0 for ``rounds_done``, ``no_hard_problems`` and
        ``no_sft_rows``; the step's
        status when a step failed (3: a round finished with failed requests); 130/143 when
        stopped by a signal.

    Raises:
        RoundsError, intgen.rundir.RunDirError, FileExistsError: ``job.out`` is not a rounds
        folder or is in use.
    """
    if job.rounds < 1:
        raise RoundsError(f"--rounds {job.rounds}: give at least 1")
    check_out_dir(job.out, marker=ROUNDS_FILE, what="an intgen rounds folder")
    with run_lock(job.out, "rounds"):
        record = _load_record(job)
        ended_by, status = "rounds_done", 0
        try:
            for i in range(1, job.rounds + 1):
                rc = _step_unless_done(lambda: round_complete(job.round_dir(i)), job.generate_command(i),
                                       f"round {i}", f"complete in {job.round_dir(i)}, kept", step, say)
                if rc is not None:
                    ended_by, status = ("round_incomplete" if rc in (0, 3) else "generate_failed"), rc or 1
                    _update(job, record, i, ended_by)
                    break
                entry = _update(job, record, i, None)
                if entry.get("hard_problems") == 0:
                    ended_by = "no_hard_problems"
                    break
                if not entry.get("sft_rows"):
                    ended_by = "no_sft_rows"
                    break
                if i == job.rounds:
                    break
                rc = _train(job, i, step, say)
                if rc is not None:
                    ended_by, status = "train_failed", rc or 1
                    _update(job, record, i, ended_by)
                    break
                _update(job, record, i, None)
        except KeyboardInterrupt:
            ended_by, status = "stopped", 130
        record["ended_by"], record["ending"] = ended_by, ENDINGS[ended_by]
        record["status"] = "complete" if ended_by in ("rounds_done", "no_hard_problems", "no_sft_rows") else "incomplete"
        record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tables.write_json(record, job.out / ROUNDS_FILE)
        return RoundsResult(ended_by, status, record)


def _step_unless_done(done: Callable[[], bool], args: list[str], label: str, kept: str,
                      step: Callable[[list[str]], int], say: Callable[[str], None]) -> int | None:
    """Run ``intgen ARGS`` unless ``done()``; None when the step is done afterwards, else its
    exit status (0 when it exited 0 but left its work undone).

    Raises:
        KeyboardInterrupt: the step was stopped by SIGINT/SIGTERM (exit 130/143).
    """
    if done():
        say(f"{label}: {kept}")
        return None
    say(f"{label}: {describe(args)}")
    rc = step(args)
    if rc < 0:  # killed by a signal (the OOM killer's SIGKILL: -9): the shell's 128 + N
        say(f"{label}: the step was killed by {signal.Signals(-rc).name}; rerun the command to resume")
        rc = 128 - rc
    if rc in (130, 143):
        raise KeyboardInterrupt
    return None if rc == 0 and done() else rc


def _train(job: RoundsJob, i: int, step: Callable[[list[str]], int], say: Callable[[str], None]) -> int | None:
    """Make ``model-i`` unless it is trained: train into ``model-i.partial`` (emptied first:
    a killed training's leftovers, such as a half-written weights file, are intgen's own),
    then rename it. None when ``model-i`` is trained afterwards, else the step's status.

    Raises:
        RoundsError: ``model-i`` exists but holds no finished training (intgen does not
            replace a folder it cannot tell is its own).
        KeyboardInterrupt: the step was stopped by a signal.
    """
    import shutil

    final, partial = job.model_dir(i), job.partial_model_dir(i)
    if model_trained(final):
        say(f"train {i}: {final} is trained, kept")
        return None
    if final.exists():
        raise RoundsError(f"{final} exists but holds no finished training (a readable intgen_train.json, "
                          "config.json and safetensors weights); move it away and rerun to train it again")
    if partial.exists():
        shutil.rmtree(partial)
    rc = _step_unless_done(lambda: model_trained(partial), job.train_command(i), f"train {i}", "", step, say)
    if rc is None:
        os.replace(partial, final)
    return rc


def _load_record(job: RoundsJob) -> dict[str, Any]:
    """``rounds.json`` for this invocation; the round entries are rebuilt from the folders
    (the folders are the truth), every round folder there is included.

    Raises:
        RoundsError: the folder's rounds were made with other settings (:data:`SETTINGS`;
            only ``--rounds`` may change between reruns), or its rounds.json is unreadable.
    """
    path = job.out / ROUNDS_FILE
    settings = job.settings()
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RoundsError(f"{path} is unreadable ({e}); it records how the folder's rounds were made, so "
                              "intgen will not guess: restore it or choose another --out") from None
        for key in SETTINGS:
            if key in before and before[key] != settings[key]:
                raise RoundsError(f"{job.out} was made with {key} = {json.dumps(before[key])}, this command gives "
                                  f"{json.dumps(settings[key])}: a round made with other settings would be kept as "
                                  "if it were this job's. Give the same settings (only --rounds may change), or "
                                  "choose another --out")
    record: dict[str, Any] = {**settings, "rounds_requested": job.rounds, "status": "running", "ended_by": None,
                              "rounds": []}
    i = 1
    while job.round_dir(i).is_dir():
        record["rounds"].append(round_summary(job, i))
        i += 1
    tables.write_json(record, path)
    return record


def _update(job: RoundsJob, record: dict[str, Any], i: int, ended_by: str | None) -> dict[str, Any]:
    """Refresh round ``i``'s entry from its folders and rewrite ``rounds.json``."""
    entry = round_summary(job, i)
    record["rounds"] = sorted([r for r in record["rounds"] if r["round"] != i] + [entry], key=lambda r: r["round"])
    if ended_by:
        record["ended_by"] = ended_by
    tables.write_json(record, job.out / ROUNDS_FILE)
    return entry


def funnel_table(record: dict[str, Any]) -> str:
    """``rounds.json``'s rounds as a text table, one row per round: status, problems solved
    in k samples (pass@k), the funnel counts and the model trained on the round's rows."""
    cols = [k for k in FUNNEL_KEYS if any(k in r for r in record["rounds"])]
    head = ["round", "status", "solved", *cols, "trained"]
    rows = [[str(r["round"]), r["status"], _solved(r), *[str(r.get(k, "")) for k in cols],
             (f"{r['trained']['model_dir']} ({r['trained']['global_step']} steps)" if r.get("trained") else "-")]
            for r in record["rounds"]]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *rows])


def _solved(entry: dict[str, Any]) -> str:
    """``solved/problems`` over all sources (pass@k of the round's policy), or ``-``."""
    by_source = entry.get("pass_at_k") or {}
    if not by_source:
        return "-"
    return (f"{sum(s['solved'] for s in by_source.values())}/"
            f"{sum(s['problems'] for s in by_source.values())}")
