"""``pip install intgen`` works from any folder (issue 14): a wheel built from the checkout
holds the prompts, bundled specs, card template and demo data, and an installed intgen runs
the bundled demo on the fake backend and exports it from an empty folder."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", ".venv", "runs", "build", "dist", "checkpoints", "__pycache__", ".pytest_cache", ".consumers",
        "intgen.egg-info"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "intgen"
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("intgen-*.whl")
    return whl


def test_the_wheel_holds_the_bundled_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("intgen/resources/prompts/int-propose.yaml", "intgen/resources/prompts/int-propose-compact.yaml",
                 "intgen/resources/pipelines/demo.yaml", "intgen/resources/pipelines/int-paper.yaml",
                 "intgen/resources/data_cards/intgen_dataset.md.j2", "intgen/resources/data/demo/gsm8k_test_50.jsonl",
                 "intgen/resources/data/demo/math500_50.jsonl", "intgen/resources/data/demo/word_problems_24.jsonl",
                 "intgen/resources/data/demo/README.md",
                 "intgen/templates/view.html.j2", "intgen/templates/view.css", "intgen/templates/view.js",
                 "intgen/templates/vendor/temml/temml.min.js", "intgen/templates/vendor/temml/LICENSE",
                 "intgen/cli.py", "intgen/stages/check.py", "intgen/executor.py"):
        assert path in names, path


def test_an_installed_wheel_runs_the_bundled_demo_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the set-up's packages, but not its (editable) intgen: a path entry processes no .pth file inside it
    (site / "reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    python = venv / "bin" / "python"
    work = tmp_path / "empty"
    work.mkdir()

    def intgen(*args):
        return subprocess.run([str(python), "-m", "intgen.cli", *args], cwd=work, capture_output=True, text=True,
                              timeout=600)

    where = subprocess.run([str(python), "-c", "import intgen; print(intgen.__file__)"], cwd=work, check=True,
                           capture_output=True, text=True).stdout
    assert where.startswith(str(site)), where
    listed = intgen("pipelines")
    assert listed.returncode == 0 and "demo" in listed.stdout and "int-paper" in listed.stdout
    run = intgen("generate", "demo", "backend.kind=fake", "--quiet")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (work / "runs" / "demo" / "sft.parquet").exists()
    exported = intgen("export", "runs/demo")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (work / "runs" / "demo" / "export" / "README.md").exists()
    viewed = intgen("view", "runs/demo")
    assert viewed.returncode == 0, viewed.stderr[-2000:]
    assert "intgen-data" in (work / "runs" / "demo" / "view.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
