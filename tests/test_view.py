"""``intgen view RUN`` (issue 19, docs/view.md): a self-contained HTML page of a run.

Runs are made by the scripted fake backend. The browser tests open the page in a headless
Chromium (Debian's ``chromium``; ./setup.sh installs it where it can) and read the DOM
after the page's script ran; without a Chromium they are skipped, saying so.
"""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from intgen import tables
from intgen.backends.fake import FakeBackend, demo_script
from intgen.cli import main
from intgen.config import load_spec
from intgen.export import export_run
from intgen.runner import run_job
from intgen.view import PAGE_SIZE, ViewError, build_view_data, render_view, write_view

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium: install Debian's `chromium` "
                                                              "(./setup.sh does when run as root with apt)")

HOSTILE = '</script><img src=x onerror="document.body.dataset.owned=1"><b id="owned">bold</b>'


def demo_run(out: Path, grader, *overrides: str, backend=None) -> Path:
    spec = load_spec(str(REPO_ROOT / "pipelines" / "demo-datasets.yaml"), ["backend.kind=fake", *overrides])
    run_job(spec, out, spec_dir=REPO_ROOT / "pipelines", backend=backend, progress=False, grader=grader)
    return out


def embedded(page: str) -> dict:
    """The page's JSON data, as the browser's JSON.parse reads it."""
    m = re.search(r'<script type="application/json" id="intgen-data">(.*?)</script>', page, re.S)
    assert m, "no data element"
    return json.loads(m.group(1))


class Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text outside scripts and styles."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(page)
    return p.tags


def chromium_dom(path: Path, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran (``chromium --headless --dump-dom``)."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
                          "--dump-dom", path.resolve().as_uri()], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory, grader):
    out = demo_run(tmp_path_factory.mktemp("view") / "demo", grader)
    export_run(out)
    return out


@pytest.fixture(scope="module")
def page(run):
    path = write_view(run)
    assert path == run / "view.html"
    return path.read_text(encoding="utf-8")


def test_the_page_holds_every_parsed_candidate_with_its_intervention_and_blamed_step(run, page):
    import pyarrow.parquet as pq

    inter = pq.read_table(run / "interventions.parquet").to_pylist()
    assert inter and any(r["accepted"] for r in inter) and any(not r["accepted"] for r in inter)
    data = embedded(page)
    cards = {c["id"]: c for c in data["candidates"]}
    assert list(cards) == [r["candidate_id"] for r in inter]
    for r in inter:
        c = cards[r["candidate_id"]]
        assert c["iv"] == r["intervention"] and r["intervention"] in page
        assert c["loc"] == r["location"]
        steps = data["rollouts"][r["rollout_id"]]["steps"]
        assert steps == r["steps"] and steps[c["loc"] - 1] == r["original_step"]
        assert (c["acc"], c["why"], c["cc"], c["cs"], c["lift"]) == (r["accepted"], r["reject_reason"],
                                                                    r["check_correct"], r["check_samples"], r["lift"])
        assert data["problems"][r["problem_id"]]["gold"] == r["gold_answer"]
        assert c["prop"] == r["proposer_output"]
    # the verdicts are the continuations' in sample order
    conts = [c for c in pq.read_table(run / "continuations.parquet").to_pylist() if c["kind"] == "check"]
    first = inter[0]["candidate_id"]
    mine = sorted((c for c in conts if c["candidate_id"] == first), key=lambda c: c["sample_index"])
    assert cards[first]["cv"] == "".join({"correct": "c", "wrong": "w", "no_answer": "n", "ungradable": "u"}[c["verdict"]]
                                         for c in mine)
    # the funnel is the run's, and the plots are embedded
    stats = json.loads((run / "stats.json").read_text())
    assert {row["key"]: row["count"] for row in data["funnel"]} == stats["funnel"]
    assert page.count('src="data:image/png;base64,') == 2


def test_the_page_needs_no_network(page):
    for tag, attrs in tags(page):
        for key in ("src", "href", "srcset", "data"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http://", "https://", "//")), (tag, key, value[:80])
        assert tag not in ("link", "iframe", "object", "embed"), tag
        if tag == "script":
            assert "src" not in attrs
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert len(styles) == 2  # the page's and the math renderer's
    for style in styles:
        assert "@import" not in style
        # every url() is inline data or a fragment of an inline SVG: no file, no server
        for target in re.findall(r"url\(\s*['\"]?([^'\")\s]+)", style):
            assert target.startswith(("data:", "%23", "#")), target[:80]


def test_the_cli_writes_the_page_where_asked(run, tmp_path, capsys):
    out = tmp_path / "sub" / "page.html"
    assert main(["view", str(run), "--out", str(out), "--page-size", "10"]) == 0
    assert f"view: {out}" in capsys.readouterr().out
    assert 'value="10" selected' in out.read_text(encoding="utf-8")
    assert main(["view", str(tmp_path)]) == 2
    assert "holds no intgen run" in capsys.readouterr().err
    assert main(["view", str(run), "--out", str(tmp_path)]) == 2


def test_a_file_intgen_did_not_write_is_never_replaced(run, tmp_path):
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    with pytest.raises(ViewError, match="not a page intgen view wrote"):
        write_view(run, mine)
    assert mine.read_text() == "<html>my notes</html>"
    page = write_view(run, tmp_path / "page.html")
    assert write_view(run, page) == page  # its own page is replaced


def test_an_unfinished_run_is_shown_as_far_as_its_tables_go(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "view.html"))
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "status": "incomplete", "failed_requests": 3}))
    page = render_view(copy)
    assert "This run is <b>incomplete</b>" in page and "3 requests failed" in page
    assert "data:image/png" not in page and 'id="funnel"' in page  # no export, no plots: the bars alone
    assert len(embedded(page)["candidates"]) == len(embedded(render_view(run))["candidates"])


def test_a_run_still_in_its_first_session_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "manifest.json").write_text('{"status": "running"}')
    with pytest.raises(ViewError, match="no interventions.parquet yet.*intgen inspect"):
        build_view_data(tmp_path)


# -- model text stays text ----------------------------------------------------------------------


def hostile_script(request):
    """The demo script, with markup in every proposer intervention."""
    if request.meta.get("stage") == "propose":
        critique = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
        n = len(re.findall(r"\*\*Substep \d+:\*\*", critique))
        content = "Recheck the sum. " + HOSTILE
        return 'Log.\n<intervention>' + json.dumps({"content": content, "location": max(1, n - 1)}) + "</intervention>"
    return demo_script(request)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, grader):
    src = tmp_path_factory.mktemp("src") / "problems.jsonl"
    src.write_text("".join(json.dumps(p) + "\n" for p in [
        {"id": "x1", "problem": "What is 5 + 7? <script>document.body.dataset.owned = 1</script>",
         "reference_solution": "5 + 7 = 12. " + HOSTILE, "answer": "12"},
        {"id": "x2", "problem": "What is 2 & 3 < 4 > 1? <!-- not a comment --> "
                                "$\\href{javascript:document.body.dataset.owned=1}{click}$ and $x < y$",
         "reference_solution": "It is 4.", "answer": "4"},
    ]))
    out = tmp_path_factory.mktemp("view") / "hostile"
    spec = load_spec(None, [], data={"name": "hostile", "source": {"path": str(src), "adapter": "generic"},
                                     "model": "smollm2-135m-instruct", "backend": {"kind": "fake"},
                                     "rollout": {"k": 2}, "propose": {"m": 1}, "check": {"r": 3}})
    run_job(spec, out, backend=FakeBackend(hostile_script), progress=False, grader=grader)
    return write_view(out)


def test_model_text_is_escaped(hostile_run):
    page = hostile_run.read_text(encoding="utf-8")
    data = embedded(page)
    assert data["problems"]["x1"]["p"].endswith("<script>document.body.dataset.owned = 1</script>")
    assert any(HOSTILE in c["iv"] for c in data["candidates"])
    # the template's three scripts (data, math renderer, page) and nothing else: no markup from the model
    assert page.count("<script") == 3 and page.lower().count("</script") == 3
    assert not any(a.get("id") == "owned" or "onerror" in a or (t == "img" and a.get("src") == "x") for t, a in tags(page))
    assert "<!-- not a comment" not in page


@needs_chromium
def test_model_text_stays_text_in_a_browser(hostile_run, tmp_path):
    dom = chromium_dom(hostile_run, tmp_path)
    assert 'data-rendered="' in dom and "data-owned" not in dom
    assert "&lt;script&gt;document.body.dataset.owned = 1&lt;/script&gt;" in dom
    assert "&lt;/script&gt;&lt;img src=x" in dom
    assert '<b id="owned"' not in dom and '<img src="x"' not in dom and "&lt;b id=\"owned\"&gt;bold" in dom
    assert 'href="javascript' not in dom and "$\\href{javascript:" in dom  # an untrusted \href stays text
    assert "<math" in dom  # while $x < y$ is math


# -- in a browser -----------------------------------------------------------------------------


@needs_chromium
def test_chromium_renders_the_funnel_and_the_cards(run, page, tmp_path):
    import pyarrow.parquet as pq

    dom = chromium_dom(run / "view.html", tmp_path)
    inter = pq.read_table(run / "interventions.parquet").to_pylist()
    cards = re.findall(r'<article class="card (accepted|rejected)"[^>]*data-candidate="([^"]+)"', dom)
    assert [cid for _, cid in cards] == [r["candidate_id"] for r in inter][:PAGE_SIZE]
    assert [k == "accepted" for k, _ in cards] == [r["accepted"] for r in inter][:PAGE_SIZE]
    assert f'data-rendered="{min(len(inter), PAGE_SIZE)}"' in dom
    assert 'id="funnel"' in dom and "parsed candidates" in dom
    assert "first error (step " in dom and "intervention, in place of step " in dom
    assert inter[0]["intervention"] in dom
    # the pager counts every candidate
    assert f"of {len(inter)}" in dom


@needs_chromium
def test_the_screenshot_is_not_blank(run, page, tmp_path):
    from PIL import Image

    shot = tmp_path / "view.png"
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1600",
                          f"--screenshot={shot}", (run / "view.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    assert img.size == (1280, 1600) and colors is not None and len(colors) > 50
    # the accepted cards' green and the rejected cards' red borders are on screen
    pixels = {rgb for _, rgb in colors}
    assert (0x1f, 0x8a, 0x4c) in pixels and (0xc0, 0x39, 0x2b) in pixels


@needs_chromium
def test_math_is_rendered_unless_asked_not_to(run, page, tmp_path):
    dom = chromium_dom(run / "view.html", tmp_path)
    shown = dom[dom.index('<div id="cards">'):dom.index('id="pager-bottom"')]
    assert "<math" in shown and 'title="$\\boxed{' in shown  # each formula keeps its LaTeX as its title
    plain = write_view(run, tmp_path / "plain.html", math=False)
    page = plain.read_text(encoding="utf-8")
    assert "var temml=" not in page and page.count("<script") == 2  # no math renderer in the page
    dom = chromium_dom(plain, tmp_path)
    shown = dom[dom.index('<div id="cards">'):dom.index('id="pager-bottom"')]
    assert "<math" not in shown and "So the answer is $\\boxed{" in shown


# -- runs that went wrong, resumed runs ------------------------------------------------------


def test_a_run_that_accepted_nothing_explains_why(tmp_path, grader):
    def never_right(request):
        reply = demo_script(request)
        if request.meta.get("stage") in ("check", "baseline"):
            return "\n\nI give up.\n\nThe answer is $\\boxed{-1}$."
        return reply

    out = demo_run(tmp_path / "none", grader, backend=FakeBackend(never_right))
    page = write_view(out).read_text(encoding="utf-8")
    data = embedded(page)
    assert data["candidates"] and not any(c["acc"] for c in data["candidates"])
    assert "No intervention was accepted" in page
    assert re.search(r"<td class=\"mono\">too_few_correct</td><td class=\"num\">\d+</td>", page)
    assert "unclosed_intervention" in page  # the proposer's failures are counted too


def test_a_run_where_nothing_parsed_shows_what_the_proposer_wrote(tmp_path, grader):
    def no_tag(request):
        return "The attempt looks fine to me." if request.meta.get("stage") == "propose" else demo_script(request)

    out = demo_run(tmp_path / "unparsed", grader, backend=FakeBackend(no_tag))
    page = write_view(out).read_text(encoding="utf-8")
    assert embedded(page)["candidates"] == []
    assert "No proposer output parsed into an intervention" in page
    import pyarrow.parquet as pq

    reasons = set(pq.read_table(out / "candidates.parquet").column("parse_status").to_pylist())
    assert reasons and "ok" not in reasons and all(f'<td class="mono">{r}</td>' in page for r in reasons)
    assert "Proposer outputs that did not parse" in page and "The attempt looks fine to me." in page


def test_a_resumed_run_shows_the_same_candidates(tmp_path, grader):
    out = demo_run(tmp_path / "resumed", grader, "limit=3")
    first = embedded(render_view(out))
    demo_run(out, grader, "limit=3")  # the same command again: everything comes from the store
    again = embedded(render_view(out))
    assert again["candidates"] == first["candidates"] and again["funnel"] == first["funnel"]
    assert again["run"]["resumed"] and again["run"]["sessions"] == 2
    assert "2 sessions (resumed)" in render_view(out)


# -- 10,000 candidates -------------------------------------------------------------------------


def big_run(out: Path, n: int = 10_000, r: int = 8) -> Path:
    """A run folder with ``n`` parsed candidates (4 per failed rollout, 4 rollouts per
    problem), ``r`` check continuations each, written straight into the tables."""
    problems, rollouts, candidates, inter, conts = [], [], [], [], []
    steps = [f"Step {j}: some working with $x_{j} = {j}^2$ and words to make it a realistic length." for j in range(12)]
    for i in range(n):
        p, ro, ci = i // 16, (i // 4) % 4, i % 4
        pid, rid = f"p{p}", f"p{p}/rollout-{ro}"
        cid = f"{rid}/candidate-{ci}"
        if ci == 0 and ro == 0:
            problems.append({"problem_id": pid, "source": f"src{p % 3}", "problem": f"Problem {p}: compute it.",
                             "reference_solution": "It is 1.", "gold_answer": "1"})
        if ci == 0:
            rollouts.append({"rollout_id": rid, "problem_id": pid, "rollout_index": ro, "seed": 0,
                             "text": "\n\n".join(steps), "finish_reason": "stop", "extracted_answer": "2",
                             "verdict": "wrong", "verdict_reason": None, "failed": True, "num_steps": len(steps),
                             "prompt_tokens": 1, "completion_tokens": 1})
        loc = 1 + i % len(steps)
        correct = i % 5
        accepted = correct >= 1
        candidates.append({"candidate_id": cid, "rollout_id": rid, "problem_id": pid, "rollout_index": ro,
                           "candidate_index": ci, "seed": 0, "solve_output": None, "raw_output": "out",
                           "finish_reason": "stop", "parse_status": "ok", "parse_detail": None, "location": loc,
                           "intervention": f"Intervention number {i}.", "attempt_shortened": False,
                           "prompt_tokens": 1, "completion_tokens": 1})
        row = {f: None for f in tables.INTERVENTIONS.names}
        row.update(candidate_id=cid, accepted=accepted, reject_reason=None if accepted else "too_few_correct",
                   selected=accepted and ci == 0, check_samples=r, check_correct=correct, check_ungradable=0,
                   check_rate=correct / r, baseline_samples=0, baseline_correct=0, problem_id=pid,
                   source=f"src{p % 3}", problem=f"Problem {p}: compute it.", reference_solution="It is 1.",
                   gold_answer="1", rollout_id=rid, rollout_index=ro, rollout_seed=0, failed_trace="\n\n".join(steps),
                   failed_answer="2", failed_verdict="wrong", steps=steps, num_steps=len(steps), candidate_index=ci,
                   candidate_seed=0, location=loc, original_step=steps[loc - 1], intervention=f"Intervention number {i}.",
                   target="t", proposer_output="<intervention>...</intervention>", policy_model="m",
                   proposer_model="m", sampling="{}", prompt_name="p", prompt_sha256="0", run_seed=0, faithful=False,
                   intgen_version="0", rollout_completion_tokens=1, proposer_prompt_tokens=1,
                   proposer_completion_tokens=1, check_completion_tokens=1)
        inter.append(row)
        for s in range(r):
            conts.append({"continuation_id": f"{cid}/continuation-{s}", "kind": "check", "candidate_id": cid,
                          "rollout_id": rid, "problem_id": pid, "location": loc, "sample_index": s, "seed": 0,
                          "text": "\n\nso the answer is $\\boxed{1}$." if s < correct else "\n\nit is $\\boxed{3}$.",
                          "finish_reason": "stop", "extracted_answer": "1" if s < correct else "3",
                          "verdict": "correct" if s < correct else "wrong", "verdict_reason": None,
                          "prompt_tokens": 1, "completion_tokens": 1, "cached_tokens": None})
    for name, rows, schema in (("problems", problems, tables.PROBLEMS), ("rollouts", rollouts, tables.ROLLOUTS),
                               ("candidates", candidates, tables.CANDIDATES), ("interventions", inter, tables.INTERVENTIONS),
                               ("continuations", conts, tables.CONTINUATIONS), ("rejects", [], tables.REJECTS)):
        tables.write_parquet(rows, schema, out / f"{name}.parquet")
    tables.write_json({"status": "complete", "failed_requests": 0}, out / "manifest.json")
    return out


def test_ten_thousand_candidates_build_quickly_and_open_with_one_page_of_cards(tmp_path):
    run = big_run(tmp_path / "big")
    start = time.perf_counter()
    path = write_view(run)
    seconds = time.perf_counter() - start
    page = path.read_text(encoding="utf-8")
    data = embedded(page)
    print(f"10,000 candidates: page built in {seconds:.2f} s, {len(page) / 2**20:.1f} MiB")
    assert len(data["candidates"]) == 10_000 and len(data["rollouts"]) == 2_500
    assert seconds < 120  # about 2 s on a loaded 2-core machine; a bound that only catches a blow-up
    assert len(page) < 40 * 2**20
    assert "<article" not in page  # the cards are made in the browser, one page at a time
    if CHROMIUM is None:
        pytest.skip("no headless Chromium: the page's rendering was not checked (install Debian's `chromium`)")
    dom = chromium_dom(path, tmp_path)
    assert dom.count("<article class=\"card") == PAGE_SIZE and f'data-rendered="{PAGE_SIZE}"' in dom
    shown = dom[dom.index('<div id="cards">'):dom.index('id="pager-bottom"')]  # the DOM also holds the JSON
    assert "of 10000" in dom and "Intervention number 0." in shown and "Intervention number 20." not in shown
    assert "Intervention number 19." in shown


def test_long_texts_lose_their_middle_and_the_budget_shrinks_with_the_run():
    from intgen.view import _clip, default_max_chars

    text = "START " + "x" * 10_000 + " <intervention>END</intervention>"
    cut = _clip(text, 1000)
    assert cut.startswith("START ") and cut.endswith("<intervention>END</intervention>")
    assert f"[… {len(text) - 1000:,} characters not shown …]" in cut and len(cut) < 1100
    assert _clip("short", 1000) == "short" and _clip(None, 10) is None
    assert default_max_chars(10) == 4000 and default_max_chars(10_000) == 1600 and default_max_chars(10**7) == 500


def test_a_leaked_candidate_is_counted_once():
    from intgen.view import _reasons

    rejects = [{"stage": "propose", "reason": "answer_leak", "detail": "states 12"},
               {"stage": "propose", "reason": "no_intervention_tag", "detail": None}]
    inter = [{"reject_reason": "answer_leak"}, {"reject_reason": "too_few_correct"}, {"reject_reason": None}]
    got = {(r["stage"], r["reason"]): r["count"] for r in _reasons(rejects, inter)}
    assert got == {("propose", "answer_leak"): 1, ("propose", "no_intervention_tag"): 1, ("check", "too_few_correct"): 1}
    got = {(r["stage"], r["reason"]): r["count"] for r in _reasons([], inter)}
    assert got == {("propose", "answer_leak"): 1, ("check", "too_few_correct"): 1}
