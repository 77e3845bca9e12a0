"""Backends (docs/job-spec.md, "backend"): ``make_backend`` builds one from a spec.

``vllm`` (in process), ``openai`` (any OpenAI-compatible server), ``transformers``
(``generate`` on CPU or Apple silicon), ``fake`` (scripted) and ``sim`` (a simulated
engine on a virtual clock, for planning at scale). Heavy libraries are
imported only when their backend is built.
"""

from __future__ import annotations

from intgen.backends.base import Backend, BackendError, Completion, Request, Sampling, sample_seed
from intgen.config import BackendSpec, ExecutorSpec

__all__ = ["Backend", "BackendError", "Completion", "Request", "Sampling", "make_backend", "make_engines",
           "sample_seed"]


def make_engines(spec: BackendSpec, model: str, executor: ExecutorSpec) -> list[Backend]:
    """Build (not start) the ``executor.engines`` engines that serve one model
    (docs/scale.md): in this process (``executor.kind: local``), or one per Ray actor
    (``ray``, :mod:`intgen.backends.ray_engine`). Locally, several simulated engines share one
    virtual clock (a simulated node), and several fake engines are independent scripts.

    Raises:
        BackendError: the backend cannot be built; more than one local engine of a kind that
            would share this process's devices (vllm, transformers) or server (openai); Ray
            is missing for ``kind: ray``.
    """
    n = executor.engines
    if executor.kind == "ray":
        from intgen.backends.ray_engine import ray_engines

        return ray_engines(spec, model, executor)
    if n == 1:
        return [make_backend(spec, model)]
    if spec.kind == "sim":
        from intgen.backends.sim import SimBackend, VirtualClock

        clock = VirtualClock()
        return [SimBackend(spec.sim, clock, max_model_len=spec.max_model_len) for _ in range(n)]
    if spec.kind == "fake":
        return [make_backend(spec, model) for _ in range(n)]
    raise BackendError(f"executor.engines={n} with executor.kind=local: several {spec.kind} engines cannot share one "
                       "process; use executor.kind=ray (one engine per Ray actor: per GPU, or per "
                       "tensor_parallel_size GPUs), or shards (intgen generate --shard i/N, docs/scale.md)")


def make_backend(spec: BackendSpec, model: str) -> Backend:
    """Build (not start) the backend a spec names.

    Raises:
        BackendError: the backend is not installed or not available; the message says
            what to install or which kind to use instead.
    """
    if spec.kind == "fake":
        from intgen.backends.fake import FakeBackend, demo_script

        scripts = {"demo": demo_script}
        if spec.script not in scripts:
            raise BackendError(f"backend.script: unknown fake script {spec.script!r} (known: {', '.join(scripts)})")
        return FakeBackend(scripts[spec.script], max_model_len=spec.max_model_len)
    if spec.kind == "sim":
        from intgen.backends.sim import SimBackend

        return SimBackend(spec.sim, max_model_len=spec.max_model_len)
    if spec.kind == "vllm":
        try:
            from intgen.backends.vllm import VLLMBackend
        except ImportError as e:
            raise BackendError(
                f"backend.kind=vllm needs vLLM ({e}). On a CPU machine run ./setup.sh (vLLM's CPU build); "
                "on a GPU node: pip install -e '.[gpu]'. For a dry run without a model use backend.kind=fake."
            ) from e
        return VLLMBackend(model, spec)
    if spec.kind == "openai":
        try:
            from intgen.backends.openai_compat import OpenAIBackend
        except ImportError as e:
            raise BackendError(f"backend.kind=openai needs the openai package ({e}): pip install openai") from e
        return OpenAIBackend(model, spec)
    if spec.kind == "transformers":
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401

            from intgen.backends.hf import TransformersBackend
        except ImportError as e:
            raise BackendError(
                f"backend.kind=transformers needs PyTorch and transformers ({e}): pip install torch transformers "
                "(on a CPU machine pick the CPU build of torch, see README)") from e
        return TransformersBackend(model, spec)
    raise BackendError(f"backend.kind={spec.kind}: unknown backend (use vllm, openai, transformers, fake or sim)")
