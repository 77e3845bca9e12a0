"""``intgen export DIR`` and ``intgen push DIR REPO_ID [--private]``: a run as a Hugging
Face dataset with configs, locally or on the Hub (README.md, "Export and the Hub")."""

from __future__ import annotations

import argparse
import logging
import sys


def run_export(args: argparse.Namespace) -> int:
    from intgen.export import ExportError, export_run_result
    from intgen.rundir import RunDirError

    try:
        result = export_run_result(args.dir, allow_partial=args.allow_partial)
    except (FileNotFoundError, ExportError, RunDirError) as e:
        print(f"intgen export: {e}", file=sys.stderr)
        return 2
    print(f"export: {result.export_dir}")
    for config, n in result.rows.items():
        note = "" if config in result.files else "  (no rows: left out)"
        print(f"  {config:<14} {n:>7} rows{note}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from intgen.export import ExportError
    from intgen.hub import PushError, push_run
    from intgen.rundir import RunDirError

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        commit = push_run(args.dir, args.repo_id, private=args.private)
    except (PushError, FileNotFoundError, ExportError, RunDirError) as e:
        print(f"intgen push: {e}", file=sys.stderr)
        return 2
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        print(f"intgen push: the Hub refused ({status}): {e}", file=sys.stderr)
        return 1
    print(f"pushed: {commit.commit_url}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write RUN_DIR/export: the run as one Hugging Face dataset with configs "
                                      "(interventions, sft, rl, llamafactory, processbench) and its card")
    p.add_argument("dir", help="a run directory written by intgen generate")
    p.add_argument("--allow-partial", action="store_true", help="export a run that is not complete (failed requests, "
                                                                 "or stopped); the card says it is partial")
    p.set_defaults(func=run_export)

    p = sub.add_parser("push", help="export a run and push it, with its card, to a Hugging Face dataset repo "
                                    "(token: HF_TOKEN or `hf auth login`)")
    p.add_argument("dir", help="a run directory written by intgen generate")
    p.add_argument("repo_id", help="the dataset repo, NAMESPACE/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="make the repo private (also if it exists and is public)")
    p.set_defaults(func=run_push)
