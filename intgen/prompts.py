"""Proposer prompt templates (``prompts/*.yaml``), rendered with Jinja2.

A prompt file is YAML with ``critique`` (required) and ``solve`` (optional) templates.
With ``solve``, the proposer chat has three messages (docs/pipeline.md): user =
solve, assistant = the model's own solution, user = critique. Without it (a compact
prompt for small models), the chat is the critique alone.

Two optional keys help small models follow the format (docs/job-spec.md, "backend", CPU default):
``examples``, worked examples shown as earlier turns (each a ``values`` mapping for the
critique template and the ``response`` to it), and ``response_prefix``, text the
assistant turn starts with, which the model continues (e.g. ``<intervention>{"content": "``).
The recorded proposer output is the prefix plus what the model wrote.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2
from omegaconf import OmegaConf

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    """A template compiled once per distinct source (compiling is most of a render's cost)."""
    return _ENV.from_string(source)

#: the variables a critique template may use; solve templates get the first three
CRITIQUE_VARIABLES = {"problem": "P", "reference_solution": "R", "gold_answer": "G", "attempt": "A", "num_steps": 3}


class PromptError(ValueError):
    """A prompt file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ProposerPrompt:
    """A loaded prompt file; ``sha256`` is the hash of the file's bytes (recorded per row)."""

    name: str
    path: str
    sha256: str
    critique: str
    solve: str | None = None
    examples: tuple[tuple[dict, str], ...] = ()
    response_prefix: str | None = None

    def render_solve(self, **values: object) -> str:
        """The first user message. Raises ``jinja2.UndefinedError`` on a missing variable."""
        assert self.solve is not None
        return _compiled(self.solve).render(**values).strip()

    def render_critique(self, **values: object) -> str:
        """The critique user message. Variables: problem, reference_solution,
        gold_answer, attempt, num_steps. Raises ``jinja2.UndefinedError`` on a missing one."""
        return _compiled(self.critique).render(**values).strip()


def load_prompt(path: str | Path) -> ProposerPrompt:
    """Load a proposer prompt file.

    Every template is rendered once with placeholder values, so a template that uses an
    unknown variable fails here, before any model call, not halfway through a run.

    Raises:
        FileNotFoundError: no such file.
        PromptError: not YAML, no ``critique`` template, an unknown key, a template that
            does not compile or uses a variable that does not exist.
    """
    p = Path(path)
    raw = p.read_bytes()
    try:
        data = OmegaConf.to_container(OmegaConf.create(raw.decode("utf-8")))
    except Exception as e:  # yaml, OmegaConf and decoding errors
        raise PromptError(f"{p}: not a valid YAML prompt file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data.get("critique"):
        raise PromptError(f"{p}: a proposer prompt file needs a 'critique' template")
    known = {"name", "solve", "critique", "examples", "response_prefix"}
    unknown = set(data) - known
    if unknown:
        raise PromptError(f"{p}: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
    examples = []
    for i, ex in enumerate(data.get("examples") or []):
        if not isinstance(ex, dict) or not isinstance(ex.get("values"), dict) or not isinstance(ex.get("response"), str):
            raise PromptError(f"{p}: examples[{i}] needs 'values' (a mapping) and 'response' (text)")
        examples.append((ex["values"], ex["response"]))
    for key in ("solve", "critique"):
        if data.get(key):
            try:
                _ENV.from_string(data[key]).render(**CRITIQUE_VARIABLES)
            except jinja2.TemplateSyntaxError as e:
                raise PromptError(f"{p}: template '{key}' line {e.lineno}: {e.message}") from None
            except jinja2.UndefinedError as e:
                raise PromptError(f"{p}: template '{key}': {e.message}; the variables are "
                                  f"{', '.join(CRITIQUE_VARIABLES)}") from None
    return ProposerPrompt(
        name=str(data.get("name") or p.stem),
        path=str(p),
        sha256=hashlib.sha256(raw).hexdigest(),
        critique=data["critique"],
        solve=data.get("solve") or None,
        examples=tuple(examples),
        response_prefix=data.get("response_prefix") or None,
    )
