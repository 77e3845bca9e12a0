"""``intgen view RUN [--out FILE.html]``: a self-contained HTML page of a run (docs/view.md)."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from intgen.view import ViewError, write_view

    try:
        sizes = {k: v for k, v in (("max_chars", args.max_chars), ("page_size", args.page_size)) if v is not None}
        out = write_view(args.run_dir, args.out, math=not args.no_math, **sizes)
    except (ViewError, IsADirectoryError) as e:
        print(f"intgen view: {e}", file=sys.stderr)
        return 2
    print(f"view: {out} ({out.stat().st_size / 2**20:.1f} MiB); open it in a browser (it needs no network)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("view", help="write one self-contained HTML page of a run: funnel, plots, reject reasons, and "
                                    "every parsed candidate (failed trace, blamed step, intervention, continuations)")
    p.add_argument("run_dir", help="a run directory written by intgen generate")
    p.add_argument("--out", default=None, help="the HTML file to write (default: RUN_DIR/view.html)")
    p.add_argument("--page-size", type=int, default=None, choices=(10, 20, 50, 100),
                   help="cards per page when the page opens (default 20)")
    p.add_argument("--max-chars", type=int, default=None,
                   help="cut continuation texts and proposer outputs to this many characters, keeping their start and "
                        "end (default 4000, less above 4,000 candidates so they total about 64 MB); "
                        "problems, steps and interventions are never cut")
    p.add_argument("--no-math", action="store_true", help="leave LaTeX as written (the page then carries no math "
                                                          "renderer, about 180 kB less)")
    p.set_defaults(func=run)
