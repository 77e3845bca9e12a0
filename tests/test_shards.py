"""Sharded runs and intgen merge (issue 16, docs/scale.md): shards 0/3, 1/3, 2/3 merged equal
the unsharded run (tables, funnel, token counts), the merged run resumes from its merged
store without sending anything, and a missing, foreign or incomplete shard is an error
naming it."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import test_pipeline
from intgen.backends.fake import FakeBackend
from intgen.cli import main
from intgen.config import load_spec
from intgen.runner import run_job
from intgen.shards import Shard, ShardError, merge_runs, shard_of

ROOT = Path(__file__).resolve().parent.parent
TABLES = ["problems", "rollouts", "candidates", "continuations", "interventions", "sft", "rejects"]
SORT = {"problems": ["problem_id"], "rollouts": ["rollout_id"], "candidates": ["candidate_id"],
        "continuations": ["continuation_id"], "interventions": ["candidate_id"], "sft": ["candidate_id"],
        "rejects": ["stage", "record_id", "reason"]}


def demo_spec(*overrides):
    return load_spec(ROOT / "pipelines" / "demo-datasets.yaml",
                     ["backend.kind=fake", "grading.workers=1", "limit=40", "source.0.limit=20", "source.1.limit=20",
                      "rollout.k=4", "propose.m=2", "check.r=4", *overrides])


def assert_same_run(a: Path, b: Path):
    for name in TABLES:
        ta, tb = pq.read_table(a / f"{name}.parquet"), pq.read_table(b / f"{name}.parquet")
        assert ta.num_rows == tb.num_rows, name
        # equal after the canonical sort, and in fact in the same (canonical) order
        assert ta.sort_by([(c, "ascending") for c in SORT[name]]).equals(
            tb.sort_by([(c, "ascending") for c in SORT[name]])), name
        assert ta.equals(tb), name
    sa, sb = (json.loads((x / "stats.json").read_text()) for x in (a, b))
    assert sa["funnel"] == sb["funnel"]
    for kind, led in sa["tokens"].items():
        for key in ("samples", "prompt_tokens", "completion_tokens"):
            assert sb["tokens"][kind][key] == led[key], (kind, key)
    for key in ("rollout_verdicts", "parse_status", "failed_requests"):
        assert sa[key] == sb[key], key
    for stage, st in sa["ledger"]["stages"].items():
        assert sb["ledger"]["stages"][stage]["requests"] == st["requests"]


def test_shards_merged_equal_the_unsharded_run(tmp_path, grader):
    spec = demo_spec()
    spec_dir = ROOT / "pipelines"
    whole = run_job(spec, tmp_path / "whole", spec_dir=spec_dir, progress=False, grader=grader)
    assert whole.funnel["problems"] == 40 and whole.funnel["accepted"] > 0
    sizes = []
    for i in range(3):
        r = run_job(spec, tmp_path / f"shard-{i}", spec_dir=spec_dir, progress=False, grader=grader, shard=Shard(i, 3))
        assert r.complete
        manifest = json.loads((tmp_path / f"shard-{i}" / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["shard"] == {"index": i, "count": 3}
        sizes.append(r.funnel["problems"])
    assert sum(sizes) == 40 and all(sizes)  # a partition, every shard with work
    # the command line, shards given out of order
    assert main(["merge", str(tmp_path / "shard-2"), str(tmp_path / "shard-0"), str(tmp_path / "shard-1"),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = tmp_path / "merged"
    assert_same_run(tmp_path / "whole", merged)
    assert (merged / "export" / "README.md").exists()
    m = json.loads((merged / "manifest.json").read_text())
    assert m["status"] == "complete" and [x["shard"]["index"] for x in m["merged_from"]] == [0, 1, 2]
    stats = json.loads((merged / "stats.json").read_text())
    assert len(stats["ledger"]["sessions"]) == 3  # every shard's engine time is kept
    shard_samples = sum(json.loads((tmp_path / f"shard-{i}" / "stats.json").read_text())["reused_samples"] +
                        sum(json.loads((tmp_path / f"shard-{i}" / "manifest.json").read_text())["stages"][s]["sent"]
                            for s in m["stages"]) for i in range(3))
    assert sum(st["requests"] for st in m["stages"].values()) == shard_samples
    # the merged run resumes from its merged store: nothing is sent, the tables stay the same
    backend = FakeBackend()
    again = run_job(spec, merged, spec_dir=spec_dir, backend=backend, progress=False, grader=grader)
    assert again.complete and backend.calls == []
    assert again.stats["reused_samples"] == sum(st["requests"] - st["not_sent"] for st in m["stages"].values())
    assert_same_run(tmp_path / "whole", merged)


def test_load_rejects_are_kept_once(tmp_path, grader):
    """test_pipeline's problems: a broken line, an unparseable and a missing gold answer, a
    duplicate id, failed requests; two shards merged give the unsharded rejects exactly."""
    (tmp_path / "data").mkdir()
    pf = tmp_path / "data" / "problems.jsonl"
    lines = [json.dumps(p) for p in test_pipeline.PROBLEMS]
    lines.insert(3, "{broken json")
    pf.write_text("\n".join(lines) + "\n")
    spec = test_pipeline.make_spec(pf, "grading.workers=1", "baseline.for=all")
    run_job(spec, tmp_path / "whole", backend=FakeBackend(test_pipeline.script), progress=False, grader=grader)
    for i in range(2):
        run_job(spec, tmp_path / f"s{i}", backend=FakeBackend(test_pipeline.script), progress=False, grader=grader,
                shard=Shard(i, 2))
    rejects = pq.read_table(tmp_path / "whole" / "rejects.parquet").to_pylist()
    assert {r["reason"] for r in rejects} >= {"duplicate_id", "gold_unparseable", "request_failed"}
    # the scripted request failure makes the run incomplete; merge refuses it, naming the shard
    failing = shard_of("p2", 2)
    with pytest.raises(ShardError, match=rf"shard {failing}/2 in .*s{failing} is not complete \(1 requests failed\)"):
        merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    for folder in ("whole", "s0", "s1"):  # mark them complete to compare the rest
        path = tmp_path / folder / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "status": "complete"}))
    merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert_same_run(tmp_path / "whole", tmp_path / "merged")


@pytest.fixture
def shards(tmp_path, grader):
    spec = demo_spec("limit=9", "source.0.limit=5", "source.1.limit=4", "check.r=2")
    for i in range(3):
        run_job(spec, tmp_path / f"shard-{i}", spec_dir=ROOT / "pipelines", progress=False, grader=grader,
                shard=Shard(i, 3))
    return tmp_path


def test_a_missing_shard_is_named(shards):
    with pytest.raises(ShardError, match=r"shard 1/3 missing: got 0/3 \(.*shard-0\), 2/3 \(.*shard-2\)"):
        merge_runs([shards / "shard-0", shards / "shard-2"], shards / "merged")
    with pytest.raises(ShardError, match="shard 0/3 is given twice"):
        merge_runs([shards / "shard-0", shards / "shard-0", shards / "shard-1"], shards / "merged")
    assert not (shards / "merged" / "job.yaml").exists()


def test_a_foreign_shard_is_named(shards, grader, capsys):
    foreign = demo_spec("limit=9", "source.0.limit=5", "source.1.limit=4", "check.r=3")
    run_job(foreign, shards / "other-1", spec_dir=ROOT / "pipelines", progress=False, grader=grader, shard=Shard(1, 3))
    with pytest.raises(ShardError, match=r"other-1 is a foreign shard: .*check\.r: 2 -> 3"):
        merge_runs([shards / "shard-0", shards / "other-1", shards / "shard-2"], shards / "merged")
    assert main(["merge", str(shards / "shard-0"), str(shards / "other-1"), str(shards / "shard-2"),
                 "--out", str(shards / "merged")]) == 2
    assert "foreign shard" in capsys.readouterr().err
    # an unsharded run is not a shard
    run_job(foreign, shards / "whole", spec_dir=ROOT / "pipelines", progress=False, grader=grader)
    with pytest.raises(ShardError, match=r"whole is not a shard \(no shard.json\)"):
        merge_runs([shards / "shard-0", shards / "whole"], shards / "merged")


def test_an_incomplete_shard_is_named(shards):
    (shards / "shard-2" / "sft.parquet").unlink()
    with pytest.raises(ShardError, match=r"shard 2/3 in .*shard-2 has no sft.parquet"):
        merge_runs([shards / f"shard-{i}" for i in range(3)], shards / "merged")
    path = shards / "shard-1" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "running"}))
    with pytest.raises(ShardError, match=r"shard 1/3 in .*shard-1 is not complete \(it was stopped"):
        merge_runs([shards / f"shard-{i}" for i in range(3)], shards / "merged")


def test_a_shard_folder_resumes_only_as_its_shard(shards, grader):
    spec = demo_spec("limit=9", "source.0.limit=5", "source.1.limit=4", "check.r=2")
    with pytest.raises(ShardError, match=r"holds shard 0/3, not 1/3"):
        run_job(spec, shards / "shard-0", spec_dir=ROOT / "pipelines", progress=False, grader=grader, shard=Shard(1, 3))
    with pytest.raises(ShardError, match=r"holds shard 0/3; resume it with --shard 0/3"):
        run_job(spec, shards / "shard-0", spec_dir=ROOT / "pipelines", progress=False, grader=grader)
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ShardError, match="expected i/N"):
            Shard.parse(bad)
    assert Shard.parse(" 2 / 8 ") == Shard(2, 8)
