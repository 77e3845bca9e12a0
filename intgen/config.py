"""The job spec: YAML validated into typed pydantic models (docs/job-spec.md).

A spec is read from a YAML file with OmegaConf, dotted ``key=value`` overrides from the
command line are merged in (OmegaConf's dotlist), and the result is validated by
pydantic. Every model forbids unknown keys, so a typo fails with a message naming the
key. The reference page for every key is ``docs/job-spec.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from intgen import resources



class SpecError(ValueError):
    """A job spec that cannot be used; the message names the key and what to fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``true`` is not a number: pydantic would read it as 1 for an int field (``rollout.k=true``)."""
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(typing.get_args(annotation)) or {annotation}
            if kinds & {int, float} and bool not in kinds:
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class SourceSpec(_Model):
    """Where problems come from: a local file (``path``) or a ``datasets`` name."""

    path: str | None = None
    dataset: str | None = None
    subset: str | None = None
    split: str = "train"
    adapter: Literal["gsm8k", "math", "olympiadbench", "generic"] = "generic"
    columns: dict[str, str] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_of_path_or_dataset(self) -> "SourceSpec":
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of source.path (a local file) or source.dataset (a datasets name)")
        unknown = set(self.columns) - {"problem", "reference_solution", "gold_answer", "id"}
        if unknown:
            raise ValueError(f"source.columns: unknown field(s) {sorted(unknown)}; map any of problem, "
                             "reference_solution, gold_answer, id to your column names")
        return self


class SimSpec(_Model):
    """The simulated engine (``backend.kind: sim``, :mod:`intgen.backends.sim`;
    docs/architecture.md, "The simulated engine"). Defaults: one H100 running Qwen3-4B with
    vLLM, and the paper's funnel."""

    #: most sequences the engine runs at once
    max_running: int = Field(default=256, ge=1)
    #: a decode step takes step_ms + step_ms_per_seq x running sequences (milliseconds)
    step_ms: float = Field(default=8.0, ge=0)
    step_ms_per_seq: float = Field(default=0.094, ge=0)
    #: prefill cost per prompt token not in the prefix cache (milliseconds)
    prefill_ms_per_token: float = Field(default=0.02, ge=0)
    #: median output tokens (lognormal) per request kind; cut at sampling.max_tokens (finish "length")
    rollout_tokens: float = Field(default=3000, gt=0)
    proposer_tokens: float = Field(default=1500, gt=0)
    continuation_tokens: float = Field(default=3000, gt=0)
    #: sigma of the lognormal output lengths: 1.3 puts the mean of a 3,000-token median at
    #: about 7,000 tokens (exp(sigma^2 / 2) = 7/3), the paper's mean rollout (docs/paper.md)
    length_sigma: float = Field(default=1.3, ge=0)
    #: the funnel: a rollout is correct with p_correct; a proposer output parses with p_parse;
    #: a parsed candidate is good with p_good, and a good candidate's continuations succeed
    #: with good_rate (the others never); a baseline continuation succeeds with baseline_rate
    p_correct: float = Field(default=0.1, ge=0, le=1)
    p_parse: float = Field(default=0.8, ge=0, le=1)
    p_good: float = Field(default=0.15, ge=0, le=1)
    good_rate: float = Field(default=0.29, ge=0, le=1)
    #: candidate success rates spread evenly over [good_rate_low, good_rate] instead of one rate (null: off)
    good_rate_low: float | None = Field(default=None, ge=0, le=1)
    baseline_rate: float = Field(default=0.02, ge=0, le=1)
    seed: int = 0


class BackendSpec(_Model):
    """Which engine serves the model (docs/job-spec.md, "backend"). Keys are documented in
    ``docs/job-spec.md``; each kind reads the keys it needs and ignores the others."""

    kind: Literal["vllm", "openai", "transformers", "fake", "sim"] = "vllm"
    max_model_len: int | None = Field(default=None, ge=16)
    #: extra keyword arguments of the chat template (e.g. ``enable_thinking: false``), every kind
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    # -- vllm
    engine_args: dict[str, Any] = Field(default_factory=dict)
    # -- openai (any OpenAI-compatible server)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model_name: str | None = None
    continuation: Literal["auto", "server", "completions", "none"] = "server"
    #: how /v1/completions prompts go out: token ids, the rendered text, or what the server's probe allows
    prompt_format: Literal["auto", "token_ids", "text"] = "auto"
    tokenizer: str | None = None
    concurrency: int = Field(default=64, ge=1)
    timeout_s: float = Field(default=1800.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    #: when a request still fails after max_retries (the server is down, not the request bad),
    #: probe the server for up to this many seconds, then send it again; past it, the run
    #: gives up on the server and ends incomplete (docs/job-spec.md, "Outages")
    outage_s: float = Field(default=300.0, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # -- transformers
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(default=8, ge=1)
    threads: int | None = Field(default=None, ge=1)
    # -- fake
    script: str = "demo"
    # -- sim (a simulated engine on a virtual clock, for planning)
    sim: SimSpec = Field(default_factory=SimSpec)


class SamplingSpec(_Model):
    """Sampling parameters shared by every stage (paper's released code, docs/paper.md)."""

    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.8, gt=0.0, le=1.0)
    top_k: int = Field(default=20, ge=-1)  # -1: no top-k (vLLM's convention)
    max_tokens: int = Field(default=16384, ge=1)


class ProposerSpec(_Model):
    """An optional separate proposer model/backend; defaults to the policy's."""

    model: str | None = None
    backend: BackendSpec | None = None


class RolloutSpec(_Model):
    """The rollout stage (docs/job-spec.md, ``rollout``; docs/hard-pool.md)."""

    k: int = Field(default=4, ge=1)
    #: which problems go on to propose: ``failed`` (every failed rollout, the default) or
    #: ``hard`` (only problems with pass@k = 0, sampled in waves that stop at the first success)
    keep: Literal["failed", "hard"] = "failed"
    #: with keep hard: rollouts per wave, in index order (null: all k in one wave); k must be a multiple
    wave: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _wave_divides_k(self) -> "RolloutSpec":
        if self.wave is not None and self.keep != "hard":
            raise ValueError("rollout.wave: waves are drawn only with rollout.keep=hard; drop the key or set keep: hard")
        if self.wave is not None and self.k % self.wave:
            raise ValueError(f"rollout.wave: k = {self.k} is not a multiple of wave = {self.wave}, so samples "
                             "spent would not be wave x waves; choose a wave that divides k")
        return self


class ProposeSpec(_Model):
    m: int = Field(default=4, ge=1)
    prompt: str = "prompts/int-propose.yaml"
    #: faithful mode only: the rendered proposer chat is cut to its first this many tokens, as
    #: the paper's code did (docs/faithful.md, item 5); intgen's default shortens the attempt instead
    cut_prompt_tokens: int = Field(default=30000, ge=1)


class CheckSpec(_Model):
    """The check stage (docs/job-spec.md, ``check``): r continuations per candidate, and the
    optional stopping rules, which send continuations in waves of ``wave``."""

    r: int = Field(default=32, ge=1)
    #: stop a candidate at its accept.min_correct-th success (decisions identical to all r)
    early_stop: bool = False
    #: stop a candidate once its last n graded continuations all failed (changes decisions)
    give_up_after: int | None = Field(default=None, ge=1)
    #: continuations per wave when a stopping rule is on (without one, all r go at once)
    wave: int = Field(default=4, ge=1)


class AcceptSpec(_Model):
    min_correct: int = Field(default=1, ge=1)


class BaselineSpec(_Model):
    for_: Literal["accepted", "all", "none"] = Field(default="accepted", alias="for")


class HintSpec(_Model):
    """The hint conditions' hint (docs/hints.md): the first ``fraction`` of the reference
    solution's steps, put after the problem in the user message with ``template``."""

    fraction: float = Field(default=0.5, gt=0, le=1)
    template: str = "{problem}\n\nHint: a solution begins as follows.\n\n{hint}"

    @field_validator("template")
    @classmethod
    def _has_fields(cls, value: str) -> str:
        if "{problem}" not in value or "{hint}" not in value:
            raise ValueError("hint.template: must contain {problem} and {hint}")
        return value


#: the conditions a run can measure side by side (docs/hints.md)
CONDITION_NAMES = ("intervention", "hint", "hint+intervention", "original_step")


class GradingSpec(_Model):
    """The grading pool (docs/grading.md)."""

    workers: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)


class SelectSpec(_Model):
    per_rollout: Literal["best", "all", "first"] = "best"


class RaySpec(_Model):
    """Where ``executor.kind: ray`` runs its engine actors (docs/scale.md, "Ray")."""

    #: the cluster to join (null: RAY_ADDRESS, else a local cluster started for the run)
    address: str | None = None
    #: a local cluster's logical CPUs (null: this machine's cores, or more if the engines need them)
    num_cpus: int | None = Field(default=None, ge=1)
    #: Ray resources of one engine actor; gpus_per_engine null: a vllm engine takes
    #: tensor_parallel_size x pipeline_parallel_size GPUs when the cluster has GPUs, else none
    cpus_per_engine: float = Field(default=1.0, ge=0)
    gpus_per_engine: float | None = Field(default=None, ge=0)
    #: a dead engine actor is restarted this many times (its unanswered requests are sent again)
    max_restarts: int = Field(default=3, ge=0)


class ExecutorSpec(_Model):
    """How requests reach the engines (docs/architecture.md, "The executor"). None of these
    keys changes what a run computes, so a resumed run may change them."""

    #: local (engines in this process) or ray (one engine per Ray actor; docs/scale.md)
    kind: Literal["local", "ray"] = "local"
    #: engines per model; the streaming scheduler dispatches to them (route keys keep the
    #: requests that share a prefix on one engine). Locally more than one works for the fake
    #: and sim backends (a simulated node of N engines); on Ray for every kind but sim
    engines: int = Field(default=1, ge=1)
    ray: RaySpec = Field(default_factory=RaySpec)

    #: requests in flight per engine; null: the backend's own (vLLM: 2 x max_num_seqs,
    #: a server: backend.concurrency, transformers: 2 batches), else 256
    window: int | None = Field(default=None, ge=1)
    #: stream (records move to their next stage at once) or barrier (stage by stage, for comparisons)
    schedule: Literal["stream", "barrier"] = "stream"
    #: with schedule barrier: prompts per slice, each slice finished before the next (null: all at once)
    slice: int | None = Field(default=None, ge=1)
    #: the sample store commits every group_size samples or group_ms milliseconds, whichever first
    store_group_size: int = Field(default=64, ge=1)
    store_group_ms: float = Field(default=500.0, ge=0)


class JobSpec(_Model):
    """A whole job (docs/job-spec.md). ``faithful: true`` applies the paper's choices."""

    name: str = "run"
    seed: int = Field(default=0, ge=0, lt=2**63)
    limit: int | None = Field(default=None, ge=1)
    source: SourceSpec | list[SourceSpec]
    model: str = "smollm2-135m-instruct"
    backend: BackendSpec = Field(default_factory=BackendSpec)
    proposer: ProposerSpec = Field(default_factory=ProposerSpec)
    system_prompt: str | None = None
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    propose: ProposeSpec = Field(default_factory=ProposeSpec)
    check: CheckSpec = Field(default_factory=CheckSpec)
    accept: AcceptSpec = Field(default_factory=AcceptSpec)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    select: SelectSpec = Field(default_factory=SelectSpec)
    #: the conditions measured for each candidate that baseline.for names (null: intervention
    #: and original_step, today's check and baseline); docs/hints.md
    conditions: list[Literal["intervention", "hint", "hint+intervention", "original_step"]] | None = None
    hint: HintSpec = Field(default_factory=HintSpec)
    grading: GradingSpec = Field(default_factory=GradingSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    faithful: bool = False

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
            raise ValueError(f"name: {value!r} is not a run name: use letters, digits, '.', '_' and '-' (it names "
                             "the folder runs/<name>; give --out for a folder elsewhere)")
        return value

    @field_validator("source")
    @classmethod
    def _some_source(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one source (a mapping with path or dataset)")
        return value

    @model_validator(mode="after")
    def _accept_within_r(self) -> "JobSpec":
        if self.accept.min_correct > self.check.r:
            raise ValueError(f"accept.min_correct: {self.accept.min_correct} is more than check.r = {self.check.r} "
                             "continuations, so nothing could be accepted")
        return self

    @model_validator(mode="after")
    def _conditions(self) -> "JobSpec":
        c = self.conditions
        if c is None:
            return self
        if "intervention" not in c:
            raise ValueError("conditions: the intervention condition (the check stage) is always measured; list it")
        if len(set(c)) != len(c):
            raise ValueError(f"conditions: {c} names a condition twice")
        if self.baseline.for_ == "none" and set(c) - {"intervention"}:
            raise ValueError("conditions: baseline.for=none measures no condition beyond the intervention; set "
                             "baseline.for to accepted or all (the candidates every condition is measured for)")
        if self.check.early_stop or self.check.give_up_after is not None:
            raise ValueError("conditions: every condition is measured with the same r samples, so the check stage "
                             "draws all r: drop check.early_stop and check.give_up_after")
        if "original_step" not in c and self.baseline.for_ != "none":
            raise ValueError("conditions: without original_step set baseline.for=none (it is the original-step "
                             "condition), or list original_step")
        return self

    @property
    def hint_conditions(self) -> list[str]:
        """The hint conditions the spec asks for (``hint``, ``hint+intervention``), in that order."""
        return [c for c in ("hint", "hint+intervention") if c in (self.conditions or ())]

    @model_validator(mode="after")
    def _faithful_preset(self) -> "JobSpec":
        """The faithful preset: the paper's released code where intgen differs.

        Source: docs/faithful.md, which lists every difference (first parsed candidate per
        attempt, the only one checked; raw substring leak test; doubled newlines; no early
        stop; the paper's step split, parser, grading and prompt cut). A spec that sets
        ``faithful: true`` and explicitly asks for a conflicting choice is an error.
        ``propose.cut_prompt_tokens`` is read in faithful mode only.
        """
        if not self.faithful:
            return self
        if "per_rollout" in self.select.model_fields_set and self.select.per_rollout != "first":
            raise ValueError("select.per_rollout: the faithful preset keeps the first parsed candidate; "
                             "set select.per_rollout=first (or drop the key), or faithful=false")
        if self.check.early_stop:
            raise ValueError("check.early_stop: the faithful preset draws all r continuations; drop the key or set faithful: false")
        if self.check.give_up_after is not None:
            raise ValueError("check.give_up_after: the faithful preset draws all r continuations; drop the key or set "
                             "faithful: false")
        self.select.per_rollout = "first"
        return self

    @property
    def sources(self) -> list[SourceSpec]:
        return self.source if isinstance(self.source, list) else [self.source]

    @property
    def proposer_model(self) -> str:
        return self.proposer.model or self.model

    @property
    def proposer_backend(self) -> BackendSpec:
        return self.proposer.backend or self.backend

    def resolved(self) -> dict[str, Any]:
        """The spec with every default filled in, as plain data (``job.yaml``)."""
        return self.model_dump(mode="json", by_alias=True)

    def fingerprint(self) -> str:
        """sha256 of the resolved spec's canonical JSON: identifies what the run computes."""
        blob = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _format_validation_error(err: ValidationError) -> str:
    errors = err.errors()
    keys = [".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-after", "list[", "SourceSpec")))
            for e in errors]
    lines = []
    for key, e in zip(keys, errors):
        if e["type"] in ("list_type", "model_type") and keys.count(key) > 1:
            continue  # the other branch of a "one or a list" key already says what is wrong
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif e["type"] == "value_error" or not key:  # a rule whose message names its key
            lines.append(f"  {key or 'spec'}: {msg}" if not msg.startswith(f"{key}:") else f"  {msg}")
        else:
            lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
    return "invalid job spec:\n" + "\n".join(dict.fromkeys(lines))


def load_spec(path: str | Path | None, overrides: list[str] | None = None, data: dict | None = None) -> JobSpec:
    """Read a YAML job spec, merge dotted ``key=value`` overrides, and validate it.

    Args:
        path: the YAML file (or None when ``data`` is given).
        overrides: e.g. ``["check.r=8", "backend.kind=fake"]`` (OmegaConf dotlist syntax).
        data: a spec as a dict, instead of a file.

    Returns:
        The validated :class:`JobSpec`.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        SpecError: bad YAML, a malformed override, an unknown key or a wrong type; the
            message names every offending key.
    """
    return validate(JobSpec, load_with_overrides(path, overrides, data, what="job spec"), what="job spec")


def load_with_overrides(path: str | Path | None, overrides: list[str] | None = None, data: dict | None = None,
                        what: str = "spec") -> dict[str, Any]:
    """A YAML file (or ``data``) with dotted ``key=value`` overrides merged in, as plain data.

    Values are typed by OmegaConf's dotlist grammar, and keys follow list indices
    (``source.0.path``). Every intgen spec (the job spec, the eval spec) is read this way.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        SpecError: bad YAML, a malformed override, or a result that is not a mapping.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p} (give the path of a YAML file, e.g. pipelines/demo.yaml)")
        try:
            base = OmegaConf.load(p)
        except Exception as e:  # yaml errors come in several types
            raise SpecError(f"{p}: not valid YAML: {e}") from e
    else:
        base = OmegaConf.create(data or {})
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"override {item!r}: expected key=value, e.g. check.r=8")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]))["value"]
            OmegaConf.update(base, key.strip(), parsed, merge=True, force_add=True)
        except (OmegaConfBaseException, TypeError, ValueError, IndexError, KeyError) as e:
            hint = ""
            head = key.strip().split(".")[0]
            if isinstance(base.get(head), (list, ListConfig)):
                hint = f" ({head} is a list: name the element, e.g. {head}.0.{'.'.join(key.strip().split('.')[1:]) or 'key'})"
            raise SpecError(f"override {item!r}: cannot apply it to the {what}{hint}: "
                            f"{str(e).splitlines()[0]}") from None
    try:
        raw = OmegaConf.to_container(base, resolve=True)
    except OmegaConfBaseException as e:
        raise SpecError(f"the {what} cannot be resolved: {e}") from e
    if not isinstance(raw, dict):
        raise SpecError(f"a {what} is a YAML mapping of keys to values")
    return raw


def validate(model: type[BaseModel], raw: dict[str, Any], what: str = "spec"):
    """``model.model_validate(raw)`` with every error turned into one message naming its key.

    Raises:
        SpecError: an unknown key, a wrong type, or a broken rule.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_format_validation_error(e).replace("invalid job spec", f"invalid {what}")) from None


def resolve_path(value: str, spec_dir: Path | None, what: str) -> Path:
    """Find a path named in a spec: as given (absolute or from the working directory),
    then relative to the spec file's folder, then among intgen's bundled files
    (``prompts/...``, ``pipelines/...``, ``data/...``: :mod:`intgen.resources`).

    Raises:
        FileNotFoundError: none exists; the message lists where it looked and names ``what``.
    """
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p] + ([spec_dir / p] if spec_dir else [])
    if not p.is_absolute() and (shipped := resources.bundled(p)) is not None:
        candidates.append(shipped)
    candidates = list(dict.fromkeys(c.resolve() for c in candidates))
    for c in candidates:
        if c.is_file():
            return c
        if c.exists():
            raise FileNotFoundError(f"{what}: {c} is a folder; give a file")
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{what}: {value} not found (looked in {looked})")
