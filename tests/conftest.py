import asyncio
import threading

import pytest

from intgen.grading_pool import GradingPool


@pytest.fixture(scope="session")
def grader():
    """One grading pool for the session (its workers take a second or two to start)."""
    with GradingPool(workers=1) as pool:
        yield pool


class EngineHost:
    """An event loop in a thread that owns the session's vLLM engine: vLLM's async engine
    is bound to the loop it started in, and each test's ``asyncio.run`` would be a new
    loop. ``run(coro)`` runs a coroutine there and returns its result."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-engine-host", daemon=True)
        self.thread.start()

    def run(self, coro, timeout=1800):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def vllm_engine():
    """The one in-process vLLM engine of the test session (SmolLM2-135M-Instruct on vLLM's
    CPU build, context 8192), shared by every test that needs a real model in process:
    ``host, backend = vllm_engine``; run coroutines with ``host.run(...)``."""
    pytest.importorskip("vllm", reason="vLLM is not installed (./setup.sh installs vLLM's CPU build)")
    from intgen.backends.vllm import VLLMBackend
    from intgen.config import BackendSpec

    host = EngineHost()
    backend = VLLMBackend("smollm2-135m-instruct", BackendSpec(max_model_len=8192))
    host.run(backend.start())
    try:
        yield host, backend
    finally:
        host.run(backend.close())
        host.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "consumers: loads an exported view with a trainer's own code in its own "
                                       "virtual environment (tests/consumers/setup_consumers.sh builds them)")
