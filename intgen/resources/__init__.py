"""Files intgen ships with the package: the proposer prompts, the bundled job specs, the
dataset-card template and the demo problems (docs/architecture.md, "Bundled files").

In the repository they are the top-level folders ``prompts/``, ``pipelines/``,
``data_cards/`` and ``data/`` (the editable sources); a wheel installs them as the
subpackages ``intgen.resources.prompts``, ``.pipelines``, ``.data_cards`` and ``.data``
(``setup.cfg`` maps each to its folder), so an installed intgen finds them from any working
directory, and a relative path inside a bundled spec (``../data/demo/...``,
``prompts/...``) resolves inside the package exactly as it does in the repository.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent.parent

#: the bundled folders, by the name a relative path starts with
FOLDERS = ("prompts", "pipelines", "data_cards", "data")


def folder(name: str) -> Path:
    """The bundled folder ``name`` (one of :data:`FOLDERS`) on disk.

    Raises:
        KeyError: ``name`` is not a bundled folder.
    """
    if name not in FOLDERS:
        raise KeyError(f"{name!r} is not one of intgen's bundled folders ({', '.join(FOLDERS)})")
    try:  # an installed wheel: the subpackage (a namespace package: the folder holds no __init__.py)
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:  # a source checkout or an editable install: the repository's folder
        return _REPO_ROOT / name
    return Path(next(iter(module.__path__)))


def bundled(relative: str | Path) -> Path | None:
    """A path such as ``prompts/int-propose.yaml`` inside the bundled files, or None when
    it does not start with a bundled folder's name or names nothing there."""
    parts = Path(relative).parts
    if not parts or parts[0] not in FOLDERS:
        return None
    path = folder(parts[0]).joinpath(*parts[1:])
    return path if path.exists() else None


def specs() -> dict[str, Path]:
    """The bundled job specs by name (``demo`` -> ``.../pipelines/demo.yaml``), sorted."""
    return {p.stem: p for p in sorted(folder("pipelines").glob("*.yaml"))}


def job_spec(job: str | Path) -> Path:
    """The job spec a command names: an existing file wins, else a bundled spec's name
    (``demo``, ``int-paper``; with or without ``.yaml``).

    Raises:
        FileNotFoundError: neither; the message lists the bundled specs.
    """
    p = Path(job).expanduser()
    if p.is_file():
        return p
    name = p.name[:-5] if p.name.endswith(".yaml") and len(p.parts) == 1 else str(job)
    found = specs().get(name)
    if found is not None:
        return found
    raise FileNotFoundError(f"job spec not found: {job} (give a YAML file, or one of the bundled specs: "
                            f"{', '.join(specs())}; `intgen pipelines` lists them)")
