"""Steps of a trace, the numbered attempt shown to the proposer, and the targets.

One split serves every use (docs/pipeline.md): the numbering shown to the proposer,
the location it answers with, the check prefix and the SFT target all come from
:func:`split_steps`, so a location always means the same chunk.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

STEP_SEPARATOR = "\n\n"


def split_steps(trace: str, keep_empty: bool = False) -> list[str]:
    """Split a trace into steps on ``"\\n\\n"`` (paper section 3; docs/paper.md).

    Chunks are kept verbatim, except that empty or whitespace-only chunks (from runs of
    three or more newlines, or a leading/trailing separator) are dropped: they carry no
    content, and numbering them would show the proposer empty substeps. So
    ``"a\\n\\n\\n\\nb"`` gives ``["a", "b"]`` and ``"a\\n\\n\\nb"`` gives ``["a", "\\nb"]``.

    ``keep_empty=True`` is the paper's split (faithful mode, docs/faithful.md item 1): every
    chunk of ``trace.split("\\n\\n")`` is a step, empty ones included, so
    ``"\\n\\nA\\n\\n\\n\\nB\\n\\nC"`` gives ``["", "A", "", "B", "C"]`` (step 3 is the empty
    chunk between A and B), and an empty trace gives ``[""]``.

    Returns:
        The steps, in order; step ``i`` (1-based, as the proposer sees it) is ``steps[i-1]``.
        An empty or whitespace-only trace gives ``[]`` (``[""]`` with ``keep_empty``).
    """
    if keep_empty:
        return trace.split(STEP_SEPARATOR)
    return [chunk for chunk in trace.split(STEP_SEPARATOR) if chunk.strip()]


def number_steps(steps: list[str], start: int = 1) -> str:
    """Render steps as the proposer sees them: ``**Substep i:** text``, joined by ``\\n\\n``.

    Numbering is 1-based (docs/paper.md: the released code relabels each chunk this way).
    """
    return STEP_SEPARATOR.join(f"**Substep {i}:** {s}" for i, s in enumerate(steps, start))


class NumberedAttempt(NamedTuple):
    """A numbered attempt as shown to the proposer; ``omitted`` is the range of step
    numbers left out for length (None when every step is shown)."""

    text: str
    omitted: range | None = None

    @property
    def shortened(self) -> bool:
        return self.omitted is not None


def numbered_attempt(steps: list[str], fits: Callable[[str], bool] | None = None) -> NumberedAttempt | None:
    """The numbered attempt, shortened when it would not fit the context.

    docs/pipeline.md: when the rendered chat would not fit, shorten the student attempt
    (keep its start and the steps around the end), never cut the rendered prompt. The
    omitted middle is replaced by one line naming the omitted substeps, and the kept
    steps keep their original numbers, so a location still names the same step.

    Args:
        steps: from :func:`split_steps`.
        fits: returns True when the whole proposer chat with this attempt text fits;
            None means no limit.

    Returns:
        A :class:`NumberedAttempt`, or None when even the first and last step alone do not fit.
    """
    full = number_steps(steps)
    if fits is None or fits(full):
        return NumberedAttempt(full)
    n = len(steps)

    def render(head: int, tail: int) -> str:
        parts = [number_steps(steps[:head])] if head else []
        parts.append(f"**Substeps {head + 1}-{n - tail}:** [omitted for length]")
        parts.append(number_steps(steps[n - tail:], start=n - tail + 1))
        return STEP_SEPARATOR.join(parts)

    for head in (min(3, n - 1), 1, 0):
        # largest tail (steps around the end) that fits, by binary search
        lo, hi, best = 1, n - head - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            text = render(head, mid)
            if fits(text):
                best, lo = NumberedAttempt(text, range(head + 1, n - mid + 1)), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return best
    return None


def build_target(steps: list[str], location: int, intervention: str, double_newlines: bool = False,
                 any_location: bool = False) -> str:
    """The partial trace that continuations start from and SFT trains on.

    The intervention replaces step ``location`` and everything after it (docs/pipeline.md;
    paper Algorithm 1): steps ``1..location-1`` joined by ``\\n\\n``, then
    ``\\n\\n``, then the intervention; the intervention alone for location 1.
    ``double_newlines=True`` reproduces the paper's code, which replaced every ``\\n``
    in the intervention by ``\\n\\n`` (docs/paper.md, the faithful preset).

    ``any_location=True`` (faithful mode, docs/faithful.md item 2) takes any integer, as the
    paper's code did with Python slicing: a location past the last step keeps the whole
    attempt before the intervention, and a location below 1 keeps ``steps[:location - 1]``
    as Python slices it (location 0: every step but the last).

    Raises:
        ValueError: ``location`` is not in ``1..len(steps)`` (without ``any_location``).
    """
    if not any_location and not 1 <= location <= len(steps):
        raise ValueError(f"location {location} is outside 1..{len(steps)}")
    text = intervention.replace("\n", "\n\n") if double_newlines else intervention
    if location == 1:
        return text
    return STEP_SEPARATOR.join(steps[: location - 1]) + STEP_SEPARATOR + text


def baseline_target(steps: list[str], location: int, any_location: bool = False) -> str:
    """The baseline's partial trace: steps ``1..location`` (the prefix plus the original
    erroneous step), so its success rate is comparable with the intervention's (paper
    Table 1, row "x + prefix + original erroneous step"). ``any_location=True`` (faithful
    mode) takes a location past the last step too: the whole attempt.

    Raises:
        ValueError: ``location`` is not in ``1..len(steps)`` (with ``any_location``: below 1).
    """
    if any_location and location >= 1:
        return STEP_SEPARATOR.join(steps[:location])
    if not 1 <= location <= len(steps):
        raise ValueError(f"location {location} is outside 1..{len(steps)}")
    return STEP_SEPARATOR.join(steps[:location])
