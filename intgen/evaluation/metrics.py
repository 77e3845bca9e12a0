"""First-error localization metrics (ProcessBench, Zheng et al. 2024, ``code/run_eval.py``;
docs/paper.md), plus what intgen adds.

A *label* is ProcessBench's: the 0-based index of the first wrong step, or -1 when every
step is right. A *prediction* is a label, or ``None`` when the proposer gave none (its
output did not parse, or the request was never answered). ``None`` never equals a label,
so it counts as wrong in both accuracies, as an unreadable answer does in ProcessBench.

- ``acc_erroneous``: exact-match accuracy on rows with label >= 0;
- ``acc_correct``: accuracy on rows with label -1 (the prediction must be -1);
- ``f1``: their harmonic mean, ``2ab / (a + b)`` (0 when both are 0). It is *undefined*
  (``None``, with ``f1_undefined`` saying why) when one side has no rows: never 0;
- ``parse_failure_rate``: predictions that came back but did not parse, over the
  predictions that came back; rows never answered are counted in ``unanswered``;
- ``mean_signed_distance``: mean of prediction - label over erroneous rows whose
  prediction is a step (>= 0); negative means the proposer points too early (InT's
  location is where the intervention goes, at or before the error: docs/paper.md).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

#: the statuses of a prediction that came back but could not be read
PARSE_FAILED = "parse_failed"
UNANSWERED = "unanswered"


def first_error_metrics(labels: Sequence[int], predictions: Sequence[int | None],
                        statuses: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of one set of predictions against their labels.

    Args:
        labels: ProcessBench labels, -1 or a 0-based step index.
        predictions: predicted labels, or None for no prediction.
        statuses: per prediction, ``"ok"``, :data:`PARSE_FAILED` or :data:`UNANSWERED`;
            by default every None is a parse failure.

    Returns:
        A dict: ``rows``, ``erroneous``, ``correct`` (row counts), ``erroneous_hits``,
        ``correct_hits``, ``acc_erroneous``, ``acc_correct``, ``f1`` (None when
        undefined), ``f1_undefined`` (the reason, or None), ``parse_failures``,
        ``unanswered``, ``parse_failure_rate``, ``mean_signed_distance`` and
        ``distance_rows`` (how many rows it averages).
    """
    if len(labels) != len(predictions):
        raise ValueError("labels and predictions differ in length")
    if statuses is None:
        statuses = ["ok" if p is not None else PARSE_FAILED for p in predictions]
    err = [(l, p) for l, p in zip(labels, predictions) if l != -1]
    cor = [(l, p) for l, p in zip(labels, predictions) if l == -1]
    err_hits = sum(p == l for l, p in err)
    cor_hits = sum(p == -1 for _, p in cor)
    acc_err = err_hits / len(err) if err else None
    acc_cor = cor_hits / len(cor) if cor else None
    if acc_err is None and acc_cor is None:
        f1, why = None, "no rows"
    elif acc_err is None:
        f1, why = None, "no erroneous rows"
    elif acc_cor is None:
        f1, why = None, "no correct rows"
    else:
        f1 = 0.0 if acc_err + acc_cor == 0 else 2 * acc_err * acc_cor / (acc_err + acc_cor)
        why = None
    parse_failures = sum(s == PARSE_FAILED for s in statuses)
    unanswered = sum(s == UNANSWERED for s in statuses)
    answered = len(statuses) - unanswered
    dist = [p - l for l, p in err if p is not None and p >= 0]
    return {
        "rows": len(labels), "erroneous": len(err), "correct": len(cor),
        "erroneous_hits": err_hits, "correct_hits": cor_hits,
        "acc_erroneous": acc_err, "acc_correct": acc_cor, "f1": f1, "f1_undefined": why,
        "parse_failures": parse_failures, "unanswered": unanswered,
        "parse_failure_rate": parse_failures / answered if answered else None,
        "mean_signed_distance": sum(dist) / len(dist) if dist else None, "distance_rows": len(dist),
    }


def by_subset(rows: Iterable[dict], prediction_key: str = "prediction",
              status_key: str | None = "status") -> dict[str, Any]:
    """:func:`first_error_metrics` per ``subset`` and over all rows (``overall``).

    Rows are dicts with ``subset``, ``label`` and the prediction (and status) keys.
    """
    rows = list(rows)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["subset"], []).append(r)

    def metrics(rs: list[dict]) -> dict[str, Any]:
        return first_error_metrics([r["label"] for r in rs], [r[prediction_key] for r in rs],
                                   [r[status_key] for r in rs] if status_key else None)

    return {"overall": metrics(rows), "subsets": {name: metrics(groups[name]) for name in sorted(groups)}}


def mean_f1(subsets: dict[str, dict]) -> dict[str, Any]:
    """ProcessBench's headline: the mean of the subsets' F1, over the subsets where F1 is
    defined (those where it is not are named in ``left_out``)."""
    defined = {k: v["f1"] for k, v in subsets.items() if v["f1"] is not None}
    return {"value": sum(defined.values()) / len(defined) if defined else None, "subsets": sorted(defined),
            "left_out": sorted(set(subsets) - set(defined))}


def majority(predictions: Sequence[int | None]) -> int | None:
    """The most frequent prediction among those given (None ignored); a tie goes to the one
    that appeared first. None when no prediction was given."""
    given = [p for p in predictions if p is not None]
    if not given:
        return None
    counts = Counter(given)
    top = max(counts.values())
    return next(p for p in given if counts[p] == top)


def fmt_rate(value: float | None, undefined: str = "undefined") -> str:
    """A rate as a percentage with one decimal, or the word for undefined (never 0)."""
    return undefined if value is None else f"{100 * value:.1f}%"
