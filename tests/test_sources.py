"""Tests for intgen.sources: adapters, file formats, record-level rejects and the demo subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intgen.grading import extract_boxed as last_boxed
from intgen.sources import Problem, Reject, load_source


@pytest.fixture
def tmp_path(tmp_path):
    """Files of a test live in a folder named ``d``: their ids are ``d/<file>#<line>``."""
    folder = tmp_path / "d"
    folder.mkdir()
    return folder

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"

# First GSM8K test record (openai/grade-school-math, grade_school_math/data/test.jsonl line 1).
JANET_Q = (
    "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per "
    "fresh duck egg. How much in dollars does she make every day at the farmers' market?"
)
JANET_A = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18"
)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def reasons(rejects):
    return [r.reason for r in rejects]


# ----------------------------------------------------------------------------- last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"first \boxed{1}, then \boxed{\left( 3, \frac{\pi}{2} \right)}.", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{1} and finally \fbox{7}", "7"),
        (r"the set $\boxed{\{1,2\}}$", r"\{1,2\}"),
        (r"$x^2 + y^2 = \boxed 9$.", "9"),
        (r"\boxed{}", ""),
        (r"unclosed \boxed{\frac{1}{2}", None),
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


# ----------------------------------------------------------------------------- gsm8k


def test_gsm8k_record(tmp_path):
    f = write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"question": JANET_Q, "answer": JANET_A},
            {"question": "How much?", "answer": "It costs 1,000 + 250 = <<1000+250=1250>>1,250 dollars.\n#### 1,250"},
        ],
    )
    problems, rejects = load_source(path=str(f), adapter="gsm8k")
    assert rejects == []
    assert problems[0] == Problem(
        problem_id="d/test.jsonl#1",
        source="gsm8k:d/test.jsonl",
        problem=JANET_Q,
        reference_solution=(
            "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
            "She makes 9 * 2 = $18 every day at the farmer\u2019s market."
        ),
        gold_answer="18",
    )
    assert problems[1].problem_id == "d/test.jsonl#2"
    assert problems[1].gold_answer == "1250"
    assert problems[1].reference_solution == "It costs 1,000 + 250 = 1,250 dollars."


def test_gsm8k_rejects(tmp_path):
    f = write_jsonl(
        tmp_path / "g.jsonl",
        [
            {"question": "Q1", "answer": "no final line"},
            {"question": "   ", "answer": "x\n#### 3"},
            {"answer": "x\n#### 3"},
            {"question": "Q4", "answer": "#### 4"},
            {"question": "Q5", "answer": "x\n####   "},
            {"id": "q6", "question": "Q6", "answer": "ok\n#### 6"},
        ],
    )
    problems, rejects = load_source(path=str(f), adapter="gsm8k")
    assert [p.problem_id for p in problems] == ["q6"]
    assert reasons(rejects) == [
        "missing_gold_answer",
        "empty_problem",
        "missing_column",
        "missing_reference_solution",
        "missing_gold_answer",
    ]
    assert [r.record_id for r in rejects] == ["d/g.jsonl#1", "d/g.jsonl#2", "d/g.jsonl#3", "d/g.jsonl#4", "d/g.jsonl#5"]
    assert all(r.stage == "load" for r in rejects)
    assert "'question'" in rejects[2].detail and "d/g.jsonl#3" in rejects[2].detail
    assert "'answer'" in rejects[0].detail and "####" in rejects[0].detail


# ----------------------------------------------------------------------------- math


def test_math_answer_field_and_boxed_fallback(tmp_path):
    f = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"unique_id": "test/algebra/1.json", "problem": "P1", "solution": r"So $\boxed{2}$.", "answer": "2"},
            # no answer field: last \boxed of the solution, nested braces
            {"unique_id": "test/algebra/2.json", "problem": "P2", "solution": r"$\boxed{1}$ no, $\boxed{\frac{1}{2}}$"},
            # empty answer field: also falls back
            {"unique_id": "test/algebra/3.json", "problem": "P3", "solution": r"$\boxed{\sqrt{2}}$", "answer": ""},
            {"unique_id": "test/algebra/4.json", "problem": "P4", "solution": "no box"},
            {"unique_id": "train/number_theory/7115.json", "problem": "P5", "solution": r"there are $\boxed{}$ primes"},
        ],
    )
    problems, rejects = load_source(path=str(f), adapter="math")
    assert [(p.problem_id, p.gold_answer) for p in problems] == [
        ("test/algebra/1.json", "2"),
        ("test/algebra/2.json", r"\frac{1}{2}"),
        ("test/algebra/3.json", r"\sqrt{2}"),
    ]
    assert problems[1].reference_solution == r"$\boxed{1}$ no, $\boxed{\frac{1}{2}}$"
    assert problems[0].source == "math:d/math.jsonl"
    assert [(r.record_id, r.reason) for r in rejects] == [
        ("test/algebra/4.json", "missing_gold_answer"),
        ("train/number_theory/7115.json", "missing_gold_answer"),
    ]
    assert rejects[0].problem_id == "test/algebra/4.json"
    assert "d/math.jsonl#4" in rejects[0].detail


# ----------------------------------------------------------------------------- olympiadbench


def test_olympiadbench(tmp_path):
    f = write_jsonl(
        tmp_path / "ob.jsonl",
        [
            {"id": 1606, "question": "Q", "solution": ["first solution", "second"], "final_answer": ["2"]},
            {"id": 1610, "question": "Q", "solution": ["s"], "final_answer": ["$\\frac{1}{2 n+2}$"]},
            {"id": 1, "question": "Q", "solution": ["s"], "final_answer": ["$3$", "$-1$"]},
            # the real file packs several answers in one string: id 1664 is ["$69$,$84$"]
            {"id": 1664, "question": "Q", "solution": ["s"], "final_answer": ["$69$,$84$"]},
            {"id": 1970, "question": "Q", "solution": ["s"], "final_answer": ["$(-\\infty, 0) \\cup\\{1\\}$."]},
            {"id": 7, "question": "Q", "solution": ["s"], "final_answer": []},
        ],
    )
    problems, rejects = load_source(path=str(f), adapter="olympiadbench")
    assert [(p.problem_id, p.gold_answer) for p in problems] == [
        ("olympiadbench/1606", "2"),
        ("olympiadbench/1610", "\\frac{1}{2 n+2}"),
        ("olympiadbench/1", "3, -1"),
        ("olympiadbench/1664", "69, 84"),
        ("olympiadbench/1970", "$(-\\infty, 0) \\cup\\{1\\}$."),  # text around the math: kept as is
    ]
    assert problems[0].reference_solution == "first solution"
    assert [(r.record_id, r.reason) for r in rejects] == [("olympiadbench/7", "missing_gold_answer")]


# ----------------------------------------------------------------------------- generic + columns


def test_generic_defaults_and_fallbacks(tmp_path):
    f = write_jsonl(
        tmp_path / "gen.jsonl",
        [
            {"problem": "P1", "reference_solution": "R1", "answer": "A1"},
            {"id": 42, "problem": "P2", "solution": "R2", "gold_answer": " A2 "},
            {"problem": "P3", "answer": 7},
            {"problem": "P4", "solution": "", "answer": "A4"},
            {"problem": None, "solution": "R5", "answer": "A5"},
        ],
    )
    problems, rejects = load_source(path=str(f))  # adapter="generic" is the default
    assert problems == [
        Problem("d/gen.jsonl#1", "generic:d/gen.jsonl", "P1", "R1", "A1"),
        Problem("42", "generic:d/gen.jsonl", "P2", "R2", "A2"),
    ]
    assert [(r.record_id, r.reason) for r in rejects] == [
        ("d/gen.jsonl#3", "missing_column"),
        ("d/gen.jsonl#4", "missing_reference_solution"),
        ("d/gen.jsonl#5", "empty_problem"),
    ]
    assert "'reference_solution' / 'solution'" in rejects[0].detail


def test_columns_override(tmp_path):
    f = write_jsonl(
        tmp_path / "custom.jsonl",
        [{"qid": "a-1", "text": "What is 2+2?", "worked": "2+2=4", "final": "4"}],
    )
    cols = {"problem": "text", "reference_solution": "worked", "gold_answer": "final", "id": "qid"}
    problems, rejects = load_source(path=str(f), columns=cols)
    assert rejects == []
    assert problems == [Problem("a-1", "generic:d/custom.jsonl", "What is 2+2?", "2+2=4", "4")]

    # overrides work for named adapters too
    g = write_jsonl(tmp_path / "g.jsonl", [{"key": "k9", "q": "Q", "sol": "a = <<1+1=2>>2\n#### 2"}])
    problems, _ = load_source(
        path=str(g), adapter="gsm8k", columns={"problem": "q", "reference_solution": "sol", "gold_answer": "sol", "id": "key"}
    )
    assert problems == [Problem("k9", "gsm8k:d/g.jsonl", "Q", "a = 2", "2")]


# ----------------------------------------------------------------------------- robustness


def test_bad_lines_do_not_stop_loading(tmp_path):
    good = lambda i: json.dumps({"problem": f"P{i}", "solution": "S", "answer": str(i)}).encode()  # noqa: E731
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(
        b"\n".join(
            [
                good(1),
                b'{"problem": "P2", "solution": ',  # line 2: truncated JSON
                b"",  # line 3: blank, skipped
                b'{"problem": "caf\xe9", "solution": "S", "answer": "1"}',  # line 4: latin-1 byte
                b"[1, 2]",  # line 5: not an object
                good(6),
            ]
        )
        + b"\n"
    )
    problems, rejects = load_source(path=str(f))
    assert [p.problem_id for p in problems] == ["d/mixed.jsonl#1", "d/mixed.jsonl#6"]
    assert [(r.record_id, r.problem_id, r.reason) for r in rejects] == [
        ("d/mixed.jsonl#2", None, "malformed_json"),
        ("d/mixed.jsonl#4", None, "invalid_utf8"),
        ("d/mixed.jsonl#5", None, "malformed_json"),
    ]
    assert rejects[1].detail.startswith("d/mixed.jsonl#4: line 4 is not valid UTF-8")


def test_duplicate_id_keeps_first(tmp_path):
    f = write_jsonl(
        tmp_path / "dup.jsonl",
        [
            {"id": "x", "problem": "first", "solution": "S", "answer": "1"},
            {"id": "y", "problem": "other", "solution": "S", "answer": "2"},
            {"id": "x", "problem": "second", "solution": "S", "answer": "3"},
        ],
    )
    problems, rejects = load_source(path=str(f))
    assert [(p.problem_id, p.problem) for p in problems] == [("x", "first"), ("y", "other")]
    assert [(r.record_id, r.problem_id, r.reason) for r in rejects] == [("x", "x", "duplicate_id")]
    assert "d/dup.jsonl#3" in rejects[0].detail


def test_limit_counts_good_problems(tmp_path):
    recs = [{"problem": "", "solution": "S", "answer": "0"}] + [
        {"problem": f"P{i}", "solution": "S", "answer": str(i)} for i in range(2, 10)
    ]
    f = write_jsonl(tmp_path / "lim.jsonl", recs)
    problems, rejects = load_source(path=str(f), limit=3)
    assert [p.problem_id for p in problems] == ["d/lim.jsonl#2", "d/lim.jsonl#3", "d/lim.jsonl#4"]
    assert reasons(rejects) == ["empty_problem"]
    assert load_source(path=str(f), limit=0) == ([], [])


def test_config_errors(tmp_path):
    missing = tmp_path / "nope" / "problems.jsonl"
    with pytest.raises(FileNotFoundError) as exc:
        load_source(path=str(missing))
    assert str(missing) in str(exc.value) and "check the path" in str(exc.value)
    with pytest.raises(ValueError, match="exactly one"):
        load_source()
    with pytest.raises(ValueError, match="exactly one"):
        load_source(path="a.jsonl", dataset="b")
    f = write_jsonl(tmp_path / "ok.jsonl", [])
    with pytest.raises(ValueError, match="gsm8k, math, olympiadbench") as exc:
        load_source(path=str(f), adapter="aime")
    assert "'aime'" in str(exc.value)
    (tmp_path / "data.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_source(path=str(tmp_path / "data.csv"))


# ----------------------------------------------------------------------------- other formats

ROWS = [
    {"unique_id": "test/prealgebra/1.json", "problem": "P1", "solution": r"$\boxed{5}$", "answer": "5"},
    {"unique_id": "test/prealgebra/2.json", "problem": "P2", "solution": r"$\boxed{\frac{3}{4}}$", "answer": None},
]


def test_json_array_and_json_lines(tmp_path):
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps(ROWS + ["not an object"]), encoding="utf-8")
    problems, rejects = load_source(path=str(arr), adapter="math")
    assert [(p.problem_id, p.gold_answer) for p in problems] == [
        ("test/prealgebra/1.json", "5"),
        ("test/prealgebra/2.json", r"\frac{3}{4}"),
    ]
    assert [(r.record_id, r.reason) for r in rejects] == [("d/arr.json#3", "malformed_json")]

    lines = write_jsonl(tmp_path / "lines.json", ROWS)
    problems, rejects = load_source(path=str(lines), adapter="math")
    assert len(problems) == 2 and rejects == []


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": "P1", "solution": "S1", "answer": "1"}, {"problem": "P2", "solution": "S2", "answer": "2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    problems, rejects = load_source(path=str(tmp_path / "t.parquet"))
    assert problems == [
        Problem("d/t.parquet#1", "generic:d/t.parquet", "P1", "S1", "1"),
        Problem("d/t.parquet#2", "generic:d/t.parquet", "P2", "S2", "2"),
    ]
    assert rejects == []


def test_dataset_saved_to_disk(tmp_path):
    """``dataset=`` accepts a ``save_to_disk`` directory (Dataset or DatasetDict + split)."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "mathdd"))
    problems, rejects = load_source(dataset=str(tmp_path / "mathdd"), split="test", adapter="math")
    assert [(p.problem_id, p.gold_answer) for p in problems] == [
        ("test/prealgebra/1.json", "5"),
        ("test/prealgebra/2.json", r"\frac{3}{4}"),
    ]
    assert problems[0].source == f"math:hf:{tmp_path / 'mathdd'}:test"
    with pytest.raises(ValueError, match="no split 'train'"):
        load_source(dataset=str(tmp_path / "mathdd"), adapter="math")  # default split is train

    datasets.Dataset.from_list([{"problem": "P", "solution": "S", "answer": "9"}]).save_to_disk(str(tmp_path / "single"))
    problems, _ = load_source(dataset=str(tmp_path / "single"), split="test")
    assert [(p.problem_id, p.gold_answer) for p in problems] == [("single:test#1", "9")]


def test_dataset_local_folder_via_load_dataset(tmp_path, monkeypatch):
    """``dataset=`` also goes through ``datasets.load_dataset`` (here: a local folder of JSONL files)."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "mathfolder"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", ROWS)
    problems, rejects = load_source(dataset=str(folder), split="test", adapter="math", limit=1)
    assert [(p.problem_id, p.gold_answer) for p in problems] == [("test/prealgebra/1.json", "5")]
    assert rejects == []


# ----------------------------------------------------------------------------- demo subset


def test_demo_gsm8k():
    problems, rejects = load_source(path=str(DEMO / "gsm8k_test_50.jsonl"), adapter="gsm8k")
    assert len(problems) == 50 and rejects == []
    assert problems[0].problem_id == "gsm8k/test.jsonl#1"
    assert problems[-1].problem_id == "gsm8k/test.jsonl#50"
    assert problems[0].problem == JANET_Q
    assert problems[0].gold_answer == "18"
    assert problems[0].source == "gsm8k:demo/gsm8k_test_50.jsonl"
    assert all("<<" not in p.reference_solution and "####" not in p.reference_solution for p in problems)


def test_demo_math500():
    problems, rejects = load_source(path=str(DEMO / "math500_50.jsonl"), adapter="math")
    assert len(problems) == 50 and rejects == []
    assert problems[0].problem_id == "test/precalculus/807.json"
    assert problems[0].gold_answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert problems[-1].problem_id == "test/intermediate_algebra/1410.json"
    levels = [json.loads(line)["level"] for line in (DEMO / "math500_50.jsonl").read_text(encoding="utf-8").splitlines()]
    assert set(levels) <= {1, 2}
    # the curated answer equals the last \boxed of the solution for every demo problem
    assert all(last_boxed(p.reference_solution) == p.gold_answer for p in problems)


def test_reject_is_frozen():
    r = Reject("load", "a#1", None, "malformed_json", "a#1: bad")
    with pytest.raises(AttributeError):
        r.reason = "x"  # type: ignore[misc]


def test_adversarial_records_are_rejects_not_crashes(tmp_path):
    import json as _json
    lines = [
        '{"problem": "bad \\ud800 text", "solution": "s", "answer": "1"}',  # a lone surrogate
        "null",
        '{"problem": "p", "solution": "s", "answer": NaN}',
        '{"problem": "ok", "solution": "s", "answer": "3"}',
    ]
    (tmp_path / "adv.jsonl").write_text("\n".join(lines) + "\n")
    problems, rejects = load_source(path=str(tmp_path / "adv.jsonl"))
    assert [p.problem_id for p in problems] == ["d/adv.jsonl#4"]
    assert [(r.record_id, r.reason) for r in rejects] == [
        ("d/adv.jsonl#1", "invalid_utf8"), ("d/adv.jsonl#2", "malformed_json"), ("d/adv.jsonl#3", "bad_type")]
    assert "got null" in rejects[1].detail.lower() or "nonetype" in rejects[1].detail.lower()
    rec = {"id": 1, "question": "Q", "solution": ["S"], "final_answer": 5}
    (tmp_path / "ob.jsonl").write_text(_json.dumps(rec) + "\n" + _json.dumps({**rec, "id": 2, "final_answer": {"a": "5"}}) + "\n")
    problems, rejects = load_source(path=str(tmp_path / "ob.jsonl"), adapter="olympiadbench")
    assert [(p.problem_id, p.gold_answer) for p in problems] == [("olympiadbench/1", "5")]
    assert [r.reason for r in rejects] == ["bad_type"]


def test_same_file_name_in_two_folders_keeps_distinct_ids(tmp_path):
    for folder in ("dA", "dB"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.jsonl").write_text('{"problem": "p", "solution": "s", "answer": "1"}\n')
    ids = [load_source(path=str(tmp_path / f / "test.jsonl"))[0][0].problem_id for f in ("dA", "dB")]
    assert ids == ["dA/test.jsonl#1", "dB/test.jsonl#1"]


def test_unreadable_files_stop_with_a_source_error(tmp_path):
    from intgen.sources import SourceError
    (tmp_path / "x.txt").write_text("hi")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    (tmp_path / "arr.json").write_text('[{"problem": "p"}, {broken')
    for name in ("x.txt", "bad.parquet", "arr.json"):
        with pytest.raises(SourceError, match=name.replace(".", r"\.")):
            load_source(path=str(tmp_path / name))
