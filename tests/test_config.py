"""The job spec: validation, overrides, errors naming keys, the faithful preset, the CLI."""

from pathlib import Path

import pytest

from intgen.cli import main
from intgen.config import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
BASE = {"source": {"path": "x.jsonl"}}


def test_defaults_are_the_papers():
    spec = load_spec(None, data=BASE)
    assert (spec.sampling.temperature, spec.sampling.top_p, spec.sampling.top_k, spec.sampling.max_tokens) == (0.7, 0.8, 20, 16384)
    assert (spec.rollout.k, spec.propose.m, spec.check.r, spec.accept.min_correct) == (4, 4, 32, 1)
    assert spec.baseline.for_ == "accepted" and spec.select.per_rollout == "best" and spec.system_prompt is None
    assert spec.check.early_stop is False and spec.faithful is False


def test_dotted_overrides_are_typed():
    spec = load_spec(None, ["check.r=8", "sampling.temperature=1.0", "backend.kind=fake", "baseline.for=all",
                            "system_prompt=Box it."], data=BASE)
    assert spec.check.r == 8 and spec.sampling.temperature == 1.0 and spec.backend.kind == "fake"
    assert spec.baseline.for_ == "all" and spec.system_prompt == "Box it."


@pytest.mark.parametrize("overrides,message", [
    (["check.rr=3"], "check.rr: unknown key"),
    (["sampling.top_p=abc"], "sampling.top_p"),
    (["rollout.k=0"], "rollout.k"),
    (["backend.kind=tgi"], "backend.kind"),
    (["select.per_rollout=worst"], "select.per_rollout"),
    (["nonsense"], "expected key=value"),
    (["source.dataset=foo"], "exactly one of source.path"),
])
def test_bad_specs_name_the_key(overrides, message):
    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        load_spec(None, overrides, data=BASE)


def test_faithful_preset_and_its_conflicts():
    assert load_spec(None, ["faithful=true"], data=BASE).select.per_rollout == "first"
    with pytest.raises(SpecError, match="select.per_rollout"):
        load_spec(None, ["faithful=true", "select.per_rollout=best"], data=BASE)
    with pytest.raises(SpecError, match="check.early_stop"):
        load_spec(None, ["faithful=true", "check.early_stop=true"], data=BASE)


def test_shipped_pipelines_validate():
    demo = load_spec(ROOT / "pipelines" / "demo.yaml")
    assert demo.model == "smollm2-135m-instruct" and demo.backend.max_model_len == 8192
    assert "boxed" in demo.system_prompt and len(demo.sources) == 1
    paper = load_spec(ROOT / "pipelines" / "int-paper.yaml")
    assert paper.faithful and paper.select.per_rollout == "first" and paper.check.r == 32
    assert paper.model == "Qwen/Qwen3-4B-Instruct-2507"


def test_fingerprint_changes_with_results_relevant_keys():
    a = load_spec(None, data=BASE).fingerprint()
    assert a == load_spec(None, data=BASE).fingerprint()
    assert a != load_spec(None, ["check.r=8"], data=BASE).fingerprint()


def test_cli_dry_run_prints_the_funnel(tmp_path, capsys):
    rc = main(["generate", str(ROOT / "pipelines" / "demo.yaml"), "--out", str(tmp_path / "run"), "--quiet",
               "--limit", "2", "backend.kind=fake", "check.r=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "funnel:" in out and "problems           2" in out
    assert (tmp_path / "run" / "interventions.parquet").exists()
    # the same run directory with a result-changing spec is refused, naming the key
    rc = main(["generate", str(ROOT / "pipelines" / "demo.yaml"), "--out", str(tmp_path / "run"), "--quiet",
               "--limit", "2", "backend.kind=fake", "check.r=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "check.r: 2 -> 3" in err
    # with the same spec it resumes (here: nothing left to do)
    rc = main(["generate", str(ROOT / "pipelines" / "demo.yaml"), "--out", str(tmp_path / "run"), "--quiet",
               "--limit", "2", "backend.kind=fake", "check.r=2", "grading.workers=1"])
    assert rc == 0 and "resuming the run" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["generate", "missing.yaml"], "job spec not found: missing.yaml"),
    (["generate", str(ROOT / "pipelines" / "demo.yaml"), "backend.kind=fake", "model=smollm3"], "model 'smollm3'"),
    (["generate", str(ROOT / "pipelines" / "demo.yaml"), "backend.kind=fake", "check.rr=1"], "check.rr: unknown key"),
    (["generate", str(ROOT / "pipelines" / "demo.yaml"), "backend.kind=fake", "source.0.path=nope.jsonl"], "nope.jsonl not found"),
])
def test_cli_errors_say_what_to_fix(tmp_path, capsys, args, message):
    assert main(args + ["--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
