"""The runner: wires the stages of ``intgen generate`` to one executor and writes the run
directory (docs/pipeline.md and docs/architecture.md; docs/architecture.md).

rollout -> propose -> check -> baseline stream: each record goes to its next stage the
moment it is ready, through :class:`intgen.executor.Executor`; select joins everything
at the end (no model call). The stages own their logic; this module only connects them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, Union

from intgen import tables
from intgen.backends import Backend, BackendError, Sampling, make_backend, make_engines
from intgen.config import JobSpec, SimSpec
from intgen.executor import Executor
from intgen.grading_pool import GradingPool
from intgen.models import check_model_name
from intgen.plan import Engine, Funnel, make_plan
from intgen.prompts import load_prompt
from intgen.rundir import (check_out_dir, ledger, load_problems, open_run_dir, resolve_spec_paths, run_lock,
                           write_manifest, write_stats)
from intgen.stages import GENERATE_STAGES, HINT_STAGES
from intgen.stages.baseline import BaselineStage
from intgen.stages.check import CheckStage
from intgen.stages.hint import HintStage, condition_table, join as join_hints
from intgen.stages.propose import ProposeStage
from intgen.stages.rollout import RolloutStage
from intgen.stages.select import interventions, sft_rows
from intgen.shards import Shard, ShardRejects, check_shard_folder, write_shard_file
from intgen.store import STORE_NAME, SampleStore

_REJECT_ORDER = {s: i for i, s in enumerate(("load",) + HINT_STAGES)}


@dataclass
class RunResult:
    """What a run wrote: its folder, the funnel, ``stats.json``, and whether it is complete
    (every request answered or failed in a way a rerun would not change); ``failed`` is the
    number of requests a rerun will send again."""

    out_dir: Path
    funnel: dict[str, int]
    stats: dict[str, Any]
    complete: bool = True
    failed: int = 0


Engines = Union[Backend, Sequence[Backend]]


def _listed(engines: Engines) -> list[Backend]:
    return [engines] if isinstance(engines, Backend) else list(engines)


def _engines(spec: Any, model: str, executor: Any) -> list[Backend]:
    """The engines of one model: one backend, or ``executor.engines`` of them (:func:`make_engines`)."""
    if executor.kind == "local" and executor.engines == 1:
        return [make_backend(spec, model)]
    return make_engines(spec, model, executor)


async def run_job_async(spec: JobSpec, out_dir: str | Path, spec_dir: Path | None = None, backend: Engines | None = None,
                        proposer_backend: Engines | None = None, progress: bool = True, close: bool = True,
                        grader: GradingPool | None = None, shard: Shard | None = None) -> RunResult:
    """:func:`run_job` inside a running event loop. With ``close=False`` the backends stay
    open, so one engine can serve several jobs in one loop (the tests share one vLLM engine).
    A given ``grader`` is used and left open; by default a pool is made from ``spec.grading``."""
    spec = resolve_spec_paths(spec, spec_dir)
    prompt = load_prompt(spec.propose.prompt)  # a broken prompt file stops the run before any model call
    check_model_name(spec.model)
    check_model_name(spec.proposer_model)
    # executor.engines engines per model (docs/scale.md); given backends are used as they are
    policies = _listed(backend) if backend is not None else _engines(spec.backend, spec.model, spec.executor)
    if proposer_backend is None and (spec.proposer.backend is not None or spec.proposer.model not in (None, spec.model)):
        proposer_backend = _engines(spec.proposer_backend, spec.proposer_model, spec.executor)
    proposers = _listed(proposer_backend) if proposer_backend is not None else policies
    policy, proposer = policies[0], proposers[0]
    engines = list({id(b): b for b in policies + proposers}.values())
    _check_continuation(policy, proposer, prompt)
    try:  # a server-backed engine probes the server here and may find it cannot continue a turn (auto modes)
        for b in engines:
            await b.prepare()
        _check_continuation(policy, proposer, prompt)
    except BaseException:
        if close:
            for b in engines:
                await b.close()
        raise
    check_out_dir(Path(out_dir))
    with run_lock(Path(out_dir), "generate"):
        check_shard_folder(Path(out_dir), shard)
        return await _run_locked(spec, out_dir, prompt, policies, proposers, progress, close, grader, shard)


def _check_continuation(policy: Backend, proposer: Backend, prompt: Any) -> None:
    """Refuse, before any generation request, a policy that cannot continue a turn (the
    check stage needs it) or a proposer that cannot when the prompt opens its reply."""
    if not policy.can_continue:
        raise BackendError("the check stage continues an unfinished assistant turn, which this policy backend cannot "
                           "do; use a backend that can (vllm, or a server with backend.continuation=completions or "
                           "server)")
    if prompt.response_prefix is not None and not proposer.can_continue:
        raise BackendError(f"the prompt {prompt.name} opens the proposer's reply (response_prefix), which this "
                           "backend cannot continue; use a prompt without response_prefix, or a backend that "
                           "continues turns (vllm, or a server with backend.continuation=completions)")


async def _run_locked(spec: JobSpec, out_dir: str | Path, prompt: Any, policies: list[Backend],
                      proposers: list[Backend], progress: bool, close: bool, grader: GradingPool | None,
                      shard: Shard | None) -> RunResult:
    policy, proposer = policies[0], proposers[0]
    engines = list({id(b): b for b in policies + proposers}.values())
    out, resumed = open_run_dir(spec, out_dir)
    x = spec.executor
    store = SampleStore(out / STORE_NAME, x.store_group_size, x.store_group_ms)
    grader_given = grader is not None
    grader = grader or GradingPool(spec.grading.workers, spec.grading.timeout_s)
    info: dict[str, Any] = {"resumed": resumed, "prompt": {"name": prompt.name, "path": prompt.path,
                                                           "sha256": prompt.sha256}}
    if shard is not None:
        info["shard"] = {"index": shard.index, "count": shard.count}

    def manifest(status: str = "running") -> None:
        write_manifest(out, spec, status=status, complete=status == "complete", stages=ex.status(),
                       failed_requests=ex.failed_requests, schedule=x.schedule,
                       backends={"policy": policy.describe(), "proposer": proposer.describe()},
                       executor={"kind": x.kind, "engines": {"policy": len(policies), "proposer": len(proposers)}},
                       **info)

    ex = Executor(HINT_STAGES if spec.hint_conditions else GENERATE_STAGES, store, grader, progress=progress, schedule=x.schedule, slice_size=x.slice,
                  window=x.window, on_status=manifest, faithful=spec.faithful)
    try:
        for b in policies:
            ex.add_engine("policy", b, spec.model)
        for b in proposers:
            ex.add_engine("proposer", b, spec.proposer_model)
        if shard is None:
            problems = load_problems(spec, ex)
        else:  # the spec's limits first, then this shard's problems (intgen/shards.py)
            loaded = load_problems(spec, ShardRejects(ex, shard))
            positions = [i for i, p in enumerate(loaded) if shard.owns(p.problem_id)]
            problems = [loaded[i] for i in positions]
            write_shard_file(out, shard, spec.resolved(), positions, len(loaded))
        tables.write_parquet(problems, tables.PROBLEMS, out / "problems.parquet")
        manifest()
        await ex.prepare()
        # what the run should cost, before any model call (intgen plan's defaults; inspect shows plan vs actual)
        expected = make_plan(spec, problems, prompt, policy, proposer, Funnel.from_sim(SimSpec()),
                             Engine.from_sim(spec.backend.sim))
        tables.write_json(asdict(expected), out / "plan.json")
        by_id = {p.problem_id: p for p in problems}
        order = {p.problem_id: i for i, p in enumerate(problems)}
        s = spec.sampling
        sampling = Sampling(s.temperature, s.top_p, s.top_k, s.max_tokens)
        common = dict(sampling=sampling, system_prompt=spec.system_prompt, run_seed=spec.seed)
        rollout = RolloutStage(ex, spec.rollout.k, order=order, on_failed=lambda r: propose.add(r),
                               faithful=spec.faithful, keep=spec.rollout.keep, wave=spec.rollout.wave, **common)
        rollouts = rollout.records  # the check and baseline stages read the failed traces
        baseline = BaselineStage(ex, spec.baseline.for_, spec.check.r, problems=by_id, rollouts=rollouts,
                                 order=order, faithful=spec.faithful, **common)
        hint = None
        if spec.hint_conditions:  # docs/hints.md: the same candidates as the baseline, the same r
            hint = HintStage(ex, spec.hint_conditions, spec.baseline.for_, spec.hint.fraction, spec.hint.template,
                             spec.check.r, problems=by_id, checks={}, **common)

        def decided(candidate: Any, accepted: bool) -> None:
            baseline.add(candidate, accepted)
            if hint is not None:
                hint.add(candidate, accepted)

        check = CheckStage(ex, spec.check.r, spec.check.wave, spec.check.early_stop, spec.check.give_up_after,
                           spec.accept.min_correct, faithful=spec.faithful, problems=by_id, rollouts=rollouts,
                           order=order, on_decided=decided if hint is not None else baseline.add, **common)
        if hint is not None:
            hint.checks = check.results
        propose = ProposeStage(ex, prompt, spec.propose.m, sampling, spec.seed, spec.faithful, by_id, order,
                               on_parsed=check.add, on_unusable=check.settle,
                               cut_prompt_tokens=spec.propose.cut_prompt_tokens)
        for p in problems:
            rollout.add(p)
        try:
            await ex.run()
        except BackendError as e:  # e.g. a server that refuses requests no retry can fix: say so in the manifest
            info["stopped_by"] = str(e)
            manifest("stopped")
            raise

        rollout_rows, cand_rows = rollout.rows(), propose.rows()
        check_rows = check.rows()
        tables.write_parquet(rollout_rows, tables.ROLLOUTS, out / "rollouts.parquet")
        hard = rollout.hard_pool()
        if spec.rollout.keep == "hard":  # docs/hard-pool.md
            tables.write_parquet(hard, tables.HARD_POOL, out / "hard_pool.parquet")
        tables.write_parquet(cand_rows, tables.CANDIDATES, out / "candidates.parquet")
        tables.write_parquet(propose.prompt_rows(), tables.PROPOSER_PROMPTS, out / "proposer_prompts.parquet")
        tables.write_parquet(check_rows + baseline.rows(), tables.CONTINUATIONS, out / "continuations.parquet")
        not_checked = check.not_checked()
        rows = interventions(spec, prompt, by_id, rollouts, cand_rows, check.results, baseline.verdicts(), check_rows,
                             not_checked)
        if hint is not None:
            join_hints(rows, hint)
            tables.write_parquet(hint.rows(order, {c.candidate_id: i for i, c in enumerate(cand_rows)}),
                                 tables.CONDITIONS, out / "conditions.parquet")
        tables.write_parquet(rows, tables.INTERVENTIONS, out / "interventions.parquet")
        sft = sft_rows(rows, spec.system_prompt)
        tables.write_parquet(sft, tables.SFT, out / "sft.parquet")
        tables.write_parquet(ex.rejects, tables.REJECTS, out / "rejects.parquet",
                             sort=lambda r: (_REJECT_ORDER.get(r.stage, 99), r.record_id, r.reason))
        funnel = {
            "problems": len(problems), "rollouts": len(rollout_rows),
            "failed_rollouts": sum(r.failed for r in rollout_rows), "candidates": len(cand_rows),
            "parsed_candidates": len(rows), "leaked": sum(c.parse_status == "answer_leak" for c in cand_rows),
            "checked": len(check.results), "accepted": sum(r.accepted for r in rows), "sft_rows": len(sft),
            "rejects": len(ex.rejects),
        }
        if spec.rollout.keep == "hard":
            funnel = {"problems": funnel["problems"], "rollouts": funnel["rollouts"], "hard_problems": len(hard),
                      **{k: v for k, v in funnel.items() if k not in ("problems", "rollouts")}}
        stats = {"funnel": funnel, "tokens": ex.ledger,
                 # per source: problems sampled, solved, pass@k (docs/hard-pool.md)
                 "pass_at_k": rollout.pass_at_k({p.problem_id: p.source for p in problems}),
                 "rollout_verdicts": dict(sorted(Counter(r.verdict for r in rollout_rows).items())),
                 "parse_status": dict(sorted(Counter(c.parse_status for c in cand_rows).items())),
                 "check_stopped": dict(sorted(Counter(r.check_stopped for r in rows if r.check_stopped).items())),
                 # faithful mode checks only the first parsed candidate per rollout (docs/faithful.md, item 3):
                 # the check continuations it did not send, r per parsed candidate left unchecked
                 "check_requests_not_sent": check.requests_not_sent,
                 "grading": {"cache_hits": grader.hits, "cache_misses": grader.misses},
                 "reused_samples": sum(st.from_store for st in ex.stages.values()),
                 "ledger": ledger(out, ex.stages, engines=len(engines), span=ex.engine_span),
                 "failed_requests": {k: st.failed + st.aborted for k, st in ex.stages.items()},
                 "rejected_requests": {k: st.rejected for k, st in ex.stages.items()},
                 # per engine: wall seconds spent at each number of requests in flight (index) while requests
                 # were still to come (docs/architecture.md, "Occupancy")
                 "in_flight_seconds": {k: [round(v, 3) for v in h] for k, h in ex.occupancy().items()}}
        if hint is not None:  # the paper's hint table (docs/hints.md); intgen eval lift --hints prints it
            stats["conditions"] = {"hint_fraction": spec.hint.fraction,
                                   "table": condition_table([asdict(r) for r in rows])}
        write_stats(out, stats)
        failed = ex.failed_requests
        manifest("complete" if failed == 0 else "incomplete")
        return RunResult(out, funnel, stats, complete=failed == 0, failed=failed)
    finally:
        store.close()
        if not grader_given:
            grader.close()
        if close:
            for b in engines:
                await b.close()


def run_job(spec: JobSpec, out_dir: str | Path, spec_dir: Path | None = None, backend: Engines | None = None,
            proposer_backend: Engines | None = None, progress: bool = True, grader: GradingPool | None = None,
            shard: Shard | None = None) -> RunResult:
    """Run a whole job and write its run directory (docs/architecture.md; docs/architecture.md).

    Grading workers (and vLLM's engine) are started with ``spawn``, so a script that
    calls this needs the ``if __name__ == "__main__":`` guard (Python's multiprocessing
    docs, "Safe importing of main module").

    Args:
        spec: the validated job spec.
        out_dir: the run directory; a run there made with the same spec is resumed: samples
            answered before come from its store, the rest are generated.
        spec_dir: the spec file's folder, for relative paths in the spec.
        backend / proposer_backend: ready backends, or lists of them (one per engine; tests
            inject the fake); by default ``executor.engines`` of each, built from the spec
            (:func:`intgen.backends.make_engines`). The proposer defaults to the policy's engines.
        progress: show a tqdm bar per stage.
        grader: a grading pool to use (and leave open); by default one from ``spec.grading``.
        shard: run only this shard's problems (:mod:`intgen.shards`; ``--shard i/N``).

    Raises:
        FileNotFoundError: a source file or the prompt file is missing.
        UnknownModelError: the model name is unknown.
        BackendError: the backend cannot be built, cannot start, or cannot continue a turn
            for the check stage (refused before any model call).
        ResumeError: ``out_dir`` holds a run made with a spec that differs in a way that
            can change results.
        FileExistsError: ``out_dir`` is a file.
        RunDirError: ``out_dir`` is a folder that is not an intgen run and not empty, or
            another intgen process is working in it.
        ShardError: ``out_dir`` holds another shard than ``shard`` (or a shard when none
            is asked, or an unsharded run when one is).
    """
    return asyncio.run(run_job_async(spec, out_dir, spec_dir, backend, proposer_backend, progress, grader=grader,
                                     shard=shard))
