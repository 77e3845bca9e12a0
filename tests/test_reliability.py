"""Nothing lost, nothing silent (issue 13): foreign folders, concurrent runs, damaged
files, incomplete runs and bad spec values."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import test_pipeline
from intgen.backends.fake import FakeBackend
from intgen.cli import main
from intgen.config import SpecError, load_spec
from intgen.runner import run_job

ROOT = Path(__file__).resolve().parent.parent


def _clean_script(request):
    reply = test_pipeline.script(request)
    return "no tag here" if isinstance(reply, Exception) else reply


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in test_pipeline.PROBLEMS) + "\n")
    return path


def test_out_that_is_not_a_run_is_refused_and_left_alone(tmp_path, problems_file, grader):
    out = tmp_path / "mine"
    (out / "export").mkdir(parents=True)
    (out / "export" / "notes.txt").write_text("my notes")
    (out / "stats.json").write_text('{"mine": 1}')
    from intgen.rundir import RunDirError

    with pytest.raises(RunDirError, match="not an intgen run"):
        run_job(test_pipeline.make_spec(problems_file), out, backend=FakeBackend(_clean_script), progress=False,
                grader=grader)
    assert (out / "export" / "notes.txt").read_text() == "my notes"
    assert json.loads((out / "stats.json").read_text()) == {"mine": 1}
    assert sorted(p.name for p in out.iterdir()) == ["export", "stats.json"]


def test_the_cli_names_the_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("x")
    assert main(["generate", str(ROOT / "pipelines" / "demo-datasets.yaml"), "backend.kind=fake", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "data.csv" in err
    assert [p.name for p in out.iterdir()] == ["data.csv"]


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, problems_file, grader):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from intgen.rundir import run_lock\n"
        "with run_lock(Path(sys.argv[1]), 'generate'):\n"
        "    print('held', flush=True); time.sleep(60)\n"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from intgen.rundir import RunDirError

        backend = FakeBackend(_clean_script)
        with pytest.raises(RunDirError, match=f"in use by process {holder.pid} on "):
            run_job(test_pipeline.make_spec(problems_file), out, backend=backend, progress=False, grader=grader)
        assert backend.calls == []
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process: the folder is free again
    result = run_job(test_pipeline.make_spec(problems_file), out, backend=FakeBackend(_clean_script), progress=False,
                     grader=grader)
    assert result.complete


def test_a_garbage_sample_store_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["generate", str(ROOT / "pipelines" / "demo-datasets.yaml"), "backend.kind=fake", "--out", str(out), "--quiet",
            "--limit", "2"]
    assert main(args) == 0
    (out / "samples.sqlite").write_bytes(b"this is not a database" * 100)
    for extra in ("samples.sqlite-wal", "samples.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out / 'samples.sqlite'} is not an intgen sample store" in err


def test_export_cleans_what_a_killed_export_left_and_names_a_corrupt_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", str(ROOT / "pipelines" / "demo-datasets.yaml"), "backend.kind=fake", "--out", str(out),
                 "--quiet", "--limit", "2"]) == 0
    (out / ".export.tmp-abc123").mkdir()
    (out / ".export.old-4242").mkdir()
    (out / ".export.tmp-abc123" / "partial.parquet").write_bytes(b"x")
    assert main(["export", str(out)]) == 0
    assert not list(out.glob(".export.*"))
    (out / "interventions.parquet").write_bytes(b"PAR1 broken")
    capsys.readouterr()
    assert main(["export", str(out)]) == 2
    err = capsys.readouterr().err
    assert "interventions.parquet cannot be read" in err and "Traceback" not in err


def test_export_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", str(ROOT / "pipelines" / "demo-datasets.yaml"), "backend.kind=fake", "--out", str(out),
                 "--quiet", "--limit", "2"]) == 0
    (out / "export" / "my-analysis.ipynb").write_text("{}")
    (out / "export" / ".intgen-export").unlink()
    assert main(["export", str(out)]) == 2
    assert "my-analysis.ipynb" in capsys.readouterr().err
    assert (out / "export" / "my-analysis.ipynb").exists()


def test_an_incomplete_run_exits_non_zero_and_is_not_exported(tmp_path, problems_file, capsys, monkeypatch):
    """test_pipeline's script fails one proposer request (a server that hung up)."""
    import yaml

    import intgen.runner

    monkeypatch.setattr(intgen.runner, "make_backend", lambda spec, model: FakeBackend(test_pipeline.script))
    spec = test_pipeline.make_spec(problems_file)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.resolved()))
    out = tmp_path / "run"
    assert main(["generate", str(job), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "incomplete: 1 requests failed" in err and f"intgen generate {job} --out {out}" in err
    assert not (out / "export").exists()
    assert main(["export", str(out), "--allow-partial"]) == 0
    card = (out / "export" / "README.md").read_text()
    assert "**Partial dataset.**" in card and "1 requests failed" in card


@pytest.mark.parametrize("override, message", [
    ("rollout.k=true", "rollout.k: expected a number, got true"),
    ("sampling.temperature=false", "sampling.temperature: expected a number, got false"),
    ("name=../../x", "name: '../../x' is not a run name"),
    ("name=/tmp/x", "is not a run name"),
])
def test_spec_values_that_were_read_wrongly_are_refused(override, message):
    with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_spec(None, [override], data={"source": {"path": "x.jsonl"}})


def test_an_empty_source_list_is_refused():
    with pytest.raises(SpecError, match="give at least one source"):
        load_spec(None, data={"source": []})
