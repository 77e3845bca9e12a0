"""``intgen plan``: requests, tokens, GPU-hours and price of a job before any model call
(:mod:`intgen.plan`; docs/plan.md)."""

from __future__ import annotations

import argparse
import json
import sys


def _number(text: str) -> float | None:
    return None if text in ("null", "none") else float(text)


def run(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import asdict

    from intgen.backends import make_backend
    from intgen.config import SimSpec, SpecError, load_spec
    from intgen.plan import Engine, Funnel, format_plan, make_plan, measured_funnel
    from intgen.prompts import PromptError, load_prompt
    from intgen.resources import job_spec
    from intgen.rundir import load_problems, resolve_spec_paths
    from intgen.sources import SourceError

    class _Rejects:
        def reject(self, *a, **k) -> None:
            pass

    overrides = list(args.overrides) + ([f"limit={args.limit}"] if args.limit is not None else [])
    try:
        job = job_spec(args.job)
        spec = resolve_spec_paths(load_spec(job, overrides), job.resolve().parent)
        prompt = load_prompt(spec.propose.prompt)
        problems = load_problems(spec, _Rejects())
        funnel = measured_funnel(args.from_run) if args.from_run else Funnel.from_sim(SimSpec())
        funnel = funnel.with_overrides({k: _number(v) for k, v in (s.split("=", 1) for s in args.set)})
    except (SpecError, FileNotFoundError, PromptError, SourceError, KeyError, ValueError) as e:
        print(f"intgen plan: {e}", file=sys.stderr)
        return 2
    engine = Engine.from_sim(spec.backend.sim)
    if args.tokens_per_s:
        engine = Engine(args.tokens_per_s, args.prefill_ms if args.prefill_ms is not None else engine.prefill_ms_per_token,
                        "given")
    policy = make_backend(spec.backend, spec.model)
    proposer = make_backend(spec.proposer_backend, spec.proposer_model) if spec.proposer.backend or spec.proposer.model else policy
    counted = "the model's tokenizer"
    for b in {id(policy): policy, id(proposer): proposer}.values():
        if spec.backend.kind in ("fake", "sim"):
            counted = f"the {spec.backend.kind} backend's counts"
            continue
        if spec.backend.kind == "openai":
            counted = "estimates (4 characters a token)"
            b.count_prompt_tokens = lambda messages, continue_final=False: sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)
            continue
        try:
            asyncio.run(b.prepare())
        except Exception as e:  # noqa: BLE001  (no tokenizer here: estimate)
            counted = f"estimates (4 characters a token; the tokenizer did not load: {type(e).__name__})"
            b.count_prompt_tokens = lambda messages, continue_final=False: sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)
    plan = make_plan(spec, problems, prompt, policy, proposer, funnel, engine, args.gpu_hour_price, args.price_in,
                     args.price_out)
    plan.counted_with = counted
    if args.json:
        print(json.dumps(asdict(plan), indent=2))
        return 0
    print(format_plan(plan))
    print(f"  prompt tokens counted with {counted}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="before any model call: requests, tokens, GPU-hours and price of a job, per stage")
    p.add_argument("job", help="the job spec: a YAML file or a bundled spec's name")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the spec, as for intgen generate")
    p.add_argument("--limit", type=int, help="number of problems")
    p.add_argument("--from-run", metavar="DIR", help="take the funnel (rates, output lengths) from a finished run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set one funnel value, e.g. --set p_failed=0.95 --set continuation_tokens=7000 "
                        "(keys: docs/plan.md)")
    p.add_argument("--tokens-per-s", type=float, help="your engine's decode throughput at a full batch "
                                                       "(default: the simulated engine's, Qwen3-4B on one H100)")
    p.add_argument("--prefill-ms", type=float, help="its prefill cost per uncached prompt token, ms")
    p.add_argument("--gpu-hour-price", type=float, help="price of one GPU-hour")
    p.add_argument("--price-in", type=float, help="price per million prompt tokens (an API)")
    p.add_argument("--price-out", type=float, help="price per million output tokens (an API)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)
