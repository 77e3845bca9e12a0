"""``intgen plan``: what a job will cost before any model call (docs/plan.md).

The plan counts the requests of each stage and their tokens from the spec (k, m, r, the
stopping rules, ``baseline.for``), the problems themselves (their prompts counted with the
backend's own tokenizer where it can be loaded without a model call, else estimated at 4
characters a token), and a *funnel*: how often a rollout fails, a proposer output parses,
a candidate succeeds, and how long outputs are. The funnel defaults to the simulated
engine's (the paper's figures, :class:`intgen.config.SimSpec`), can be set key by key, or
is measured from a finished run (:func:`measured_funnel`).

Expected values, stage by stage (docs/plan.md has the formulas): rollouts = problems x k
(exact); failed = rollouts x p_failed; solve turns = failed (a prompt with a solve turn);
proposer samples = failed x m; checked = proposer samples x p_parse (faithful mode, which
checks the first parsed candidate of a rollout only: failed x (1 - (1 - p_parse)^m)); continuations =
checked x the mean samples drawn (the check stage's own stopping rule replayed on 20,000
simulated candidates, :func:`intgen.stages.check.replay_stopping`); accepted = checked x
the share accepted; baselines = accepted (or checked, for ``baseline.for: all``) x
baseline_share x r. Output tokens are requests x the mean of a lognormal length cut at
``sampling.max_tokens``. GPU time is output tokens over an engine's decode throughput plus
prompt tokens not in the prefix cache times its prefill cost (by default the simulated
engine's: 8,000 tokens/s, 0.02 ms a token: Qwen3-4B on one H100).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from intgen.backends.base import Backend
from intgen.config import JobSpec, SimSpec
from intgen.prompts import ProposerPrompt
from intgen.sources import Problem
from intgen.stages.check import replay_stopping
from intgen.stages.propose import proposer_chat
from intgen.stages.rollout import policy_messages

#: the stages a plan counts, in pipeline order
STAGES = ("rollout", "solve", "propose", "check", "baseline")


@dataclass
class Funnel:
    """The rates and lengths a plan assumes (module docstring); defaults: the paper's funnel."""

    p_failed: float = 0.9
    p_parse: float = 0.8
    p_good: float = 0.15
    good_rate: float = 0.29
    good_rate_low: float | None = None
    baseline_share: float = 1.0  # baselines per accepted candidate (candidates share a (rollout, location))
    rollout_tokens: float = 3000.0  # median output tokens
    proposer_tokens: float = 1500.0
    continuation_tokens: float = 3000.0
    length_sigma: float = 1.3
    location_fraction: float = 0.5  # where the intervention stands in the failed trace, on average
    intervention_tokens: float = 100.0
    source: str = "defaults (the paper's funnel)"

    @classmethod
    def from_sim(cls, sim: SimSpec) -> "Funnel":
        return cls(p_failed=1 - sim.p_correct, p_parse=sim.p_parse, p_good=sim.p_good, good_rate=sim.good_rate,
                   good_rate_low=sim.good_rate_low, rollout_tokens=sim.rollout_tokens,
                   proposer_tokens=sim.proposer_tokens, continuation_tokens=sim.continuation_tokens,
                   length_sigma=sim.length_sigma)

    def with_overrides(self, items: dict[str, Any]) -> "Funnel":
        """A copy with ``items`` set (``key=value`` from the command line).

        Raises:
            KeyError: an unknown key (the message lists the keys).
        """
        names = {f.name for f in fields(self)}
        for k in items:
            if k not in names:
                raise KeyError(f"funnel key {k!r} is unknown; the keys are {', '.join(sorted(names - {'source'}))}")
        if not items:
            return self
        return Funnel(**{**asdict(self), **items, "source": self.source + " with " + ", ".join(items)})


def measured_funnel(run_dir: str | Path) -> Funnel:
    """The funnel a finished run measured: its rates, and its output lengths as lognormals
    whose sigma is that of the run's log lengths and whose means are the run's means.

    Raises:
        FileNotFoundError: a table of the run is missing.
    """
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    rollouts = pq.read_table(run_dir / "rollouts.parquet").to_pylist()
    cands = pq.read_table(run_dir / "candidates.parquet").to_pylist()
    conts = pq.read_table(run_dir / "continuations.parquet").to_pylist()
    inter = pq.read_table(run_dir / "interventions.parquet").to_pylist()
    checks = [c for c in conts if c["kind"] == "check"]
    base = [c for c in conts if c["kind"] == "baseline"]
    by_cand: dict[str, list[bool]] = {}
    for c in checks:
        by_cand.setdefault(c["candidate_id"], []).append(c["verdict"] == "correct")
    good = [v for v in by_cand.values() if any(v)]
    accepted = sum(r["accepted"] for r in inter)

    lengths = [math.log(r["completion_tokens"]) for r in rollouts + checks if r["completion_tokens"]]
    sigma = statistics.pstdev(lengths) if len(lengths) > 1 else 0.0

    def median(rows: list[dict]) -> float:
        """The median that gives the lognormal (of ``sigma``) the observed mean length."""
        values = [r["completion_tokens"] for r in rows if r["completion_tokens"]]
        return statistics.mean(values) / math.exp(sigma ** 2 / 2) if values else 1.0

    located = [r["location"] / max(1, r["num_steps"]) for r in inter]
    # a faithful run checks only the first parsed candidate of a rollout: parsed ones are not all checked
    faithful = any(r["faithful"] for r in inter)
    return Funnel(
        p_failed=sum(r["failed"] for r in rollouts) / max(1, len(rollouts)),
        p_parse=len(by_cand) / max(1, len(cands)) if checks and not faithful else
        sum(c["parse_status"] == "ok" for c in cands) / max(1, len(cands)),
        p_good=len(good) / max(1, len(by_cand)),
        good_rate=statistics.mean(sum(v) / len(v) for v in good) if good else 0.0,
        baseline_share=(len({(c["rollout_id"], c["location"]) for c in base}) / accepted) if accepted and base else 1.0,
        rollout_tokens=median(rollouts), proposer_tokens=median(cands), continuation_tokens=median(checks),
        length_sigma=sigma,
        location_fraction=statistics.mean(located) if located else 0.5,
        intervention_tokens=statistics.mean(len(r["intervention"]) / 4 for r in inter) if inter else 100.0,
        source=f"measured on {run_dir}")


def mean_length(median: float, sigma: float, cut: int) -> float:
    """E[min(X, cut)] for X lognormal with this median and sigma (tokens)."""
    if sigma <= 0:
        return min(median, cut)
    mu = math.log(median)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    return (math.exp(mu + sigma ** 2 / 2) * phi((math.log(cut) - mu - sigma ** 2) / sigma)
            + cut * (1 - phi((math.log(cut) - mu) / sigma)))


def check_draws(spec: JobSpec, funnel: Funnel, n: int = 20000, seed: int = 0) -> tuple[float, float]:
    """(mean continuations drawn per checked candidate, share accepted) under the spec's
    stopping rule, replayed on ``n`` simulated candidates."""
    c = spec.check
    rng = random.Random(seed)
    drawn = accepted = 0
    for _ in range(n):
        rate = 0.0
        if rng.random() < funnel.p_good:
            rate = rng.uniform(funnel.good_rate_low, funnel.good_rate) if funnel.good_rate_low is not None else funnel.good_rate
        verdicts = ["correct" if rng.random() < rate else "wrong" for _ in range(c.r)]
        d, _ = replay_stopping(verdicts, c.r, c.wave, spec.accept.min_correct, c.early_stop, c.give_up_after)
        drawn += d
        accepted += sum(v == "correct" for v in verdicts[:d]) >= spec.accept.min_correct
    return drawn / n, accepted / n


@dataclass
class Engine:
    """An engine's speed: decode tokens/s at a full batch, and prefill ms per uncached token."""

    tokens_per_s: float
    prefill_ms_per_token: float
    source: str

    @classmethod
    def from_sim(cls, sim: SimSpec) -> "Engine":
        full = sim.max_running * 1000.0 / (sim.step_ms + sim.step_ms_per_seq * sim.max_running)
        return cls(full, sim.prefill_ms_per_token, "the simulated engine's (Qwen3-4B on one H100 with vLLM)")


@dataclass
class Plan:
    """Requests, tokens, GPU-hours and price of a job, per stage (``plan.json``)."""

    problems: int
    stages: dict[str, dict[str, float]]
    funnel: dict[str, Any]
    engine: dict[str, Any]
    gpu_hours: float
    price: dict[str, float] = field(default_factory=dict)
    counted_with: str = ""

    def totals(self) -> dict[str, float]:
        keys = ("requests", "prompt_tokens", "uncached_prompt_tokens", "output_tokens")
        return {k: sum(s[k] for s in self.stages.values()) for k in keys}


def _sample(problems: list[Problem], n: int = 200) -> list[Problem]:
    step = max(1, len(problems) // n)
    return problems[::step][:n]


def make_plan(spec: JobSpec, problems: list[Problem], prompt: ProposerPrompt, policy: Backend, proposer: Backend,
              funnel: Funnel, engine: Engine, price_gpu_hour: float | None = None,
              price_mtok_in: float | None = None, price_mtok_out: float | None = None) -> Plan:
    """The plan of one job (module docstring).

    Args:
        spec: the job spec; problems: the problems it runs (``intgen.rundir.load_problems``).
        prompt: the proposer prompt; policy, proposer: prepared backends (their token counts).
        funnel, engine: the assumptions; prices: per GPU-hour, per million input/output tokens.
    """
    s, k, m, r = spec.sampling, spec.rollout.k, spec.propose.m, spec.check.r
    cut = s.max_tokens
    out = {"rollout": mean_length(funnel.rollout_tokens, funnel.length_sigma, cut),
           "proposer": mean_length(funnel.proposer_tokens, funnel.length_sigma, cut),
           "continuation": mean_length(funnel.continuation_tokens, funnel.length_sigma, cut)}
    sample = _sample(problems)
    P = len(problems)

    def mean(values: list[float]) -> float:
        return statistics.mean(values) if values else 0.0

    filler = lambda tokens: " ".join(["word"] * max(1, int(tokens)))  # noqa: E731  (about one token a word)
    rollout_prompt = mean([policy.count_prompt_tokens(policy_messages(p.problem, spec.system_prompt)) for p in sample])
    steps = 8
    attempt = [filler(out["rollout"] / steps) for _ in range(steps)]
    proposer_prompts = []
    for p in sample[:20]:
        values = {"problem": p.problem, "reference_solution": p.reference_solution, "gold_answer": p.gold_answer,
                  "num_steps": steps}
        solve = (prompt.render_solve(problem=p.problem, reference_solution=p.reference_solution,
                                     gold_answer=p.gold_answer), filler(out["proposer"])) if prompt.solve else None
        chat, _ = proposer_chat(prompt, values, attempt, solve, None)
        proposer_prompts.append(proposer.count_prompt_tokens(chat, prompt.response_prefix is not None))
    solve_prompt = mean([proposer.count_prompt_tokens(({"role": "user", "content": prompt.render_solve(
        problem=p.problem, reference_solution=p.reference_solution, gold_answer=p.gold_answer)},))
        for p in sample[:20]]) if prompt.solve else 0.0
    prefix = filler(out["rollout"] * funnel.location_fraction + funnel.intervention_tokens)
    cont_prompt = mean([policy.count_prompt_tokens(policy_messages(p.problem, spec.system_prompt, prefix), True)
                        for p in sample[:20]])

    rollouts = P * k
    failed = rollouts * funnel.p_failed
    proposals = failed * m
    # faithful mode checks only the first parsed candidate of a rollout (docs/faithful.md, item 3)
    checked = failed * (1 - (1 - funnel.p_parse) ** m) if spec.faithful else proposals * funnel.p_parse
    draws, share = check_draws(spec, funnel)
    accepted = checked * share
    base_for = {"accepted": accepted, "all": checked, "none": 0.0}[spec.baseline.for_]
    baselines = base_for * funnel.baseline_share * r
    # (requests, prompt tokens each, output tokens each, requests that share one prompt)
    rows = {"rollout": (rollouts, rollout_prompt, out["rollout"], k),
            "solve": (failed if prompt.solve else 0.0, solve_prompt, out["proposer"], 1),
            "propose": (proposals, mean(proposer_prompts), out["proposer"], m),
            "check": (checked * draws, cont_prompt, out["continuation"], max(1.0, draws)),
            "baseline": (baselines, cont_prompt, out["continuation"], r)}
    stages = {}
    for name, (n, pt, ot, shared) in rows.items():
        stages[name] = {"requests": n, "prompt_tokens": n * pt, "uncached_prompt_tokens": n * pt / shared,
                        "output_tokens": n * ot}
    stages["check"]["accepted"] = accepted
    totals = {k2: sum(v[k2] for v in stages.values()) for k2 in ("output_tokens", "uncached_prompt_tokens",
                                                                 "prompt_tokens")}
    seconds = totals["output_tokens"] / engine.tokens_per_s + totals["uncached_prompt_tokens"] * engine.prefill_ms_per_token / 1000
    plan = Plan(P, stages, asdict(funnel), asdict(engine), seconds / 3600,
                counted_with=type(policy).__name__)
    if price_gpu_hour is not None:
        plan.price["gpu_hours"] = plan.gpu_hours * price_gpu_hour
    if price_mtok_in is not None or price_mtok_out is not None:
        plan.price["tokens"] = (totals["prompt_tokens"] * (price_mtok_in or 0) + totals["output_tokens"] * (price_mtok_out or 0)) / 1e6
    return plan


def format_plan(plan: Plan, actual: dict[str, dict[str, float]] | None = None) -> str:
    """The plan as a table, with the run's measured figures beside it when given."""
    lines = [f"{plan.problems} problems; funnel: {plan.funnel['source']}; engine: {plan.engine['source']} "
             f"({plan.engine['tokens_per_s']:,.0f} tokens/s)",
             f"  {'stage':<9} {'requests':>10} {'prompt tok':>13} {'output tok':>13}" +
             (f" {'actual req':>11} {'actual out':>13}" if actual else "")]
    for name in [n for n in STAGES if n in plan.stages]:
        st = plan.stages[name]
        row = f"  {name:<9} {st['requests']:>10,.0f} {st['prompt_tokens']:>13,.0f} {st['output_tokens']:>13,.0f}"
        if actual:
            a = actual.get(name, {})
            row += f" {a.get('requests', 0):>11,.0f} {a.get('output_tokens', 0):>13,.0f}"
        lines.append(row)
    t = plan.totals()
    lines.append(f"  {'total':<9} {t['requests']:>10,.0f} {t['prompt_tokens']:>13,.0f} {t['output_tokens']:>13,.0f}"
                 + (f" {sum(a.get('requests', 0) for a in actual.values()):>11,.0f} "
                    f"{sum(a.get('output_tokens', 0) for a in actual.values()):>13,.0f}" if actual else ""))
    lines.append(f"  expected accepted interventions: {plan.stages['check']['accepted']:,.0f}")
    lines.append(f"  GPU-hours: {plan.gpu_hours:,.2f} (one engine)")
    for what, value in plan.price.items():
        lines.append(f"  price ({'per GPU-hour' if what == 'gpu_hours' else 'per million tokens'}): {value:,.2f}")
    return "\n".join(lines)
