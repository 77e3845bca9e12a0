"""Child process for the vLLM kill-and-resume test: runs the demo's settings on the
dataset subsets (pipelines/demo-datasets.yaml, where SmolLM2 fails nearly every rollout,
so the check stage has work) on vLLM's CPU build, logs the ids of the requests sent to
the engine, and with KILL=N kills itself (SIGKILL) once N check continuations have been
answered and committed to the store.

usage: python vllm_resume_child.py OUT_DIR SENT_LOG KILL
"""

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(out_dir: str, sent_log: str, kill: int) -> None:
    from intgen.backends.vllm import VLLMBackend
    from intgen.config import load_spec
    from intgen.runner import run_job
    from intgen.store import SampleStore

    complete, put = VLLMBackend.complete, SampleStore.put
    stored = 0

    async def logged(self, request):
        with open(sent_log, "a") as f:
            f.write(request.id + "\n")
        return await complete(self, request)

    def put_and_commit(self, key, stage, completion):
        nonlocal stored
        put(self, key, stage, completion)
        self.flush()  # committed: a resume must not ask for it again
        if kill and completion.request_id.split("/")[-1].startswith("continuation-"):
            stored += 1
            if stored >= kill:
                os.kill(os.getpid(), signal.SIGKILL)

    VLLMBackend.complete = logged
    SampleStore.put = put_and_commit
    spec = load_spec(ROOT / "pipelines" / "demo-datasets.yaml", ["limit=2", "rollout.k=2", "propose.m=2", "check.r=3",
                                                         "sampling.max_tokens=96", "grading.workers=1"])
    run_job(spec, out_dir, spec_dir=ROOT / "pipelines", progress=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
