"""The ``intgen`` command line.

Each command lives in its own module, which exposes ``register(subparsers)``: it adds its
parser and sets ``func`` to a function ``(args) -> exit status``. :data:`COMMANDS` lists
those modules; a command's imports of heavy libraries happen inside its ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from intgen import __version__

#: modules that provide subcommands, in the order ``--help`` lists them
COMMANDS = ["intgen.commands.generate", "intgen.commands.plan", "intgen.commands.pipelines", "intgen.commands.inspect",
            "intgen.commands.check_server", "intgen.commands.export", "intgen.commands.merge", "intgen.commands.view", "intgen.commands.eval",
            "intgen.commands.train", "intgen.commands.rounds"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intgen", description="Intervention datasets for training LLMs to reason (InT).")
    parser.add_argument("--version", action="version", version=f"intgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``intgen`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops collecting them at the first option)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
