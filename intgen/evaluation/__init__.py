"""Evaluation: first-error localization against human labels (:mod:`.localize`, with
ProcessBench's metrics in :mod:`.metrics`) and the paper's lift table for a run
(:mod:`.lift`). The CLI is ``intgen eval`` (:mod:`intgen.commands.eval`)."""
