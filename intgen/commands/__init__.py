"""Subcommands of the ``intgen`` CLI, one module each (see :mod:`intgen.cli`)."""
