"""Backends (DESIGN section 5): ``make_backend`` builds one from a spec."""

from __future__ import annotations

from intgen.backends.base import Backend, BackendError, Completion, Request, Sampling, sample_seed
from intgen.config import BackendSpec

__all__ = ["Backend", "BackendError", "Completion", "Request", "Sampling", "make_backend", "sample_seed"]


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
    if spec.kind == "vllm":
        try:
            from intgen.backends.vllm import VLLMBackend
        except ImportError as e:
            raise BackendError(
                f"backend.kind=vllm needs vLLM ({e}). On a CPU machine run ./setup.sh (vLLM's CPU build); "
                "on a GPU node: pip install -e '.[gpu]'. For a dry run without a model use backend.kind=fake."
            ) from e
        return VLLMBackend(model, spec)
    raise BackendError(
        f"backend.kind={spec.kind}: not available in this version of intgen yet "
        "(use backend.kind=vllm, or backend.kind=fake for a dry run)")
