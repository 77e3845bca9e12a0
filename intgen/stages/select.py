"""Select stage: accept candidates by their checks and pick which reach the ``sft`` view
(DESIGN section 1). No model call."""

from __future__ import annotations

from collections import defaultdict


def accept(check_correct: int, min_correct: int) -> bool:
    """Accepted when at least ``min_correct`` continuations are correct (the paper: 1 of 32,
    digest 2.6)."""
    return check_correct >= min_correct


def select(rows: list[dict], per_rollout: str) -> set[str]:
    """The candidate ids that reach the ``sft`` view.

    Args:
        rows: interventions rows with ``rollout_id``, ``candidate_index``, ``accepted``,
            ``reject_reason`` and ``check_rate``.
        per_rollout: ``best`` (the accepted candidate with the highest success rate, ties
            by lower index), ``all`` (every accepted one), or ``first`` (the paper's
            choice, digest 2.5: the first candidate that parsed without leaking, kept
            only if it is accepted).

    Raises:
        ValueError: an unknown ``per_rollout``.
    """
    by_rollout: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_rollout[row["rollout_id"]].append(row)
    chosen: set[str] = set()
    for group in by_rollout.values():
        group.sort(key=lambda r: r["candidate_index"])
        accepted = [r for r in group if r["accepted"]]
        if per_rollout == "all":
            chosen.update(r["candidate_id"] for r in accepted)
        elif per_rollout == "best":
            if accepted:
                # a null rate (early stop) ranks by being accepted alone, after measured rates
                best = max(accepted, key=lambda r: (r["check_rate"] is not None, r["check_rate"] or 0.0, -r["candidate_index"]))
                chosen.add(best["candidate_id"])
        elif per_rollout == "first":
            parsed = [r for r in group if r["reject_reason"] != "answer_leak"]
            if parsed and parsed[0]["accepted"]:
                chosen.add(parsed[0]["candidate_id"])
        else:
            raise ValueError(f"select.per_rollout: unknown choice {per_rollout!r} (best, all, first)")
    return chosen
