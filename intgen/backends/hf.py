"""The transformers backend: ``AutoModelForCausalLM.generate`` on CPU, Apple silicon (mps)
or one CUDA device, for machines without vLLM (docs/job-spec.md, "backend"). Slow; small models only
(SmolLM2-135M on 2 cores: about 16 tokens/s for one sample and 25 tokens/s for a batch of 8
in ENV.md's measurements).

Threads: on CPU, PyTorch gets all cores but one (``backend.threads`` overrides). When a
core is busy with other work (the grading pool, another process), OpenMP threads wait on
each other and ``generate`` slows several-fold: on a 2-core machine with one core busy,
SmolLM2 ran at 2 tokens/s with 2 threads and 16-18 tokens/s with 1.

- Chats are rendered by :mod:`intgen.backends.templates` (the model's chat template, the
  prefix-fidelity check and its documented repairs) and the token ids go to ``generate``,
  exactly as the in-process vLLM engine gets them.
- **Per-sample seeds.** Up to ``backend.batch_size`` samples with the same ``max_tokens``
  share one ``generate`` call (left-padded), but each row draws its tokens from its own
  ``torch.Generator`` seeded with the sample's seed: a logits processor applies the
  sample's temperature, top-k and top-p and draws the token, and ``generate`` (greedy)
  takes it. The same seed gives the same text in the same batch; as with any batched
  engine, padding can change the floating-point logits slightly, so a sample generated
  in another batch may differ (``batch_size: 1`` makes every sample independent of the
  others).
- Generation runs in a worker thread (``asyncio.to_thread``), so the event loop stays
  free to grade and record; requests wait in a small queue and go out in batches, and
  each completes as its batch finishes.
- ``abort`` stops those rows at the next token (a stopping criterion).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Iterable, Sequence

from intgen.backends.base import Backend, BackendError, Completion, Request
from intgen.backends.templates import ChatRenderer, PrefixFidelityError
from intgen.config import BackendSpec
from intgen.models import materialize


def _pick_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _sampler_classes():
    """The logits processor and stopping criterion (defined lazily: torch and transformers
    are imported only when this backend is used)."""
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

    class PerRowSampler(LogitsProcessor):
        """Draws each row's next token with that row's generator and sampling parameters,
        and returns scores where only that token is finite (``generate`` then takes it)."""

        def __init__(self, rows: list[tuple[float, float, int]], seeds: list[int]):
            self.rows = rows
            self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

        def __call__(self, input_ids, scores):
            logits = scores.float().cpu()
            chosen = torch.empty(logits.shape[0], dtype=torch.long)
            for i, (temperature, top_p, top_k) in enumerate(self.rows):
                row = logits[i]
                if temperature <= 0:
                    chosen[i] = int(torch.argmax(row))
                    continue
                row = row / temperature
                # top-k, then top-p over the kept tokens' renormalized probabilities (as vLLM does)
                if 0 < top_k < row.shape[-1]:
                    values, index = torch.topk(row, top_k)
                else:
                    values, index = torch.sort(row, descending=True)
                probs = torch.softmax(values, dim=-1)
                if top_p < 1.0:
                    probs = probs * ((probs.cumsum(-1) - probs) <= top_p)  # keep the token that crosses top_p
                chosen[i] = int(index[torch.multinomial(probs, 1, generator=self.generators[i])])
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(scores.shape[0]), chosen.to(scores.device)] = 0.0
            return out

    class StopAborted(StoppingCriteria):
        def __init__(self, ids: list[str], aborted: set[str]):
            self.ids = ids
            self.aborted = aborted

        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([rid in self.aborted for rid in self.ids], device=input_ids.device)

    return PerRowSampler, StopAborted


class TransformersBackend(Backend):
    """A model loaded with transformers in this process (module docstring).

    Args:
        model: a model name (short name, Hugging Face id or local path).
        spec: the backend spec (``device``, ``dtype``, ``batch_size``, ``max_model_len``,
            ``chat_template_kwargs``).
    """

    can_continue = True

    def __init__(self, model: str, spec: BackendSpec):
        self.model_name = model
        self.spec = spec
        self.model = None
        self.tokenizer = None
        self.renderer: ChatRenderer | None = None
        self.device: str | None = None
        self._threads: int | None = None
        self._path: str | None = None
        self._aborted: set[str] = set()
        self._waiting: list[tuple[Request, list[int], asyncio.Future]] = []
        self._worker: asyncio.Future | None = None
        self._lock = threading.Lock()  # one generate at a time

    async def prepare(self) -> None:
        """The tokenizer, the chat renderer and the context length (from the model's config), without the weights."""
        if self.renderer is not None:
            return
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self._path = materialize(self.model_name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self._path)
            config = AutoConfig.from_pretrained(self._path)
        except Exception as e:
            raise BackendError(f"transformers could not load {self.model_name!r} ({self._path}): "
                               f"{type(e).__name__}: {e}") from e
        self.renderer = ChatRenderer(self.tokenizer, self.spec.chat_template_kwargs)
        self.max_model_len = self.spec.max_model_len or getattr(config, "max_position_embeddings", None)

    async def start(self) -> None:
        if self.model is not None:
            return
        await self.prepare()
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = _pick_device(self.spec.device)
        # all cores but one by default on CPU: the event loop and the grading pool need one, and
        # OpenMP threads that wait for a busy core slow generate several-fold (set around each
        # generate call only: the setting is global to the process)
        self._threads = self.spec.threads or (min(torch.get_num_threads(), max(1, (os.cpu_count() or 2) - 1))
                                              if self.device == "cpu" else None)
        dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[self.spec.dtype]
        try:
            model = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype)
        except Exception as e:
            raise BackendError(f"transformers could not load {self.model_name!r} ({self._path}): {type(e).__name__}: {e}") from e
        self.model = model.to(self.device).eval()
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = self.tokenizer.pad_token_id
        self._pad = pad if pad is not None else next(iter(self._eos), 0)

    async def close(self) -> None:
        self.model = None

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        return len(self.renderer.ids(messages, continue_final))

    @property
    def max_in_flight(self) -> int:  # type: ignore[override]
        """Two batches: one generating, one gathering."""
        return 2 * self.spec.batch_size

    async def complete(self, request: Request) -> Completion:
        if self.model is None:
            await self.start()
        try:
            rendered = self.renderer.render(request.messages, request.continue_final)
        except PrefixFidelityError:
            raise
        except Exception as e:  # one bad request never sinks the others
            return Completion(request.id, "", "error", error=f"{type(e).__name__}: {e}")
        if rendered.problem is not None:
            return Completion(request.id, "", "error", len(rendered.ids), error=rendered.problem, permanent=True)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, rendered.ids, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._batches())
        return await future

    async def _batches(self) -> None:
        """Generate the waiting requests in batches of up to ``backend.batch_size`` with the
        same sampling parameters (the oldest request's), prompts of similar length together."""
        while self._waiting:
            await asyncio.sleep(0)  # let requests sent at the same moment join the batch
            s = self._waiting[0][0].sampling
            key = (s.max_tokens, s.temperature, s.top_p, s.top_k)
            same = [it for it in self._waiting if (it[0].sampling.max_tokens, it[0].sampling.temperature,
                                                   it[0].sampling.top_p, it[0].sampling.top_k) == key]
            same.sort(key=lambda it: len(it[1]))
            batch = same[: self.spec.batch_size]
            taken = {id(it) for it in batch}
            self._waiting = [it for it in self._waiting if id(it) not in taken]
            live = []
            for r, ids, fut in batch:
                if r.id in self._aborted:
                    fut.set_result(Completion(r.id, "", "abort", len(ids)))
                else:
                    live.append((r, ids, fut))
            if not live:
                continue
            try:
                results = await asyncio.to_thread(self._generate, [(r, ids) for r, ids, _ in live])
            except Exception as e:
                results = [Completion(r.id, "", "error", len(ids), error=f"{type(e).__name__}: {e}")
                           for r, ids, _ in live]
            for (_, _, fut), c in zip(live, results):
                if not fut.done():
                    fut.set_result(c)

    def _generate(self, batch: list[tuple[Request, list[int]]]) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        PerRowSampler, StopAborted = _sampler_classes()
        width = max(len(ids) for _, ids in batch)
        input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (_, ids) in enumerate(batch):
            input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids):] = 1
        reqs = [r for r, _ in batch]
        sampler = PerRowSampler([(r.sampling.temperature, r.sampling.top_p, r.sampling.top_k) for r in reqs],
                                [r.seed for r in reqs])
        config = GenerationConfig(max_new_tokens=reqs[0].sampling.max_tokens, do_sample=False,
                                  eos_token_id=sorted(self._eos) or None, pad_token_id=self._pad)
        with self._lock, torch.inference_mode():
            before = torch.get_num_threads()
            if self._threads:
                torch.set_num_threads(self._threads)
            try:
                out = self._run_generate(input_ids, mask, config, sampler, StopAborted([r.id for r in reqs], self._aborted))
            finally:
                torch.set_num_threads(before)
        out = out[:, width:].cpu().tolist()
        results = []
        for (r, ids), gen in zip(batch, out):
            stop = next((j for j, t in enumerate(gen) if t in self._eos), None)
            tokens = gen if stop is None else gen[:stop]
            if r.id in self._aborted:
                results.append(Completion(r.id, "", "abort", len(ids), len(tokens)))
                continue
            finish = "stop" if stop is not None else "length"
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(Completion(r.id, text, finish, len(ids), len(tokens)))
        return results

    def _run_generate(self, input_ids, mask, config, sampler, stop):
        from transformers import LogitsProcessorList, StoppingCriteriaList

        return self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                   generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                                   stopping_criteria=StoppingCriteriaList([stop]))

    def abort(self, request_ids: Iterable[str]) -> None:
        self._aborted.update(request_ids)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": "transformers", "model": self.model_name, "device": self.device,
                                "dtype": self.spec.dtype, "batch_size": self.spec.batch_size,
                                "threads": self._threads,
                                "max_model_len": self.max_model_len}
        if self.renderer is not None:
            info.update(self.renderer.describe())
        return info
