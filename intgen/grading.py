"""Answer grading: boxed-answer extraction and math-verify comparison.

Every rollout, continuation and answer-leak check in intgen is graded here, so the
rules are strict and written down. Sources:

* [design] the project design notes (answer = last complete box, cut-off outputs have no
  answer, gold checked before any model call, verdicts never raise);
* [InT] the InT paper's grader (arXiv 2601.14209): math-verify ``parse`` with
  ``LatexExtractionConfig()`` and ``ExprExtractionConfig()`` on both sides, then
  ``verify(gold, pred)``;
* [MV#n] known wrong verdicts reported on huggingface/Math-Verify issue or PR n, each
  re-measured on math-verify 0.9.0 / latex2sympy2_extended 1.11.0 before being overridden.

Pipeline for one output::

    gold --normalise--> parse(\\boxed{gold}) ----------------------------.
    output --finish_reason=="length"?--> no_answer                        |
           --extract_boxed--> None -> no_answer                          v
                          --> content --normalise--> parse --> verify(gold, pred) per pair
                                                                        --> small-value guard

Statuses: ``correct`` / ``wrong`` (a real comparison happened), ``no_answer`` (the model
gave no final answer we may judge), ``ungradable`` (a parse failure, a math-verify
exception or timeout, or a gold answer that does not parse).

Policy overrides of math-verify (each has a test in tests/test_grading.py):

1. Only the content of the last complete box is judged [design]. math-verify on a whole
   output falls back to the last number anywhere in the text; intgen never does.
2. No fragments [design, MV#82, MV#81]: the box content is parsed as LaTeX first. If that
   yields no sympy object, the plain-expression extractor is accepted only when its match
   covers the whole content; otherwise the prediction is ``ungradable`` ("prediction does
   not parse"). Case: ``10^{10}`` alone through ``ExprExtractionConfig`` gives ``10``, and
   ``1 - \\frac{1}{\\mathrm{e}}`` gives ``1``; intgen never judges such a fragment.
3. Small-value guard [MV#14, MV#21]: math-verify rounds floats to 6 decimals and chops
   differences below 1e-15, so ``\\frac{1}{2^{99}}`` equals ``\\frac{1}{2^{98}}`` and
   ``0.0000001`` equals ``0.0000002``. When math-verify says equal for two plain numbers
   whose absolute difference is below ``_ROUNDING_ZONE`` (where only its rounding can
   explain equality), intgen also requires a relative difference <= ``REL_TOL`` (1e-5),
   or, for a gold written as a decimal, agreement to half a unit in the gold's last digit
   (gold ``0.000123`` accepts ``\\frac{1}{8100}``). ``1/3`` vs ``0.333333`` (relative 1e-6)
   stays correct. Sets, tuples and intervals are not guarded (a limitation).
4. Digit grouping [MV#44 area; measured]: a whole answer that is a number grouped in
   threes with ``,``, ``{,}``, ``\\,``, ``\\ ``, ``\\!``, ``~`` or a space has the separators
   removed. Case: math-verify reads ``1\\,000`` and ``1 000`` as ``1*0 = 0``. The first group
   must not start with 0 (``0,100`` is left to math-verify, which reads it as 0.1), and a
   group that is not exactly three digits (``12,34``) is left alone (a two-element list).
5. Euler's number and the imaginary unit in roman type: ``\\mathrm{e}``, ``\\text{e}``,
   ``\\operatorname{e}``, ``\\mathit{e}`` become ``e`` (and the same for ``i``). Case:
   math-verify cannot parse ``\\frac{1}{\\mathrm{e}}`` (so gold ``1-\\frac{1}{\\mathrm{e}}``
   would be rejected) and reads ``3+2\\mathrm{i}`` as ``2 + 3``, silently dropping the unit.
6. Trailing period: ``\\boxed{5.}`` does not parse in math-verify (string fallback only);
   a final ``.`` (not ``...``) is stripped.
7. Surrounding math delimiters ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]`` and a
   redundant inner ``\\boxed{...}`` are stripped, so ``answers_match`` can take answers as
   they appear in text.

Handled by math-verify itself (tested, not overridden): ``\\dfrac``/``\\tfrac``;
``\\text{...}`` units after a number (``5 \\text{ cm}`` == 5); ``1,000`` == 1000;
``50\\%`` vs ``50`` and ``0.5``; ``\\text{Evelyn}`` vs ``Evelyn``; ``\\pm 2021`` vs
``2021`` is wrong; a strict subset of a gold set is wrong (MV#47, fixed upstream).

Gold wrapping: both gold answers and box contents are parsed as ``\\boxed{...}``, not
``$...$``. The two wrappers give the same parse on every case measured except that
``$...$`` breaks when the answer itself holds a ``$`` (``\\$5``, ``\\text{costs $5}``), while
the boxed extractor takes exactly the brace-balanced content. Box contents are
brace-balanced by construction; a gold with unbalanced braces does not parse.

Timeouts: math-verify's own timeouts use ``signal.alarm``, which only works in the main
thread; off the main thread intgen passes ``None`` (no timeout) so that it never raises
there. The planned process pool runs grading in each worker's main thread, where the
alarm works.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from itertools import product
from typing import Literal, NamedTuple, Sequence

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

__all__ = [
    "Status",
    "Verdict",
    "extract_boxed",
    "gold_parses",
    "answers_match",
    "grade_answer",
    "grade_many",
    "REL_TOL",
]

Status = Literal["correct", "wrong", "no_answer", "ungradable"]

#: Relative tolerance of the small-value guard (override 3).
REL_TOL = 1e-5
#: Absolute differences below this are where math-verify's 6-decimal rounding / chop can
#: make two different numbers equal; only there does the small-value guard apply.
_ROUNDING_ZONE = 1e-5
#: Seconds per math-verify parse / comparison (main thread only, see module doc).
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5

_LATEX_CONFIG = (LatexExtractionConfig(),)
_EXPR_CONFIG = (ExprExtractionConfig(),)

REASON_CORRECT = "matches gold"
REASON_WRONG = "does not match gold"
REASON_NO_BOX = "no \\boxed{} in output"
REASON_UNBALANCED = "last \\boxed{} is unbalanced (cut off)"
REASON_EMPTY = "empty \\boxed{}"
REASON_LENGTH = "output cut off at the token limit"
REASON_PRED_UNPARSED = "prediction does not parse"
REASON_GOLD_UNPARSED = "gold answer does not parse"


@dataclass(frozen=True)
class Verdict:
    """The grade of one model output against one gold answer.

    ``status`` is one of ``correct``, ``wrong``, ``no_answer``, ``ungradable``;
    ``reason`` is a short human explanation; ``extracted`` is the box content that was
    judged, or None when nothing was judged (no box, cut-off output, empty box).
    """

    status: Status
    reason: str
    extracted: str | None


# --------------------------------------------------------------------------- extraction

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_TOKEN = re.compile(r"[^\s${}]+")
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)


def _brace_matches(text: str) -> dict[int, int]:
    """Map each ``{`` that closes to its ``}`` (one linear pass; ``\\{``/``\\}`` skipped).

    Matching with a stack gives, for every opening brace, the same closing brace as
    counting depth from that brace, so each box is read in O(1) afterwards and a
    degenerate output with thousands of open boxes stays linear.
    """
    matches: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKENS.finditer(text):
        ch = m.group(0)
        if ch == "{":
            stack.append(m.start())
        elif ch == "}" and stack:
            matches[stack.pop()] = m.start()
        # anything else is an escape such as \{ or \\, which is skipped
    return matches


def _read_box(
    text: str, cmd_end: int, matches: dict[int, int] | None = None
) -> tuple[str, int] | None:
    """Read the argument of a box command ending at ``cmd_end``.

    Returns ``(content, end)`` where ``end`` is just past the argument, or None when the
    braced argument never closes (unbalanced) or the text ends right after the command.
    ``\\boxed 5`` (whitespace, then a single token) is accepted as in TeX; a token stops at
    whitespace, ``$`` or a brace. ``matches`` is ``_brace_matches(text)`` when the caller
    has it.
    """
    i = cmd_end
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] == "{":
        if matches is None:
            matches = _brace_matches(text)
        close = matches.get(i)
        if close is None:
            return None
        return text[i + 1 : close], close + 1
    m = _BOX_TOKEN.match(text, i)
    if m is None:  # "\\boxed$" or "\\boxed}": nothing in the box
        return "", i
    return m.group(0), m.end()


def extract_boxed(text: str) -> str | None:
    """Return the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Rules [design]:

    * The answer is the content of the last box command in the text that is not inside
      another complete box, and only that one. In ``\\boxed{\\boxed{5}}`` the outer box is
      the answer (its content ``\\boxed{5}`` is unwrapped by the normaliser).
    * ``\\boxed 5`` (the command, whitespace, then one token) counts, as in TeX.
    * If that last box has unbalanced braces (the output was cut off inside it) there is
      no answer, and no earlier box is used either: the model wrote a later box, so it
      had retracted the earlier one.
    * A complete box written after an unbalanced one (a restart) is the last box.
    * No box at all gives None; the last stray number in the text is never used.

    Returns the raw content (not stripped of whitespace), ``""`` for ``\\boxed{}``, or None.
    """
    if "box" not in text:
        return None
    matches = _brace_matches(text)
    last: str | None = None
    skip_until = 0
    for m in _BOX_CMD.finditer(text):
        if m.start() < skip_until:
            continue  # inside an earlier complete box
        read = _read_box(text, m.end(), matches)
        if read is None:
            last = None  # unbalanced: only a later complete box can replace it
            continue
        last, skip_until = read
    return last


# --------------------------------------------------------------------------- normalisation

_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_ROMAN_CONST = re.compile(r"\\(?:mathrm|text|operatorname|mathit|textrm)\s*\{\s*([ei])\s*\}")
_GROUPED_NUMBER = re.compile(
    r"(-?)([1-9]\d{0,2}(?:(?:,|\{,\}|\\,|\\ |\\!|~| )\d{3})+)(\.\d+)?"
)
_GROUP_SEP = re.compile(r",|\{,\}|\\,|\\ |\\!|~| ")


def _strip_delims(s: str) -> str:
    changed = True
    while changed:
        changed = False
        s = s.strip()
        for left, right in _DELIMS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                inner = s[len(left) : len(s) - len(right)]
                if left == "$" and "$" in inner:
                    continue  # "$a$ and $b$" is not one wrapped answer
                s = inner
                changed = True
                break
        m = _BOX_CMD.match(s)
        if m is not None:
            read = _read_box(s, m.end())
            if read is not None and read[1] == len(s):
                s = read[0]
                changed = True
    return s


def _normalise(answer: str) -> str:
    """Light normalisation applied to gold answers and box contents alike.

    See overrides 4-7 in the module docstring: delimiters and a redundant inner box are
    stripped, a trailing period is removed, digit-group separators of a whole grouped
    number are removed, and roman ``e``/``i`` become the constants math-verify knows.
    """
    s = _strip_delims(answer)
    if s.endswith(".") and not s.endswith(".."):
        s = _strip_delims(s[:-1])
    s = _ROMAN_CONST.sub(r"\1", s)
    m = _GROUPED_NUMBER.fullmatch(s)
    if m is not None:
        s = m.group(1) + _GROUP_SEP.sub("", m.group(2)) + (m.group(3) or "")
    return s


# --------------------------------------------------------------------------- parsing

class _Parsed(NamedTuple):
    items: tuple  # math-verify's parse result: sympy objects and strings
    error: str | None  # set when math-verify raised or timed out


def _timeouts() -> tuple[int | None, int | None]:
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


def _has_sympy(items: Sequence) -> bool:
    return any(isinstance(x, (sympy.Basic, sympy.MatrixBase)) for x in items)


def _squash(s: str) -> str:
    return re.sub(r"[\s,]", "", s)


@functools.lru_cache(maxsize=4096)
def _parse_answer(answer: str) -> _Parsed:
    """Parse an already-extracted answer (gold or box content) with math-verify.

    LaTeX extraction on ``\\boxed{answer}`` first; plain-expression extraction only when
    its match covers the whole answer (override 2). Never raises.
    """
    s = _normalise(answer)
    if not s:
        return _Parsed((), None)
    parse_timeout, _ = _timeouts()
    try:
        items = parse(
            "\\boxed{" + s + "}",
            extraction_config=_LATEX_CONFIG,
            parsing_timeout=parse_timeout,
            raise_on_error=True,
        )
        if _has_sympy(items):
            return _Parsed(tuple(items), None)
        expr = parse(
            s,
            extraction_config=_EXPR_CONFIG,
            parsing_timeout=parse_timeout,
            raise_on_error=True,
        )
        if (
            _has_sympy(expr)
            and isinstance(expr[-1], str)
            and _squash(expr[-1]) == _squash(s)
        ):
            return _Parsed(tuple(expr), None)
        return _Parsed((), None)
    except TimeoutException:
        return _Parsed((), "math-verify timed out while parsing")
    except Exception as e:  # noqa: BLE001 - a model output must never raise
        return _Parsed((), f"math-verify error while parsing: {type(e).__name__}: {e}"[:200])


# --------------------------------------------------------------------------- comparison

def _plain_number(x) -> sympy.Expr | None:
    """``x`` evaluated to a 30-digit number when it is a plain finite number, else None."""
    if not isinstance(x, sympy.Expr) or isinstance(x, sympy.logic.boolalg.Boolean):
        return None
    try:
        if not x.is_number:
            return None
        v = sympy.N(x.doit(), 30)
        if not v.is_finite or not v.is_number:
            return None
        return v
    except Exception:  # noqa: BLE001
        return None


_DECIMAL_LITERAL = re.compile(r"-?\d*\.(\d+)")


def _gold_half_ulp(gold_items: Sequence) -> sympy.Float | None:
    """Half a unit in the last place of a gold written as a decimal (``0.000123`` -> 5e-7)."""
    for item in gold_items:
        if isinstance(item, str):
            m = _DECIMAL_LITERAL.fullmatch(item.strip())
            if m is not None:
                return sympy.Float(5) * sympy.Float(10) ** (-len(m.group(1)) - 1)
    return None


def _small_value_guard_rejects(g, p, gold_half_ulp: sympy.Float | None = None) -> bool:
    """Override 3: True when math-verify's "equal" comes only from its float rounding.

    Applies to two plain numbers whose absolute difference is in ``(0, _ROUNDING_ZONE)``.
    They still count as equal when the relative difference is <= ``REL_TOL``, or when the
    gold is a decimal literal and they agree to the gold's own last digit (gold
    ``0.000123`` vs ``\\frac{1}{8100}``: the gold states three significant digits).
    """
    gv, pv = _plain_number(g), _plain_number(p)
    if gv is None or pv is None:
        return False
    try:
        # Stay in sympy/mpmath floats: 1/2004! is ~1e-5755 and underflows a Python float.
        diff = sympy.N(sympy.Abs(gv - pv), 30)
        scale = sympy.Max(sympy.N(sympy.Abs(gv), 30), sympy.N(sympy.Abs(pv), 30))
        if diff.is_zero or bool(diff >= _ROUNDING_ZONE):
            return False
        if bool(diff <= REL_TOL * scale):
            return False
        if gold_half_ulp is not None and bool(diff <= gold_half_ulp):
            return False
        return True
    except Exception:  # noqa: BLE001 - an undecidable comparison leaves math-verify's verdict
        return False


@functools.lru_cache(maxsize=16384)
def _compare(gold: str, content: str) -> tuple[Status, str]:
    """Status and reason for a gold answer vs an extracted box content (cached)."""
    gp = _parse_answer(gold)
    if gp.error is not None or not _has_sympy(gp.items):
        return "ungradable", REASON_GOLD_UNPARSED
    if not _normalise(content):
        return "no_answer", REASON_EMPTY
    pp = _parse_answer(content)
    if pp.error is not None:
        return "ungradable", f"prediction: {pp.error}"
    if not _has_sympy(pp.items):
        return "ungradable", REASON_PRED_UNPARSED
    _, verify_timeout = _timeouts()
    errors: list[str] = []
    guarded = False
    half_ulp = _gold_half_ulp(gp.items)
    # Same pairs as math-verify's verify(gold_list, pred_list) (any over the product, gold
    # first), one verify call per pair so an error in one pair is reported, not hidden.
    for g, p in product(gp.items, pp.items):
        try:
            ok = verify(
                g,
                p,
                allow_set_relation_comp=True,
                timeout_seconds=verify_timeout,
                raise_on_error=True,
            )
        except TimeoutException:
            errors.append("math-verify timed out while comparing")
            continue
        except Exception as e:  # noqa: BLE001
            errors.append(f"math-verify error while comparing: {type(e).__name__}: {e}"[:200])
            continue
        if ok:
            if _small_value_guard_rejects(g, p, half_ulp):
                guarded = True
                continue
            return "correct", REASON_CORRECT
    if errors:
        return "ungradable", errors[0]
    if guarded:
        return "wrong", f"differs from gold by more than relative {REL_TOL:g} (math-verify rounding said equal)"
    return "wrong", REASON_WRONG


# --------------------------------------------------------------------------- public API

def gold_parses(gold: str) -> bool:
    """True when math-verify yields a sympy object for ``gold`` [design].

    The gold is normalised and parsed exactly as a box content would be (see module doc).
    The runner calls this to reject a problem before any model call.
    """
    p = _parse_answer(gold)
    return p.error is None and _has_sympy(p.items)


def answers_match(gold: str, answer: str) -> bool:
    """True when the bare answer string (not boxed) equals ``gold`` by the grading rules.

    Used by the answer-leak rule on a ``\\boxed{}`` inside an intervention. False when
    either side does not parse or math-verify fails. Never raises.
    """
    return _compare(gold, answer)[0] == "correct"


def grade_answer(gold: str, output: str, finish_reason: str | None = None) -> Verdict:
    """Grade one model ``output`` against ``gold``. Never raises for any output.

    Order of checks:

    1. ``gold`` does not parse -> ``ungradable`` "gold answer does not parse".
    2. ``finish_reason == "length"`` -> ``no_answer`` even if the output holds a box: the
       model did not finish [design]. Other finish reasons are not special.
    3. No box, or an unbalanced last box -> ``no_answer`` (see ``extract_boxed``); an empty
       box -> ``no_answer``.
    4. The box content does not parse -> ``ungradable`` "prediction does not parse"; a
       math-verify exception or timeout -> ``ungradable`` with that reason.
    5. ``verify(gold, pred, allow_set_relation_comp=True)`` [InT], plus the small-value
       guard -> ``correct`` / ``wrong``.
    """
    if not gold_parses(gold):
        return Verdict("ungradable", REASON_GOLD_UNPARSED, None)
    if finish_reason == "length":
        return Verdict("no_answer", REASON_LENGTH, None)
    content = extract_boxed(output)
    if content is None:
        has_box = _BOX_CMD.search(output) is not None
        return Verdict("no_answer", REASON_UNBALANCED if has_box else REASON_NO_BOX, None)
    status, reason = _compare(gold, content)
    if status == "no_answer":
        return Verdict(status, reason, None)
    return Verdict(status, reason, content)


def grade_many(pairs: Sequence[tuple[str, str, str | None]]) -> list[Verdict]:
    """Grade ``(gold, output, finish_reason)`` triples, in order.

    A simple loop for now; comparisons are memoised per (gold, extracted box content) in
    a bounded module-level LRU cache, and parses per answer string.
    """
    return [grade_answer(gold, output, finish_reason) for gold, output, finish_reason in pairs]
