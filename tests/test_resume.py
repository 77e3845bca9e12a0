"""Resume after a crash (issue 6): SIGKILL the run at 10 points, resume, and get exactly
the uninterrupted run's tables, with no answered sample requested again."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from intgen.commands.inspect import describe_run
from intgen.config import load_spec
from intgen.resume import ResumeError, check_resume
from intgen.runner import run_job
from test_pipeline import PROBLEMS

CHILD = Path(__file__).resolve().parent / "resume_child.py"
TABLES = ["problems", "rollouts", "candidates", "continuations", "interventions", "sft", "rejects"]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    lines = [json.dumps(p) for p in PROBLEMS]
    lines.insert(3, "{broken json")
    path.write_text("\n".join(lines) + "\n")
    return path


def child(out, problems_file, log, kill):
    return subprocess.run([sys.executable, str(CHILD), str(out), str(problems_file), str(log), kill],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, problems_file):
    base = tmp_path_factory.mktemp("ref")
    done = child(base / "run", problems_file, base / "calls.log", "none")
    assert done.returncode == 0, done.stderr
    calls = (base / "calls.log").read_text().split()
    return base / "run", calls


def read(run, name):
    return pq.read_table(run / f"{name}.parquet")


@pytest.mark.parametrize("kill", [
    "calls:2", "calls:5", "calls:8", "calls:15",  # early: rollouts, solve turns and proposals in flight
    "calls:30", "calls:45", "calls:52",          # later: checks and baselines in flight
    "after:rollouts.parquet",        # every model call answered, tables being written
    "after:continuations.parquet",
    "during:interventions.parquet",  # during the final write
])
def test_kill_and_resume_gives_the_uninterrupted_tables(tmp_path, problems_file, reference, kill):
    ref_run, ref_calls = reference
    out, log = tmp_path / "run", tmp_path / "calls.log"
    killed = child(out, problems_file, log, kill)
    assert killed.returncode == -9, killed.stderr
    before = log.read_text().split()
    resumed = child(out, problems_file, log, "none")
    assert resumed.returncode == 0, resumed.stderr
    calls = log.read_text().split()
    after = calls[len(before):]
    # what a kill loses: the samples of the store's uncommitted group and those in flight
    # (resume_child.py: groups of 4, a window of 2)
    from resume_child import GROUP, WINDOW
    assert len(set(before[:-1]) & set(after)) <= GROUP + WINDOW
    assert sorted(set(calls)) == sorted(ref_calls)
    for name in TABLES:
        assert read(out, name).equals(read(ref_run, name)), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["resumed"] is True


def test_truncated_stage_file_is_detected_and_redone(tmp_path, problems_file, reference):
    ref_run, _ = reference
    out, log = tmp_path / "run", tmp_path / "calls.log"
    assert child(out, problems_file, log, "none").returncode == 0
    data = (out / "rollouts.parquet").read_bytes()
    (out / "rollouts.parquet").write_bytes(data[: len(data) // 2])
    (out / "interventions.parquet").write_bytes(b"")
    report = describe_run(out)
    assert "unreadable" in str(report["stages"]["rollout"]["rows"])
    assert "unreadable" in str(report["stages"]["select"]["rows"])
    n = len(log.read_text().split())
    assert child(out, problems_file, log, "none").returncode == 0
    assert len(log.read_text().split()) == n  # everything came from the sample store
    for name in TABLES:
        assert read(out, name).equals(read(ref_run, name)), name


def test_disk_full_stops_cleanly_and_resumes(tmp_path, problems_file, reference, monkeypatch, grader):
    import errno

    import test_pipeline
    from intgen import tables
    from intgen.backends.fake import FakeBackend

    ref_run, _ = reference
    spec = test_pipeline.make_spec(problems_file, "grading.workers=1")

    def script(request):
        reply = test_pipeline.script(request)
        return "no tag here" if isinstance(reply, Exception) else reply

    original = tables._atomic_write

    def full(path, write):
        if Path(path).name == "continuations.parquet":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, write)

    monkeypatch.setattr(tables, "_atomic_write", full)
    with pytest.raises(OSError, match="No space left"):
        run_job(spec, tmp_path / "run", backend=FakeBackend(script), progress=False, grader=grader)
    assert not (tmp_path / "run" / "continuations.parquet").exists()
    assert not list((tmp_path / "run").glob(".continuations*"))  # no half-written file left behind
    monkeypatch.setattr(tables, "_atomic_write", original)
    backend = FakeBackend(script)
    run_job(spec, tmp_path / "run", backend=backend, progress=False, grader=grader)
    assert backend.calls == []  # every sample came from the store
    for name in TABLES:
        assert read(tmp_path / "run", name).equals(read(ref_run, name)), name


def test_spec_changes_that_change_results_are_refused_by_key():
    base = load_spec(None, data={"source": {"path": "x.jsonl"}}).resolved()
    with pytest.raises(ResumeError, match=r"sampling\.temperature: 0\.7 -> 1\.0"):
        check_resume(base, load_spec(None, ["sampling.temperature=1.0"], data={"source": {"path": "x.jsonl"}}).resolved())
    assert check_resume(base, load_spec(None, ["backend.concurrency=8", "grading.workers=3"],
                                        data={"source": {"path": "x.jsonl"}}).resolved()) == [
        "backend.concurrency", "grading.workers"]
    limited = load_spec(None, ["limit=5"], data={"source": {"path": "x.jsonl"}}).resolved()
    assert check_resume(limited, load_spec(None, ["limit=9"], data={"source": {"path": "x.jsonl"}}).resolved()) == ["limit"]
    with pytest.raises(ResumeError, match="limit: 5 -> 3"):
        check_resume(limited, load_spec(None, ["limit=3"], data={"source": {"path": "x.jsonl"}}).resolved())


def test_larger_limit_extends_the_run(tmp_path, problems_file, grader):
    import test_pipeline
    from intgen.backends.fake import FakeBackend

    def script(request):
        reply = test_pipeline.script(request)
        return "no tag here" if isinstance(reply, Exception) else reply

    first = FakeBackend(script)
    run_job(test_pipeline.make_spec(problems_file, "limit=1"), tmp_path / "run", backend=first, progress=False,
            grader=grader)
    assert {r["problem_id"] for r in read(tmp_path / "run", "problems").to_pylist()} == {"p1"}
    second = FakeBackend(script)
    result = run_job(test_pipeline.make_spec(problems_file, "limit=3"), tmp_path / "run", backend=second,
                     progress=False, grader=grader)
    assert result.funnel["problems"] == 3
    assert not any(r.meta["problem_id"] == "p1" for r in second.calls)  # p1's samples came from the store
    assert any(r.meta["problem_id"] == "p2" for r in second.calls)


def test_inspect_counts_check_and_baseline_rows_apart(reference):
    """check and baseline share continuations.parquet; inspect counts each stage's own rows."""
    ref_run, _ = reference
    kinds = pq.read_table(ref_run / "continuations.parquet", columns=["kind"]).column("kind").to_pylist()
    stages = describe_run(ref_run)["stages"]
    assert stages["check"]["rows"] == kinds.count("check") > 0
    assert stages["baseline"]["rows"] == kinds.count("baseline") > 0
