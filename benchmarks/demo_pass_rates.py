"""How often the demo's model solves each problem of a file: the measurement behind the
demo's choice of problems (data/demo/README.md, "The demo's problems").

    .venv/bin/python benchmarks/demo_pass_rates.py data/demo/word_problems_24.jsonl gsm8k --k 8

Samples k rollouts per problem with the demo spec's model, system prompt and sampling on
vLLM (seeds 1000 + i), grades each with intgen's grader, and prints per problem the counts
of correct / wrong / no_answer, then a last line ``solved at least once: S of N problems``.
About 4 minutes for 24 problems at k = 8 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("adapter", choices=["gsm8k", "math", "generic"])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--spec", default="demo", help="the job spec whose model, system prompt and sampling are used")
    ap.add_argument("--json", help="also write the verdicts per problem to this file")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from vllm import LLM, SamplingParams

    from intgen.config import load_spec
    from intgen.grading import grade_answer
    from intgen.models import materialize
    from intgen.resources import job_spec
    from intgen.sources import load_source

    spec = load_spec(str(job_spec(args.spec)))
    problems, _ = load_source(path=args.path, adapter=args.adapter)
    # the CPU build's seeded sampling needs whole prefills (see intgen.backends.vllm)
    llm = LLM(model=materialize(spec.model), dtype="bfloat16", max_model_len=4096, enforce_eager=True, seed=0,
              enable_prefix_caching=True, enable_chunked_prefill=False, max_num_batched_tokens=8192)
    s = spec.sampling
    chats, owners = [], []
    for p in problems:
        for _ in range(args.k):
            system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
            chats.append(system + [{"role": "user", "content": p.problem}])
            owners.append(p)
    params = [SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
                             seed=1000 + i) for i in range(len(chats))]
    start = time.time()
    outputs = llm.chat(chats, params, use_tqdm=False)
    verdicts: dict[str, list[str]] = {}
    for p, out in zip(owners, outputs):
        c = out.outputs[0]
        verdicts.setdefault(p.problem_id, []).append(grade_answer(p.gold_answer, c.text, c.finish_reason).status)
    print(f"{len(chats)} rollouts in {time.time() - start:.0f} s")
    for pid, vs in verdicts.items():
        n = Counter(vs)
        print(f"{pid}\tcorrect {n['correct']}\twrong {n['wrong']}\tno_answer {n['no_answer']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(verdicts, f, indent=1)
    solved = sum(1 for vs in verdicts.values() if "correct" in vs)
    print(f"solved at least once: {solved} of {len(verdicts)} problems")
