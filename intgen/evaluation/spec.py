"""The spec of ``intgen eval localize``: a small pydantic model built from the job spec's
pieces (:class:`intgen.config.BackendSpec`, :class:`~intgen.config.SamplingSpec`,
:class:`~intgen.config.SourceSpec`), read from an optional YAML file with dotted
``key=value`` overrides merged in (OmegaConf), like ``intgen generate``'s spec. Unknown
keys are errors that name the key. The keys are documented in README.md, "Evaluation".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from intgen.config import BackendSpec, SamplingSpec, SourceSpec, load_with_overrides, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalProposeSpec(_Strict):
    """The proposer prompts and the samples per row."""

    m: int = Field(default=1, ge=1)
    #: used for rows whose problem was found in a ``reference`` source
    prompt: str = "prompts/int-propose.yaml"
    #: used for rows without a reference solution and gold answer
    prompt_noref: str = "prompts/int-propose-noref.yaml"


class LocalizeSpec(_Strict):
    """``intgen eval localize``: which rows, which model and backend, which prompts, and
    where reference solutions come from (joined by whitespace-normalised problem text)."""

    name: str = "localize"
    seed: int = 0
    limit: int | None = Field(default=None, ge=1)
    per_subset: int | None = Field(default=None, ge=1)
    subsets: list[str] | None = None
    model: str = "smollm2-135m-instruct"
    backend: BackendSpec = Field(default_factory=BackendSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    propose: EvalProposeSpec = Field(default_factory=EvalProposeSpec)
    reference: list[SourceSpec] = Field(default_factory=list)

    @field_validator("reference", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """One source or a list; ``reference.0.path=...`` overrides arrive as a mapping with
        keys "0", "1", ... and are read as a list in key order."""
        if value is None:
            return []
        if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            return [value[k] for k in sorted(value, key=lambda k: int(k))]
        if isinstance(value, dict):
            return [value]
        return value

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_localize_spec(path: str | Path | None, overrides: list[str] | None = None,
                       model: str | None = None) -> LocalizeSpec:
    """Read an eval spec (YAML, optional), merge ``key=value`` overrides and ``model``.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        SpecError: bad YAML, a malformed override, an unknown key or a wrong type.
    """
    raw = load_with_overrides(path, overrides, what="eval spec")
    if model is not None:
        raw["model"] = model
    return validate(LocalizeSpec, raw, what="eval spec")
