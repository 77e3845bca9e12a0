"""intgen: intervention datasets for training LLMs to reason.

Implements the data side of InT (Yang et al., 2026, "Self-Proposed Interventions Enable
Credit Assignment in LLM Reasoning", arXiv 2601.14209): rollouts, first-error
localization and single-step intervention proposals, continuation checks, and export.
"""

__version__ = "0.1.0"
