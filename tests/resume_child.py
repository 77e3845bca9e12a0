"""Child process for tests/test_resume.py: runs the scripted pipeline of test_pipeline.py
in its own process, logging every request the backend receives, and kills itself
(SIGKILL, no cleanup) at a chosen point.

usage: python resume_child.py OUT_DIR PROBLEMS_FILE CALLS_LOG KILL
KILL: "none", "calls:N" (during the N-th backend request), "after:FILE" (right after
FILE is written), or "during:FILE" (FILE's temporary file written, not yet renamed).
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_pipeline  # noqa: E402  (the scripted problems and replies)

from intgen import tables  # noqa: E402
from intgen.backends.fake import FakeBackend  # noqa: E402
from intgen.runner import run_job  # noqa: E402

out_dir, problems_file, calls_log, kill = (sys.argv[1:5] + ["", "", "", "none"])[:4]
GROUP, WINDOW = 4, 2


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def script(request):
    with open(calls_log, "a") as f:
        f.write(request.id + "\n")
        f.flush()
        os.fsync(f.fileno())
    if kill.startswith("calls:"):
        with open(calls_log) as f:
            if sum(1 for _ in f) == int(kill.split(":")[1]):
                die()
    reply = test_pipeline.script(request)
    return "no tag here" if isinstance(reply, Exception) else reply  # no failed requests: they are re-sent


if __name__ == "__main__":  # the grading pool spawns workers that import this module
    if kill.startswith(("after:", "during:")):
        when, target = kill.split(":", 1)
        original = tables._atomic_write

        def patched(path, write):
            if Path(path).name != target:
                return original(path, write)
            if when == "during":
                def write_then_die(tmp):
                    write(tmp)
                    die()
                return original(path, write_then_die)
            original(path, write)
            die()

        tables._atomic_write = patched

    # small store groups and window, so the tests can bound what a kill loses
    spec = test_pipeline.make_spec(problems_file, "grading.workers=1", f"executor.store_group_size={GROUP}",
                                   f"executor.window={WINDOW}")
    run_job(spec, out_dir, backend=FakeBackend(script), progress=False)
