"""Engines as Ray actors (``executor.kind: ray``; docs/scale.md, "Ray").

Each engine is one Ray actor that builds and runs an ordinary backend (vLLM on its GPUs, or
any other kind) in its own process, anywhere in the Ray cluster. The driver keeps one
:class:`RayEngine` per actor: a :class:`~intgen.backends.base.Backend` whose
:meth:`~RayEngine.complete` is a call to its actor, so the executor (:mod:`intgen.executor`)
treats the N actors as N engines (lanes) with their own queue and window, and everything else
stays on the driver: the run directory, the sample store, grading and the tables. Prompts
are rendered, counted and clamped on the driver by a *local* backend of the same kind that is
prepared (tokenizer, context length) but never started, so store keys are the same as in a
one-engine run.

Faults, through Ray's actor fault tolerance (Ray docs, "Actor Fault Tolerance"): an actor is
created with ``max_restarts`` (``executor.ray.max_restarts``) and ``max_task_retries=-1``, so
when its process dies Ray starts it again (its backend is rebuilt and restarted on the first
request) and sends it again every call that had no answer; answers that arrived were stored
on the driver as usual, so nothing is lost and nothing is generated twice. An actor that
died more than ``max_restarts`` times stops the run (:class:`BackendError`); the run resumes
like any other.

``ray.init()`` joins the cluster at ``executor.ray.address`` or ``RAY_ADDRESS``, else starts
a local one (``executor.ray.num_cpus`` logical CPUs, no dashboard). Workers import intgen:
on a cluster, install it on every node (or give Ray a ``runtime_env``).
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, Callable, Iterable, Sequence

from intgen.backends.base import Backend, BackendError, Completion, Request

#: what builds an engine's backend inside its actor (picklable: a module-level function or a partial)
Factory = Callable[[], Backend]


def connect(address: str | None = None, num_cpus: int | None = None, engines: int = 1,
            cpus_per_engine: float = 1.0) -> None:
    """Join a Ray cluster, or start a local one; nothing when Ray is already initialized.

    Args:
        address: a cluster address (None: ``RAY_ADDRESS``, else a new local cluster).
        num_cpus: a local cluster's logical CPUs (None: enough for ``engines`` engines of
            ``cpus_per_engine`` CPUs, and at least this machine's cores).

    Raises:
        BackendError: Ray is not installed.
    """
    try:
        import ray
    except ImportError as e:
        raise BackendError(f"executor.kind=ray needs Ray ({e}): pip install 'intgen[ray]'") from e
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        need = int(-(-engines * cpus_per_engine // 1))
        ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, need), include_dashboard=False)


class _EngineActor:
    """The actor (made a Ray actor class by :func:`_actor_class`): builds its backend on the
    first call, after every restart too."""

    def __init__(self, factory: Factory):
        self.factory = factory
        self.backend: Backend | None = None
        self.lock: asyncio.Lock | None = None

    async def _ready(self) -> Backend:
        if self.backend is None:
            self.lock = self.lock or asyncio.Lock()
            async with self.lock:
                if self.backend is None:
                    backend = self.factory()
                    await backend.prepare()
                    await backend.start()
                    self.backend = backend
        return self.backend

    async def start(self) -> int:
        await self._ready()
        return os.getpid()

    async def complete(self, request: Request) -> Completion:
        return await (await self._ready()).complete(request)

    async def abort(self, request_ids: list[str]) -> None:
        if self.backend is not None:
            self.backend.abort(request_ids)

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.close()
            self.backend = None


@functools.lru_cache(maxsize=None)
def _actor_class():
    import ray

    return ray.remote(_EngineActor)


class RayEngine(Backend):
    """One engine on a Ray actor (module docstring).

    Args:
        factory: builds the engine's backend inside the actor (e.g.
            ``functools.partial(make_backend, backend_spec, model)``).
        local: a backend of the same kind, prepared but never started, that renders and
            counts prompts on the driver (None: ``factory()`` on the driver).
        num_cpus, num_gpus: the actor's Ray resources; ``num_gpus`` None: :func:`gpus_per_engine`
            of the local backend's kind, found when the actor starts.
        max_restarts: restarts of a dead actor before the run stops.
        name: the engine's name in logs and the manifest.
        address, cluster_cpus: where :func:`connect` finds or starts the cluster.
        kind, engine_args: the backend kind and ``backend.engine_args``, for :func:`gpus_per_engine`.
    """

    def __init__(self, factory: Factory, local: Backend | None = None, *, num_cpus: float = 0.0,
                 num_gpus: float | None = 0.0, max_restarts: int = 3, name: str = "engine-0",
                 address: str | None = None, cluster_cpus: int | None = None, engines: int = 1,
                 kind: str = "", engine_args: dict[str, Any] | None = None):
        self.factory = factory
        self.local = local if local is not None else factory()
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts,
                        "max_task_retries": -1}
        self.name = name
        self.address, self.cluster_cpus, self.engines = address, cluster_cpus, engines
        self.kind, self.engine_args = kind, dict(engine_args or {})
        self.actor: Any = None
        self.pid: int | None = None
        self.can_continue = self.local.can_continue

    # the driver side: rendering, counting, clamping
    async def prepare(self) -> None:
        await self.local.prepare()
        self.max_model_len = self.local.max_model_len
        self.can_continue = self.local.can_continue

    @property
    def max_in_flight(self) -> int | None:  # type: ignore[override]
        return self.local.max_in_flight

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        return self.local.count_prompt_tokens(messages, continue_final)

    # the actor side
    async def start(self) -> None:
        """Start the actor and its engine (model loaded) and wait until it is ready.

        Raises:
            BackendError: the actor or its engine cannot start (the message says why).
        """
        if self.actor is not None:
            return
        import ray

        connect(self.address, self.cluster_cpus, self.engines, self.options["num_cpus"] or 0)
        if self.options["num_gpus"] is None:
            self.options["num_gpus"] = gpus_per_engine(self.kind, self.engine_args,
                                                       ray.cluster_resources().get("GPU", 0))
        self.actor = _actor_class().options(name=None, **self.options).remote(self.factory)
        try:
            self.pid = await self.actor.start.remote()
        except ray.exceptions.RayError as e:
            raise BackendError(f"{self.name}: the engine actor could not start: {_cause(e)}") from None

    async def complete(self, request: Request) -> Completion:
        import ray

        try:
            return await self.actor.complete.remote(request)
        except ray.exceptions.RayTaskError as e:  # the backend raised: a BackendError stops the run
            cause = e.as_instanceof_cause()
            raise (cause if isinstance(cause, BackendError) else BackendError(f"{self.name}: {_cause(e)}")) from None
        except ray.exceptions.RayActorError as e:
            raise BackendError(f"{self.name}: the engine actor died more than {self.options['max_restarts']} times "
                               f"(executor.ray.max_restarts): {_cause(e)}; resume the run when the cause is fixed") \
                from None

    def abort(self, request_ids: Iterable[str]) -> None:
        if self.actor is not None:
            self.actor.abort.remote(list(request_ids))

    async def close(self) -> None:
        if self.actor is None:
            return
        import ray

        try:
            await asyncio.wait_for(self.actor.close.remote(), timeout=60)
        except Exception:  # noqa: BLE001  (a dead or stuck actor is killed below anyway)
            pass
        ray.kill(self.actor)
        self.actor = None

    def describe(self) -> dict[str, Any]:
        return {**self.local.describe(), "executor": "ray", "engine": self.name,
                "ray": {k: self.options[k] for k in ("num_cpus", "num_gpus", "max_restarts")}}


def _cause(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def gpus_per_engine(kind: str, engine_args: dict[str, Any], cluster_gpus: float) -> float:
    """The GPUs one engine takes: a vLLM engine takes ``tensor_parallel_size`` x
    ``pipeline_parallel_size`` GPUs when the cluster has GPUs; anything else none."""
    if kind != "vllm" or cluster_gpus <= 0:
        return 0.0
    return float(int(engine_args.get("tensor_parallel_size", 1)) * int(engine_args.get("pipeline_parallel_size", 1)))


def ray_engines(spec: Any, model: str, executor: Any) -> list[Backend]:
    """``executor.engines`` engines of ``spec`` (a :class:`~intgen.config.BackendSpec`) on Ray
    actors; connects to (or starts) the cluster to learn whether it has GPUs.

    Raises:
        BackendError: Ray is missing, or the backend kind cannot run on an actor (sim).
    """
    from intgen.backends import make_backend

    if spec.kind == "sim":
        raise BackendError("backend.kind=sim runs on a virtual clock in the driver: use executor.kind=local with "
                           "executor.engines=N to simulate N engines")
    r = executor.ray
    factory = functools.partial(make_backend, spec, model)
    local = make_backend(spec, model)  # one, shared: it only renders and counts prompts on the driver
    return [RayEngine(factory, local, num_cpus=r.cpus_per_engine,
                      num_gpus=r.gpus_per_engine, max_restarts=r.max_restarts, name=f"engine-{i}", address=r.address,
                      cluster_cpus=r.num_cpus, engines=executor.engines, kind=spec.kind,
                      engine_args=spec.engine_args)
            for i in range(executor.engines)]
