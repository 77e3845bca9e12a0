"""Writes the reference tables that tests/test_streaming.py compares the streaming
runner against (issue 12: same spec, same seeds, same tables as the stage-barrier runner).

The tables in this folder were written by this script at commit ec7eb6f (the last commit
with the stage-barrier runner), on the fake backend:

    git worktree add /tmp/base ec7eb6f
    cd /tmp/base && python tests/data/streaming_reference/make.py OUT_DIR

Exception: ``pipeline-faithful`` was rewritten by this script at issue 15 (branch issue15),
because faithful mode changed by design there (docs/faithful.md): only the first parsed
candidate of each rollout is checked (so the other candidates have no continuations and
their baselines are not drawn), and the paper's parser keeps location 0, an out-of-range
location and an empty content. Every row that differs from the ec7eb6f table was checked
to be one of those; the default-mode cases are unchanged.

Each case is one run; its tables are saved as ``CASE/NAME.parquet``. The cases are listed
in :data:`CASES` (the test reads the same list). Early stop is off in every case: with it
on, the samples drawn depend on the schedule.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent.parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

#: case name -> (problems: "pipeline" (test_pipeline's scripted problems) or "demo", overrides)
CASES = {
    "pipeline": ("pipeline", []),
    "pipeline-all-baselines": ("pipeline", ["select.per_rollout=all", "baseline.for=all"]),
    "pipeline-faithful": ("pipeline", ["faithful=true", "system_prompt=Box the answer."]),
    "demo-fake": ("demo", ["backend.kind=fake"]),
    "demo-fake-40": ("demo", ["backend.kind=fake", "limit=40", "source.0.limit=20", "source.1.limit=20",
                              "rollout.k=4", "propose.m=4", "check.r=8", "propose.prompt=prompts/int-propose.yaml"]),
}
TABLES = ["problems", "rollouts", "candidates", "continuations", "interventions", "sft", "rejects"]


def run_case(name: str, out: Path, problems_file: Path):
    import test_pipeline
    from intgen.backends.fake import FakeBackend
    from intgen.config import load_spec
    from intgen.runner import run_job

    kind, overrides = CASES[name]
    if kind == "pipeline":
        def script(request):
            reply = test_pipeline.script(request)
            return reply
        spec = test_pipeline.make_spec(problems_file, "grading.workers=1", *overrides)
        return run_job(spec, out, backend=FakeBackend(script), progress=False)
    spec = load_spec(ROOT / "pipelines" / "demo-datasets.yaml", ["grading.workers=1", "name=demo", *overrides])
    return run_job(spec, out, spec_dir=ROOT / "pipelines", progress=False)


def problems_file(folder: Path) -> Path:
    """test_pipeline's problems, written as that module's fixture writes them."""
    import json

    import test_pipeline

    (folder / "data").mkdir(parents=True, exist_ok=True)
    path = folder / "data" / "problems.jsonl"
    lines = [json.dumps(p) for p in test_pipeline.PROBLEMS]
    lines.insert(3, "{broken json")
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    import shutil
    import tempfile

    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    with tempfile.TemporaryDirectory() as tmp:
        pf = problems_file(Path(tmp))
        for case in CASES:
            run = Path(tmp) / case
            run_case(case, run, pf)
            (dest / case).mkdir(parents=True, exist_ok=True)
            for table in TABLES:
                shutil.copy(run / f"{table}.parquet", dest / case / f"{table}.parquet")
            print(case, "written")
