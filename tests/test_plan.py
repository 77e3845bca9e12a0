"""``intgen plan`` (issue 14): requests and tokens before any model call, against what a
run then measures."""

import json
from pathlib import Path

import pytest

from intgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
OVER = ["backend.kind=fake", "limit=100", "source.0.limit=50", "source.1.limit=50", "rollout.k=4", "propose.m=2"]


def _plan(capsys, *args):
    assert main(["plan", "demo-datasets", *OVER, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("plan")
    for seed in (0, 1):
        assert main(["generate", "demo-datasets", *OVER, f"seed={seed}", "--out", str(base / f"seed{seed}"), "--quiet"]) == 0
    return base


def test_plan_predicts_the_rollouts_exactly_and_the_rest_from_another_runs_funnel(runs, capsys):
    plan = _plan(capsys, "seed=0", "--from-run", str(runs / "seed1"))
    stats = json.loads((runs / "seed0" / "stats.json").read_text())
    actual = stats["ledger"]["stages"]
    assert plan["problems"] == 100
    assert plan["stages"]["rollout"]["requests"] == actual["rollout"]["requests"] == 400
    for stage in ("propose", "check", "baseline"):
        for key, got in (("requests", actual[stage]["requests"]), ("output_tokens", actual[stage]["output_tokens"]),
                         ("prompt_tokens", actual[stage]["prompt_tokens"])):
            want = plan["stages"][stage][key]
            assert abs(want - got) <= 0.2 * got, (stage, key, want, got)


def test_plan_defaults_and_prices(capsys):
    plan = _plan(capsys, "--gpu-hour-price", "2", "--price-in", "0.1", "--price-out", "0.4")
    assert plan["funnel"]["source"].startswith("defaults")
    assert plan["price"]["gpu_hours"] == pytest.approx(2 * plan["gpu_hours"])
    totals = {k: sum(s[k] for s in plan["stages"].values()) for k in ("prompt_tokens", "output_tokens")}
    assert plan["price"]["tokens"] == pytest.approx((0.1 * totals["prompt_tokens"] + 0.4 * totals["output_tokens"]) / 1e6)
    # the funnel can be set key by key; an unknown key is named
    more = _plan(capsys, "--set", "p_failed=1.0")
    assert more["stages"]["propose"]["requests"] == 400 * 2
    assert main(["plan", "demo-datasets", "--set", "p_fail=1"]) == 2
    assert "p_fail" in capsys.readouterr().err


def test_inspect_shows_plan_and_actual(runs, capsys):
    assert main(["inspect", str(runs / "seed0")]) == 0
    out = capsys.readouterr().out
    assert "plan vs actual" in out and "GPU-hours" in out
