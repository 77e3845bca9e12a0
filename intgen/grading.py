"""Answer grading: boxed-answer extraction and math-verify comparison.

Every rollout, continuation and answer-leak check in intgen is graded here, so the
rules are strict and written down. Sources:

* [docs/grading.md] intgen's own rules (answer = last complete box, cut-off outputs have no
  answer, gold checked before any model call, verdicts never raise);
* [InT] the InT paper's grader (arXiv 2601.14209): math-verify ``parse`` with
  ``LatexExtractionConfig()`` and ``ExprExtractionConfig()`` on both sides, then
  ``verify(gold, pred)``;
* [MV#n] known wrong verdicts reported on huggingface/Math-Verify issue or PR n, each
  re-measured on math-verify 0.9.0 / latex2sympy2_extended 1.11.0 before being overridden;
* [issue 4] the numbered test cases of the team's issue 4 ("Grading you can trust at
  scale"), each pinned verbatim in tests/test_grading.py;
* [measured] a wrong verdict found here on math-verify 0.9.0; the case is given;
* [issue 13] the team's issue 13 ("Nothing lost, nothing silent"), item 5, and
  [issue 15] its issue 15, item 4 (faithful mode), each reported case pinned in
  tests/test_grading.py with cases of its kind.

Pipeline for one output::

    gold --normalise--> parse(\\boxed{gold}) ----------------------------.
    output --finish_reason=="length"?--> no_answer                        |
           --boxes--> none, or last one cut off -> no_answer              |
                  --> last box (every box for a set/tuple gold)           v
                      --normalise--> parse --> verify(gold, pred) per pair
                                                 --> small-value guard

Statuses: ``correct`` / ``wrong`` (a real comparison happened), ``no_answer`` (the model
gave no final answer we may judge), ``ungradable`` (a parse failure, a math-verify
exception or timeout, or a gold answer that does not parse).

Policy overrides of math-verify (each has a test in tests/test_grading.py):

1. Only the content of the last complete box is judged [docs/grading.md] (except for a set or
   tuple gold, override 15). math-verify on a whole output falls back to the last number
   anywhere in the text; intgen never does.
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
   they appear in text; so is Markdown bold around the whole answer (``\\boxed{**58**}``
   does not parse in math-verify).
8. Unicode math symbols [measured]: ``−`` ``×`` ``·`` ``÷`` ``≤`` ``≥`` ``≠`` ``∞`` ``π``,
   ``°`` (as ``^{\\circ}``), superscript digits (``3²``), vulgar fractions (``½``; ``3½`` = 7/2)
   and ``√`` (``√2``, ``3√2``, ``√(x+1)``) become LaTeX. Case: math-verify cannot parse
   ``40°``, ``√2``, ``½`` or ``3²`` (ungradable before).
9. Plain-text constants and functions [issue 4 case 7; measured]: outside ``\\text{}``,
   ``pi`` becomes ``\\pi``; ``sqrt`` with an argument (``sqrt(2)``, ``sqrt 2``, ``sqrt{3}``)
   becomes ``\\sqrt{...}``; ``sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh
   ln log exp`` followed by an argument get their backslash; ``**`` becomes ``^``; a whole
   answer in scientific notation (``1e-3``, ``1.5E3``) becomes ``1\\times 10^{-3}``. Case:
   math-verify's LaTeX parser reads ``-3*pi`` as ``-3*p*i`` (so ``-3*pi`` != ``-3\\pi``),
   ``sin(pi/6)`` as ``s*i*n*(p*i/6)`` and ``1e-3`` as ``e - 3``. A name is rewritten only
   when it stands alone (``pix``, ``\\pi`` and ``\\text{pi}`` are untouched). Limitations:
   variables ``p`` and ``i`` written together as ``pi`` are read as π (on both sides), and
   ``2e-1`` is read as 0.2, never as 2e - 1.
10. Plain-text mixed numbers [issue 4 case 2; MV#34, MV PR#81]: an integer, a space (or
    ``\\ ``, ``~``, ``\\,``, ``\\;``), then a proper fraction ``a/b`` (``0 < a < b``) is a
    mixed number: ``3 1/2`` = 7/2, ``-1 1/2`` = -3/2, also inside an answer (``x = 3 1/2``,
    ``3 1/2 cups``). Case: math-verify reads ``3 1/2`` as 2 and ``2 2/3`` as 4/3. Never
    across a comma (``(1, 1/2)`` and ``1, 1/2`` stay pairs/lists), never after ``^``,
    ``_``, a letter, ``.`` or ``}`` (``x^2 1/2``), never before a letter or a command such
    as ``\\pi`` (``3 1/2\\pi`` is left alone), never for an improper ``3 5/2``.
    ``3\\frac{1}{2}`` is read as 7/2 by math-verify already.
11. A number with words [issue 4 case 8; measured]: a whole answer that is a number
    followed by words, in ``\\text{}`` (``\\text{6 marbles}``, ``\\textbf{6 apples}``,
    ``\\text{\\$6 per hour}``, ``\\text{3 1/2 cups}``), before a ``\\text{}`` (``6\\text{ marbles}``)
    or in plain text (``6 marbles``, ``12 square feet``), is that number. Case:
    math-verify reads ``\\text{6 marbles}`` as one symbol ``6marbles`` (wrong against 6)
    and ``6 marbles`` as ``6*a*b*e*l*m*r*s``. Scale words multiply (``6 million`` = 6e6,
    ``2 dozen`` = 24, where math-verify alone says ``6\\text{ million}`` = 6); a percent
    word gives ``\\%``. A word that changes the value (``or``, ``and``, ``to``, ``half``,
    ``remainder``, ``squared`` first, ``pi``, ``sin``, ...: ``_VALUE_WORDS``) makes the
    answer ungradable, never judged on the number (``\\text{6 or more}``). In plain text
    the first word must have three letters or more, or be a short unit (``cm``, ``ft``)
    or ``of``: single letters are variables (override 12). Numbers joined by ``or``,
    ``and`` or commas in ``\\text{}`` are unwrapped: ``\\text{6 or 7}`` is the list {6, 7}
    as ``6 or 7`` is (math-verify reads the text as one symbol ``6,7``); never 6.
12. Single letters are variables, not units [measured; MATH gold ``4t``]: math-verify
    strips a trailing ``t h c l s g m d o``, ``ab`` or ``bc`` after a digit, ``}`` or space
    as a unit, so ``x+2h`` equals ``x+2``, ``\\frac{1}{2}t`` equals ``\\frac{1}{2}``, gold
    ``4t`` equals 4 and gold ``a + b + c`` does not parse. The letter is braced (``{h}``)
    so that it stays a factor. Units written as text (``5\\text{ m}``) are still dropped;
    a plain ``5 m`` is now the product 5m. A temperature scale after a degree sign
    (``40^\\circ C``, ``40°F``) is dropped.
13. Nothing math-verify would drop may change the answer [issue 4 "no fragments";
    measured]: math-verify removes a trailing ``\\text{...}`` (from the first ``\\text{``
    whose group reaches the end) whatever it says. If that part holds a digit or a
    value-changing word, the answer is ungradable. Cases: ``6\\text{ or 7}`` and
    ``2 \\text{ plus } 3 \\text{ cm}`` were judged as 6 and 2. A plain word of four letters
    or more, or ``mod``, next to digits (``10 choose 2``, ``about 5``, ``5 (approximately)``,
    ``3 (mod 7)``) is read as a product of one-letter variables, so such an answer is
    ungradable too; word answers without digits (``Evelyn``) are not affected.

14. Number bases [measured; 65 MATH golds such as ``52_8``]: math-verify drops a base
    subscript, so ``52_8`` equals ``52_5``. When gold and prediction are both whole
    numbers with a base subscript (``_8``, ``_{8}``) and the bases differ, the prediction
    is wrong. Without a subscript on one side the digits are compared as before (``52``
    still equals ``52_8``, ``24`` equals ``24_{10}``).

15. Several boxes [issue 13]: when the gold holds several values, every complete box of
    the output is judged, combined in order; otherwise the last box stands. Case: gold
    ``5, 7`` with ``the two solutions are \\boxed{5} and \\boxed{7}`` was wrong (only 7 was
    judged). The gold holds several values when math-verify parses it (after overrides
    4-14) to a finite set of two values or more (``5, 7``, ``\\{5, 7\\}``, ``\\pm 2``,
    ``6 \\text{ or } 7``: a set), to a tuple of two or more (``(1, 2, 3)``, ``(5, 5)``: a
    tuple), or to an open interval written as a parenthesised pair (``(5, 7)``, which
    math-verify reads as the interval: a tuple). The boxes are combined as ``a, b`` for a
    set (order and repeats do not matter; a repeated box is kept once) and ``(a, b)`` for
    a tuple (both do), each box normalised on its own first and empty boxes skipped; a box
    that is refused (overrides 11, 13) makes the whole answer ungradable. More boxes than
    a tuple gold has values, or more than ``max(64, 2n)`` different boxes for a set of n
    values (a repetition loop), is wrong without a comparison (5,000 boxes would otherwise
    time out in math-verify's parser). The last box stands alone when it holds
    several values itself (``\\boxed{5} and \\boxed{7}, so \\boxed{5, 7}``), when the gold
    is one value, an interval with a bracket or a matrix, and in faithful mode. A cut-off
    last box is still no answer, and a cut-off box followed by complete ones is dropped.
    math-verify on a whole text joins every box whatever the gold (so gold ``7`` with
    ``\\boxed{5} and \\boxed{7}`` is wrong there); intgen joins only for a set or tuple
    gold. Limitation: an intermediate result boxed before the answers is combined too.
16. Complex numbers with decimals [issue 13; measured]: gold ``14-i`` with
    ``\\boxed{14.0 + -1.0i}`` was wrong. math-verify treats every symbol of an answer as
    complex (not real) only when the answer holds a standalone ``i`` (its
    ``should_treat_as_complex``); in ``1.0i`` or ``2i`` the ``i`` follows a digit, is not
    seen, and becomes a real symbol ``i``, a different symbol from the ``i`` of ``14-i``.
    So ``-i`` differed from ``-1.0i`` and ``14-i`` from ``14-1i`` (``3+2i`` equalled
    ``3.0+2.0i`` only because neither side had a standalone ``i``). An ``i`` right after a
    digit, outside ``\\text{}``, gets a space first (``1.0i`` -> ``1.0 i``), so both sides
    see the same complex unit; ``+ -`` was already read as ``-``. Also, math-verify
    compares a bare symbol with anything only by name (``i`` vs ``1.0 i``, ``x`` vs
    ``1.0x`` were wrong); when one side is a bare symbol and the other an expression,
    intgen also accepts an exact difference of zero. ``i`` stays a symbol, as in
    math-verify (``i^2`` is not -1); ``j`` is not an imaginary unit.
17. Unbalanced answers do not parse [issue 13]: gold ``\\frac{1}{2`` was accepted, since
    wrapped as ``\\boxed{\\frac{1}{2}`` math-verify still reads 1/2 (and ``1}`` as 1,
    ``\\frac{1}{2}}`` as 1/2). An answer whose braces ``{ }``, ``\\left``/``\\right``,
    ``\\begin{X}``/``\\end{X}`` (by name) or round and square brackets (counted together,
    since intervals mix them: ``(0, 1]``) do not close, or close before they open, does
    not parse, so such a gold is rejected before any model call (``gold_parses``).
    Escaped braces ``\\{ \\}`` are not braces; the delimiter after ``\\left``/``\\right``
    is theirs (``\\left[0, 1\\right)``, ``\\left. x \\right|`` are balanced). A box content
    is brace-balanced by construction; math-verify already rejected a prediction with
    unbalanced brackets (``(1, 2``). Limitation: ``]0, 1[`` is refused.
18. Long integers [issue 13]: a 200,000-digit integer answer was ungradable. Python
    refuses int <-> str conversions past 4300 digits (``sys.set_int_max_str_digits``),
    so math-verify yields no value, only the string (``00`` + N did not equal N), and
    intgen found nothing to judge. When the gold or the prediction is a plain integer
    (after normalisation: ``$...$``, digit grouping, a final period removed) of more than
    ``_LONG_INT_DIGITS`` (1000) digits, neither math-verify nor sympy's parser sees it:
    two plain integers are equal when their signs and digits (leading zeros dropped,
    ``-0`` = ``0``) are; against anything else the other side is parsed and equals the
    integer only if some number there has exactly its value (floats taken as the
    decimals they print as, so ``10^{200000}`` and ``1.0 \\times 10^{5000}`` match, a
    rounded float does not). The integer is built without the string limit, in parts.
    Shorter integers go through math-verify as before. 200,000 digits take about 0.1 s.

Overrides 4-13 and 16-18 apply to gold answers and predictions alike. On the 5,143
distinct gold answers of MATH (train and test), MATH-500, GSM8K and OlympiadBench,
overrides 8-13 change the parse of five, each a fix (``4t``, ``6m``, ``2s`` were read as
numbers; ``a + b + c`` and ``\\sin^2 t`` did not parse), every parseable gold equals its
own box, and every MATH test solution's last box equals its gold. Overrides 15-18 change
none of those verdicts (no gold there is unbalanced; 62 complex golds such as ``-1 - 5i``
now carry the same complex unit on both sides, and still equal their own box).

Faithful mode [issue 15; InT]: ``grade_answer(..., faithful=True)`` (and the same keyword
of ``grade_many`` and of ``GradingPool``) grades as the paper's released grader did. That
grader took the last ``\\boxed{...}`` of the output with brace matching, whether or not the
output was cut at the length limit (none: score 0), wrapped gold and answer as
``\\boxed{...}``, compared them with math-verify's ``math_metric`` (LaTeX and expression
extraction on both sides) in a process killed after 10 s (score 0), and scored anything
but a match 0. So, in faithful mode:

* the last complete box is the answer, always: several boxes are never combined
  (override 15 is off);
* ``finish_reason == "length"`` is not special: a complete last box of a cut-off output is
  graded (a cut-off last box, or no box, is still ``no_answer``, which scores 0 too);
* a verdict that would be ``ungradable`` (the answer or the gold does not parse,
  math-verify failed or timed out, the pool's time limit passed) is ``wrong``, its
  reason followed by "; the paper's grader scored it 0", so that such a rollout counts
  as failed (and gets proposals) as it did in the paper.

Everything else is as in the default mode, overrides included: they correct verdicts
math-verify is known to get wrong, and faithful mode reproduces the paper's policy, not
those errors. The time limit is the pool's (``GradingPool``'s default 10 s, as in the
paper); in process, math-verify's own 5 s alarms for parsing and for comparing apply.

Handled by math-verify itself (tested, not overridden): ``\\dfrac``/``\\tfrac``;
``\\text{...}`` units after a number (``5 \\text{ cm}`` == 5); ``1,000`` == 1000;
``50\\%`` vs ``50`` and ``0.5``; ``\\text{Evelyn}`` vs ``Evelyn``; ``\\pm 2021`` vs
``2021`` is wrong; a strict subset of a gold set is wrong (MV#47, fixed upstream);
``40^\\circ`` == 40; ``3\\frac{1}{2}`` == 7/2.

Gold wrapping: both gold answers and box contents are parsed as ``\\boxed{...}``, not
``$...$``. The two wrappers give the same parse on every case measured except that
``$...$`` breaks when the answer itself holds a ``$`` (``\\$5``, ``\\text{costs $5}``), while
the boxed extractor takes exactly the brace-balanced content. Box contents are
brace-balanced by construction; a gold with unbalanced braces does not parse (override 17).

Timeouts: math-verify's own timeouts use ``signal.alarm``, which only works in the main
thread; off the main thread intgen passes ``None`` (no timeout) so that it never raises
there. ``intgen.grading_pool.GradingPool`` runs grading in each worker process's main
thread, where the alarm works, and adds a hard per-item limit that kills a stuck worker;
that limit also holds where the alarm cannot (C code that does not return to the
interpreter). In the main thread, ``\\dfrac{3^{3^{3^{27}}}+1}{4}`` is stopped by the alarm
after ``VERIFY_TIMEOUT_S``; off it, nothing stops it but the pool.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from itertools import product
from typing import Literal, NamedTuple, Sequence

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

__all__ = [
    "Status",
    "Verdict",
    "extract_boxed",
    "extract_boxes",
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
REASON_OTHER_BASE = "written in another number base than the gold"
REASON_FAITHFUL_ZERO = "the paper's grader scored it 0"


@dataclass(frozen=True)
class Verdict:
    """The grade of one model output against one gold answer.

    ``status`` is one of ``correct``, ``wrong``, ``no_answer``, ``ungradable``;
    ``reason`` is a short human explanation; ``extracted`` is the box content that was
    judged (for a set or tuple gold, the boxes combined as judged, override 15), or None
    when nothing was judged (no box, cut-off output, empty box).
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

    Rules [docs/grading.md]:

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
    boxes, cut = _scan_boxes(text)
    if cut or not boxes:
        return None
    return boxes[-1]


def _scan_boxes(text: str) -> tuple[list[str], bool]:
    """The contents of every complete top-level box of ``text``, in order, and whether the
    last box command is unbalanced (cut off).

    A box inside another complete box is not top-level (the outer one holds it). An
    unbalanced box followed by a complete one is dropped (a restart); an unbalanced last
    box makes ``cut`` True, whatever came before. ``extract_boxed`` is the last element
    when ``cut`` is False.
    """
    if "box" not in text:
        return [], False
    matches = _brace_matches(text)
    boxes: list[str] = []
    cut = False
    skip_until = 0
    for m in _BOX_CMD.finditer(text):
        if m.start() < skip_until:
            continue  # inside an earlier complete box
        read = _read_box(text, m.end(), matches)
        if read is None:
            cut = True  # unbalanced: only a later complete box can replace it
            continue
        cut = False
        content, skip_until = read
        boxes.append(content)
    return boxes, cut


def extract_boxes(text: str) -> list[str] | None:
    """Return the contents of every complete top-level ``\\boxed{}`` / ``\\fbox{}`` of
    ``text``, in order; ``[]`` when there is no box, None when the last box is unbalanced
    (the output was cut off inside it) [design, as ``extract_boxed``].

    A box nested in another complete box is part of the outer one; an unbalanced box
    followed by a complete one (a restart) is left out. The grader combines these boxes
    only for a gold answer that is a set or a tuple (override 15). Never raises.
    """
    boxes, cut = _scan_boxes(text)
    return None if cut else boxes


# --------------------------------------------------------------------------- normalisation

_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_MARKDOWN_BOLD = re.compile(r"\*\*(.+)\*\*", re.DOTALL)
_ROMAN_CONST = re.compile(r"\\(?:mathrm|text|operatorname|mathit|textrm)\s*\{\s*([ei])\s*\}")
_GROUPED_NUMBER = re.compile(
    r"(-?)([1-9]\d{0,2}(?:(?:,|\{,\}|\\,|\\ |\\!|~| )\d{3})+)(\.\d+)?"
)
_GROUP_SEP = re.compile(r",|\{,\}|\\,|\\ |\\!|~| ")

# override 8: Unicode math symbols a model may write inside a box.
_UNICODE_SIMPLE = {
    "\u2212": "-",  # minus sign
    "\u00d7": "\\times ",
    "\u00b7": "\\cdot ",
    "\u22c5": "\\cdot ",
    "\u00f7": "\\div ",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u221e": "\\infty ",
    "\u03c0": "\\pi ",
    "\u00b0": "^{\\circ}",
}
_UNICODE_SUPERSCRIPT = dict(
    zip("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b", "0123456789-")
)
_SUPERSCRIPT_RUN = re.compile("[" + "".join(_UNICODE_SUPERSCRIPT) + "]+")
_VULGAR_FRACTION = re.compile("[\u00bc-\u00be\u2150-\u215e]")
_UNICODE_SQRT = re.compile(r"\u221a\s*")
_ROOT_ARG = re.compile(r"\{|\d+(?:\.\d+)?|[A-Za-z]|\\[A-Za-z]+")

# override 9: plain-text constants and functions (LaTeX reads ``pi`` as p*i).
_TEXT_GROUP = re.compile(
    r"\\(?:text[a-z]*|mbox|hbox|math(?:rm|bf|it|sf|tt)|operatorname|begin|end)\s*\{[^{}]*\}"
)
_PLAIN_PI = re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])")
_PLAIN_FUNC = re.compile(
    r"(?<![\\A-Za-z])(arcsin|arccos|arctan|sinh|cosh|tanh|sin|cos|tan|cot|sec|csc|ln|log|exp)"
    r"(?![A-Za-z])(?=\s*[(\[{^_\d]|\s+[A-Za-z\\])"
)
_PLAIN_SQRT = re.compile(r"(?<![\\A-Za-z])sqrt(?![A-Za-z])\s*")
_SCIENTIFIC = re.compile(r"([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d+)")

# override 10: plain-text mixed numbers, ``3 1/2`` = 7/2.
_MIXED_NUMBER = re.compile(
    r"(?<![\w.^_}/\\)*!])(-?)([1-9]\d*)(?:\s|\\[ ,;:]|~|\\quad\b)+([1-9]\d*)\s*/\s*([1-9]\d*)"
    r"(?![\w.^/(_{!])(?!\\(?![,;: !%)\]}\\]|text|mbox|mathrm|quad|qquad|right|rangle|end))"
)

# override 11: a number with words (a unit, a noun) in ``\text{}`` or in plain text.
_TEXT_CMD = r"\\(?:text(?:rm|bf|it|normal|sf|tt)?|mbox|hbox|math(?:rm|bf|it|sf))"
_NUM = (
    r"(?:\\?\$\s*)?-?\s*(?:\\?\$\s*)?"
    r"(?:[1-9]\d{0,2}(?:(?:,|\{,\}|\\,)\d{3})+|\d+)(?:\.\d+)?"
    r"(?:(?:\s+|\\ |~)[1-9]\d*\s*/\s*[1-9]\d*|\s*/\s*[1-9]\d*)?"
)
_WORD = r"[A-Za-z][A-Za-z.'\-/]*(?:\^\{?\d\}?)?(?:\(s\))?"
_WORDS = _WORD + r"(?:\s+" + _WORD + r")*"
_SEP = r"(?:\s|\\ |~|\\,|\\;)*"
_SEP1 = r"(?:\s|\\ |~|\\,|\\;)+"
_NUM_WORDS_IN_TEXT = re.compile(
    _TEXT_CMD + r"\s*\{\s*(" + _NUM + r")" + _SEP + r"(" + _WORDS + r")\s*\}(?:\^\{?\d\}?)?"
)
_NUM_THEN_TEXT = re.compile(
    r"(" + _NUM + r")" + _SEP + _TEXT_CMD + r"\s*\{" + _SEP + r"(" + _WORDS + r")\s*\}(?:\^\{?\d\}?)?"
)
_NUM_LIST_IN_TEXT = re.compile(
    _TEXT_CMD + r"\s*\{\s*((?:" + _NUM + r")(?:\s*(?:,|,?\s+and|,?\s+or)\s+(?:" + _NUM + r"))+)\s*\}"
)
_NUM_PLAIN_WORDS = re.compile(r"(" + _NUM + r")" + _SEP1 + r"(" + _WORDS + r")")
#: Short plain-text units accepted as the first word after a number (longer words, three
#: letters or more, are accepted as nouns; single letters are variables, override 12).
_SHORT_UNITS = frozenset(
    "cm mm km kg mg lb lbs oz ft yd mi hr hrs ml mL cc mph kph kmh sq".split()
)
_MULTIPLIERS = {
    "hundred": "10^{2}", "hundreds": "10^{2}", "thousand": "10^{3}", "thousands": "10^{3}",
    "million": "10^{6}", "millions": "10^{6}", "billion": "10^{9}", "billions": "10^{9}",
    "trillion": "10^{12}", "trillions": "10^{12}", "dozen": "12", "dozens": "12",
}
_PERCENT_WORDS = frozenset({"percent", "percentage", "pct"})
#: Words that change the value of the number they follow; never dropped as a unit.
_VALUE_WORDS = frozenset(
    """or and to through thru till until nor versus vs than plus minus over under below above
    negative not no none remainder mod modulo choose factorial power root roots sqrt pi e i
    half halves quarter quarters third thirds fourth fourths fifth fifths sixth sixths
    eighth eighths tenth tenths hundredth hundredths thousandth thousandths percent
    percentage pct squared cubed sin cos tan cot csc log ln exp arcsin arccos arctan sinh cosh
    tanh""".split()
)
_VALUE_WORDS_FIRST_ONLY = frozenset({"squared", "cubed"})  # "6 meters squared" is a unit

# override 16: the imaginary unit right after a digit (``2i``, ``1.0i``).
_DIGIT_I = re.compile(r"(?<=\d)i(?![A-Za-z])")

# override 12: single letters that math-verify's unit list would strip after a number.
_TRAILING_LETTER = re.compile(r"(?<=[\d}\s])(\s*)([tshclgmdo]|ab|bc)(\s*)$")
_DEGREE_SCALE = re.compile(
    r"(\^\s*(?:\{\s*\\circ\s*\}|\\circ))\s*(?:\\(?:text|mathrm)\s*\{\s*[CFK]\s*\}|[CFK](?![A-Za-z]))"
)

# override 13: what math-verify would silently drop (emulating its unit normalisation).
_MV_TEXT_ALIAS = re.compile(r"\\math(?:rm|it|bf)|\\text(?:normal|bf|it|rm)")
_MV_AND_OR_TEXT = re.compile(r",?\s*\\text\{\s*(?:and|or)\s*\}")
_MV_TRAILING_TEXT = re.compile(r"(\\(?:text|mbox)\{.*?\})(\^\d|\{\^\d\})?$")
_COMMANDS = re.compile(r"\\[A-Za-z]+")
_LONG_WORD = re.compile(r"(?<![A-Za-z])[A-Za-z]{4,}(?![A-Za-z])")
_WORDS_OK_NEAR_NUMBERS = frozenset({"infinity", "infty", "matrix", "pmatrix", "bmatrix"})


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


def _outside_text(s: str, fn) -> str:
    """Apply ``fn`` to the parts of ``s`` outside ``\\text{...}``-like groups and
    environment names (``\\begin{pmatrix}``)."""
    out: list[str] = []
    pos = 0
    for m in _TEXT_GROUP.finditer(s):
        out.append(fn(s[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(fn(s[pos:]))
    return "".join(out)


def _paren_matches(s: str) -> dict[int, int]:
    """Map each ``(`` that closes to its ``)`` (one linear pass)."""
    matches: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(s):
        if ch == "(":
            stack.append(i)
        elif ch == ")" and stack:
            matches[stack.pop()] = i
    return matches


def _rewrite_sqrt(s: str, pattern: re.Pattern) -> str:
    """Rewrite each root sign matched by ``pattern`` (``sqrt``, ``√``) as ``\\sqrt{...}``.

    The argument is a parenthesised group (its parentheses become braces), a braced group,
    a number or one letter; otherwise the sign becomes a bare ``\\sqrt``. Linear time.
    """
    parens = _paren_matches(s) if "(" in s else {}
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), in order
    last = 0
    for m in pattern.finditer(s):
        if m.start() < last:
            continue
        j = m.end()
        close = parens.get(j) if j < len(s) and s[j] == "(" else None
        if close is not None:
            edits.append((m.start(), j + 1, "\\sqrt{"))
            edits.append((close, close + 1, "}"))
            last = j + 1
            continue
        tok = _ROOT_ARG.match(s, j)
        if tok is None or tok.group(0) == "{":
            edits.append((m.start(), j, "\\sqrt"))
            last = j
        else:
            edits.append((m.start(), tok.end(), "\\sqrt{" + tok.group(0) + "}"))
            last = tok.end()
    if not edits:
        return s
    edits.sort()
    out: list[str] = []
    pos = 0
    for start, end, rep in edits:
        out.append(s[pos:start])
        out.append(rep)
        pos = end
    out.append(s[pos:])
    return "".join(out)


def _unicode(s: str) -> str:
    """Override 8: Unicode math symbols to the LaTeX math-verify reads."""
    if s.isascii():
        return s
    for ch, rep in _UNICODE_SIMPLE.items():
        s = s.replace(ch, rep)
    s = _SUPERSCRIPT_RUN.sub(
        lambda m: "^{" + "".join(_UNICODE_SUPERSCRIPT[c] for c in m.group(0)) + "}", s
    )

    def vulgar(m: re.Match) -> str:
        f = Fraction(unicodedata.numeric(m.group(0))).limit_denominator(10)
        return "\\frac{%d}{%d}" % (f.numerator, f.denominator)

    s = _VULGAR_FRACTION.sub(vulgar, s)
    if "\u221a" in s:
        s = _rewrite_sqrt(s, _UNICODE_SQRT)
    return s


def _number_with_words(num: str, words: str, plain: bool) -> tuple[str | None, str | None]:
    """Override 11: ``(replacement, refusal)`` for a number followed by words.

    The words are dropped when they name what is counted or measured (``6 marbles``,
    ``\\text{6 apples}``, ``12 square feet``); a scale word multiplies (``6 million``,
    ``2 dozen``); a percent word gives ``\\%``. A word that changes the value (``or``,
    ``and``, ``half``, ``remainder``, ...) makes the answer unjudgeable: it is never
    judged on the number alone. ``(None, None)``: not this pattern, left as is.
    """
    ws = [w.strip(".'-/").lower() for w in words.split()]
    ws = [re.sub(r"\^\{?\d\}?$|\(s\)$", "", w) for w in ws]
    if not ws or not ws[0]:
        return None, None
    first = words.split()[0].strip(".")
    if plain and not (len(ws[0]) >= 3 or first in _SHORT_UNITS or ws[0] == "of"):
        return None, None  # a single letter or two: a variable, not a unit (override 12)
    num = re.sub(r"\\?\$", "", num).strip()
    num = re.sub(r"^-\s+", "-", num)
    if ws[0] in _PERCENT_WORDS and len(ws) == 1:
        return num + "\\%", None
    rest = ws
    if ws[0] in _MULTIPLIERS:
        if re.search(r"/", num):
            return None, f"a number followed by {words.split()[0]!r}"
        num = num + "\\times " + _MULTIPLIERS[ws[0]]
        rest = ws[1:]
    for k, w in enumerate(rest):
        if w in _VALUE_WORDS and not (k > 0 and w in _VALUE_WORDS_FIRST_ONLY):
            return None, f"a number followed by words that change its value ({w!r})"
    return num, None


def _mixed(m: re.Match) -> str:
    sign, whole, num, den = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    if num >= den:
        return m.group(0)  # "3 5/2" is not a mixed number
    return "%s\\frac{%d}{%d}" % (sign, whole * den + num, den)


def _plain_functions(s: str) -> str:
    """Override 9 on text outside ``\\text{}``: ``pi``, function names, ``sqrt``, ``**``."""
    s = _PLAIN_PI.sub(r"\\pi ", s)
    s = _PLAIN_FUNC.sub(r"\\\1", s)
    s = s.replace("**", "^")
    if "sqrt" in s:
        s = _rewrite_sqrt(s, _PLAIN_SQRT)
    return s


def _normalise_full(answer: str) -> tuple[str, str | None]:
    """Light normalisation applied to gold answers and box contents alike.

    Returns ``(normalised, refusal)``: ``refusal`` is set when the answer holds words that
    would be dropped or misread and change its value (overrides 11 and 13); such an
    answer does not parse. See overrides 4-13 in the module docstring.
    """
    s = _strip_delims(answer)
    if s.endswith(".") and not s.endswith(".."):
        s = _strip_delims(s[:-1])
    m = _MARKDOWN_BOLD.fullmatch(s)
    if m is not None:
        s = _strip_delims(m.group(1))
    s = _ROMAN_CONST.sub(r"\1", s)
    s = _unicode(s)
    # override 11: a number with words, as a whole answer
    for pattern, plain in ((_NUM_WORDS_IN_TEXT, False), (_NUM_THEN_TEXT, False), (_NUM_PLAIN_WORDS, True)):
        m = pattern.fullmatch(s)
        if m is not None:
            rep, refusal = _number_with_words(m.group(1), m.group(2), plain)
            if refusal is not None:
                return s, refusal
            if rep is not None:
                s = rep
            break
    m = _NUM_LIST_IN_TEXT.fullmatch(s)
    if m is not None:  # \text{6 or 7}: a list, which math-verify reads in plain text
        s = m.group(1)
    m = _GROUPED_NUMBER.fullmatch(s)
    if m is not None:
        s = m.group(1) + _GROUP_SEP.sub("", m.group(2)) + (m.group(3) or "")
    m = _SCIENTIFIC.fullmatch(s)
    if m is not None:
        s = m.group(1) + "\\times 10^{" + m.group(2) + "}"
    s = _outside_text(s, lambda part: _MIXED_NUMBER.sub(_mixed, part))
    s = _outside_text(s, _plain_functions)
    s = _outside_text(s, lambda part: _DIGIT_I.sub(" i", part))
    s = _DEGREE_SCALE.sub(r"\1", s)
    s = _TRAILING_LETTER.sub(r"\1{\2}\3", s)
    return s, _dropped_words(s)


def _dropped_words(s: str) -> str | None:
    """Override 13: the reason ``s`` would be judged on a fragment, or None.

    * math-verify drops a trailing ``\\text{...}`` (everything from the first ``\\text{``
      whose group reaches the end) as a unit. If that part holds a digit or a word that
      changes the value (``6\\text{ or 7}``, ``x\\text{ where } y = 2``), the answer is
      refused instead.
    * A plain word of four letters or more next to numbers (``10 choose 2``, ``about 5``,
      ``3 (mod 7)`` is caught by ``mod``) is read by math-verify as a product of one-letter
      variables; such an answer is refused. Pure word answers (``Evelyn``) are not.
    """
    t = _MV_TEXT_ALIAS.sub(r"\\text", s)
    t = _MV_AND_OR_TEXT.sub(",", t)
    t = re.sub(r"\\text\s*\{\s*\}|\\\$|\$|\\!\s*", "", t)
    m = _MV_TRAILING_TEXT.search(t)
    if m is not None and t[: m.start()].strip():
        dropped = m.group(1)
        inner = re.sub(r"\\(?:text|mbox)\{|[{}]", " ", dropped)
        if re.search(r"\d", inner):
            return f"math-verify would drop {dropped!r}, which holds a number"
        for w in re.findall(r"[A-Za-z]+", _COMMANDS.sub(" ", inner)):
            if w.lower() in _VALUE_WORDS - _VALUE_WORDS_FIRST_ONLY:
                return f"math-verify would drop {dropped!r}, which changes the value ({w.lower()!r})"
            if w.lower() in _MULTIPLIERS:
                return f"math-verify would drop {dropped!r}, a scale word ({w.lower()!r})"
    plain = _COMMANDS.sub(" ", _TEXT_GROUP.sub(" ", s))
    if re.search(r"\d", plain) or re.search(r"(?<![A-Za-z])mod(?![A-Za-z])", plain):
        for w in _LONG_WORD.findall(plain) + re.findall(r"(?<![A-Za-z])mod(?![A-Za-z])", plain):
            if w.lower() not in _WORDS_OK_NEAR_NUMBERS:
                return f"plain-text word {w!r} would be read as a product of letters"
    return None


_BALANCE_TOKENS = re.compile(
    r"\\(?:left|right)(?![A-Za-z])\s*(?:\\[A-Za-z]+|\\.|.)?"  # \left( \right. \left\{
    r"|\\(begin|end)\s*\{([^{}]*)\}"
    r"|\\[A-Za-z]+|\\.|[{}()\[\]]",
    re.DOTALL,
)


def _unbalanced(answer: str) -> str | None:
    """Override 17: what is unbalanced in ``answer``, or None when everything closes.

    Checked in one linear pass: braces ``{ }`` (escaped ``\\{ \\}`` are not braces),
    ``\\left``/``\\right`` (with their delimiters, so ``\\left[ ... \\right)`` and
    ``\\left. ... \\right|`` are fine), ``\\begin{X}``/``\\end{X}`` by name, and round
    and square brackets counted together (intervals mix them: ``(0, 1]``): each closer
    must have an opener before it and every opener must be closed.
    """
    braces = brackets = lr = 0
    envs: list[str] = []
    for m in _BALANCE_TOKENS.finditer(answer):
        tok = m.group(0)
        if m.group(1) == "begin":
            envs.append(m.group(2).strip())
        elif m.group(1) == "end":
            if not envs or envs.pop() != m.group(2).strip():
                return "unbalanced \\begin/\\end"
        elif tok.startswith("\\left") and not tok[5:6].isalpha():
            lr += 1
        elif tok.startswith("\\right") and not tok[6:7].isalpha():
            lr -= 1
            if lr < 0:
                return "unbalanced \\left/\\right"
        elif tok == "{":
            braces += 1
        elif tok == "}":
            braces -= 1
            if braces < 0:
                return "unbalanced braces"
        elif tok in "([":
            brackets += 1
        elif tok in ")]":
            brackets -= 1
            if brackets < 0:
                return "unbalanced brackets"
    if braces:
        return "unbalanced braces"
    if lr:
        return "unbalanced \\left/\\right"
    if envs:
        return "unbalanced \\begin/\\end"
    if brackets:
        return "unbalanced brackets"
    return None


def _normalise(answer: str) -> str:
    """The normalised form of ``answer`` (see :func:`_normalise_full`)."""
    return _normalise_full(answer)[0]


# --------------------------------------------------------------------------- parsing

class _Parsed(NamedTuple):
    items: tuple  # math-verify's parse result: sympy objects and strings
    error: str | None  # set when math-verify raised or timed out
    refused: str | None = None  # set when intgen's policy refuses the answer (overrides 11, 13)


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
    if _unbalanced(answer) is not None:
        return _Parsed((), None)  # override 17: never read a part of it
    s, refusal = _normalise_full(answer)
    if not s:
        return _Parsed((), None)
    if refusal is not None:
        return _Parsed((), None, refusal)
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


def _symbol_equals_expression(g, p) -> bool:
    """Override 16: True when one side is a bare symbol and the other an expression whose
    exact difference from it is zero (``i`` and ``1.0 i``; ``x`` and ``1.0x``).

    math-verify compares a bare symbol with anything only by name or as a product of
    letters (for text answers such as ``\\text{Evelyn}``), never by value.
    """
    if isinstance(g, sympy.Symbol) == isinstance(p, sympy.Symbol):
        return False
    other = p if isinstance(g, sympy.Symbol) else g
    if not isinstance(other, sympy.Expr) or isinstance(other, sympy.logic.boolalg.Boolean):
        return False
    if not other.free_symbols:
        return False
    try:
        return bool(sympy.expand(g - p).is_zero)
    except Exception:  # noqa: BLE001 - undecidable: leave math-verify's verdict
        return False


_PLAIN_INT = re.compile(r"([+-]?)0*(\d+)")
#: Plain integers longer than this are never handed to math-verify / sympy's parser
#: (Python refuses int <-> str conversions past 4300 digits by default; override 18).
_LONG_INT_DIGITS = 1000


@functools.lru_cache(maxsize=1024)
def _plain_int(answer: str) -> tuple[bool, str] | None:
    """Override 18: ``(negative, digits)`` when ``answer`` normalises to a plain integer
    (``-007`` -> ``(True, "7")``; ``-0`` is ``(False, "0")``), else None. No int is built."""
    s, refusal = _normalise_full(answer)
    m = _PLAIN_INT.fullmatch(s.strip()) if refusal is None else None
    if m is None:
        return None
    digits = m.group(2)
    return (m.group(1) == "-" and digits != "0", digits)


def _int_from_digits(digits: str) -> int:
    """The int of a digit string of any length without Python's int-string limit: the
    halves are converted separately and joined (about 0.05 s for 200,000 digits)."""
    if len(digits) <= 4000:
        return int(digits)
    half = len(digits) // 2
    low = digits[half:]
    return _int_from_digits(digits[:half]) * 10 ** len(low) + _int_from_digits(low)


def _exact_value(x) -> sympy.Expr | None:
    """``x`` with every float replaced by the decimal it prints as, when ``x`` is a number."""
    if not isinstance(x, sympy.Expr) or isinstance(x, sympy.logic.boolalg.Boolean):
        return None
    try:
        if not x.is_number:
            return None
        floats = x.atoms(sympy.Float)
        if floats:
            x = x.xreplace({f: sympy.Rational(str(f)) for f in floats})
        return x
    except Exception:  # noqa: BLE001
        return None


def _compare_long_int(n: tuple[bool, str], items: Sequence) -> tuple[Status, str]:
    """Override 18: a plain integer of more than ``_LONG_INT_DIGITS`` digits against the
    parsed other side: equal only when some number there has exactly that value."""
    value = _int_from_digits(n[1])
    target = sympy.Integer(-value if n[0] else value)
    for item in items:
        x = _exact_value(item)
        if x is None:
            continue
        try:
            if (x - target).is_zero is True:
                return "correct", REASON_CORRECT
        except Exception:  # noqa: BLE001 - an undecidable difference is not equality
            continue
    return "wrong", REASON_WRONG


_BASE_NUMBER = re.compile(r"-?\d+(?:\.\d+)?_(?:(\d)|\{\s*(\d+)\s*\})")


def _number_base(answer: str) -> int | None:
    """Override 14: the base of a whole answer written ``digits_base`` (``52_8``), else None."""
    m = _BASE_NUMBER.fullmatch(_normalise(answer))
    return None if m is None else int(m.group(1) or m.group(2))


@functools.lru_cache(maxsize=16384)
def _compare(gold: str, content: str) -> tuple[Status, str]:
    """Status and reason for a gold answer vs an extracted box content (cached)."""
    gi, pi = _plain_int(gold), _plain_int(content)
    long_gold = gi is not None and len(gi[1]) > _LONG_INT_DIGITS
    long_pred = pi is not None and len(pi[1]) > _LONG_INT_DIGITS
    if gi is not None and pi is not None and (long_gold or long_pred):  # override 18
        return ("correct", REASON_CORRECT) if gi == pi else ("wrong", REASON_WRONG)
    if not long_gold:
        gp = _parse_answer(gold)
        if gp.error is not None or not _has_sympy(gp.items):
            return "ungradable", REASON_GOLD_UNPARSED
    if pi is None and not _normalise(content):
        return "no_answer", REASON_EMPTY
    if long_pred:
        return _compare_long_int(pi, gp.items)
    pp = _parse_answer(content)
    if pp.error is not None:
        return "ungradable", f"prediction: {pp.error}"
    if pp.refused is not None:
        return "ungradable", f"{REASON_PRED_UNPARSED}: {pp.refused}"
    if not _has_sympy(pp.items):
        return "ungradable", REASON_PRED_UNPARSED
    if long_gold:
        return _compare_long_int(gi, pp.items)
    gb, pb = _number_base(gold), _number_base(content)
    if gb is not None and pb is not None and gb != pb:
        return "wrong", REASON_OTHER_BASE
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
        if not ok and _symbol_equals_expression(g, p):
            return "correct", REASON_CORRECT
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


# --------------------------------------------------------------------------- several boxes

_PAREN_PAIR = re.compile(r"(?:\\left\s*)?\((.*)(?:\\right\s*)?\)", re.DOTALL)


@functools.lru_cache(maxsize=4096)
def _answer_kind(answer: str) -> tuple[Literal["set", "tuple"], int] | None:
    """Override 15: ``("set", n)`` or ``("tuple", n)`` when ``answer`` holds ``n >= 2``
    values, else None.

    Decided on math-verify's parse of the normalised answer: a finite set of two values or
    more (``5, 7``, ``\\{5, 7\\}``, ``\\pm 2``, ``6 \\text{ or } 7``) is a set; a tuple of
    two or more (``(1, 2, 3)``, ``(5, 5)``) is a tuple, and so is an open interval written
    as a parenthesised pair (``(5, 7)``, ``\\left(5, 7\\right)``), which math-verify reads
    as the interval but which is an ordered pair as often. Intervals with a bracket,
    matrices, vectors and single values are not several values.
    """
    n = _plain_int(answer)
    if n is not None and len(n[1]) > _LONG_INT_DIGITS:
        return None
    p = _parse_answer(answer)
    if p.error is not None or p.refused is not None or not p.items:
        return None
    first = next((x for x in p.items if isinstance(x, (sympy.Basic, sympy.MatrixBase))), None)
    if isinstance(first, sympy.FiniteSet) and len(first) >= 2:
        return "set", len(first)
    if isinstance(first, sympy.Tuple) and len(first) >= 2:
        return "tuple", len(first)
    if (
        isinstance(first, sympy.Interval)
        and first.left_open
        and first.right_open
        and _PAREN_PAIR.fullmatch(_normalise(answer)) is not None
    ):
        return "tuple", 2
    return None


#: A set gold of n values is compared with at most max(this, 2n) different boxes.
_MAX_SET_BOXES = 64


def _combine_boxes(gold: str, boxes: Sequence[str]) -> tuple[str, tuple[Status, str] | None]:
    """Override 15: the answer judged for ``boxes`` (every complete box, in order).

    Returns ``(answer, decided)``; ``decided`` is a ``(status, reason)`` when the verdict
    is known without a comparison. Only for a gold answer that holds several values
    (:func:`_answer_kind`) and two boxes or more are the boxes combined: into ``a, b, c``
    for a set, ``(a, b, c)`` for a tuple, each box normalised on its own first (so each is
    read as it would be alone) and empty boxes left out; for a set, a box that repeats an
    earlier one (same normalised text) is left out too, since a set takes it once.
    Otherwise, or when the last box itself holds several values (the model wrote the whole
    answer in its final box), the last box stands. Decided without comparing: a box that
    is refused (overrides 11, 13) makes the answer ``ungradable``; more boxes than a tuple
    gold has values, or more than ``max(_MAX_SET_BOXES, 2n)`` different boxes for a set of
    ``n`` values (a repetition loop), is ``wrong``.
    """
    last = boxes[-1]
    if len(boxes) < 2:
        return last, None
    kind_size = _answer_kind(gold)
    if kind_size is None or _answer_kind(last) is not None:
        return last, None
    kind, size = kind_size
    parts: list[str] = []
    seen: set[str] = set()
    for content in boxes:
        norm, refusal = _normalise_full(content)
        if refusal is not None:
            return ", ".join(b.strip() for b in boxes), ("ungradable", f"{REASON_PRED_UNPARSED}: {refusal}")
        if not norm or (kind == "set" and norm in seen):
            continue
        seen.add(norm)
        parts.append(norm)
    if len(parts) < 2:
        return (parts[0] if parts else ""), None
    joined = ", ".join(parts)
    if kind == "tuple":
        joined = "(" + joined + ")"
        if len(parts) > size:  # each box is one value or more
            return joined, ("wrong", f"{len(parts)} boxes for a tuple of {size} values")
    elif len(parts) > max(_MAX_SET_BOXES, 2 * size):
        return joined, ("wrong", f"{len(parts)} different boxes for a set of {size} values")
    return joined, None


# --------------------------------------------------------------------------- public API

def gold_parses(gold: str) -> bool:
    """True when math-verify yields a sympy object for ``gold`` [docs/grading.md]. Never raises.

    The gold is normalised and parsed exactly as a box content would be (see module doc);
    an unbalanced gold (``\\frac{1}{2``) does not parse (override 17) [issue 13]. The
    runner calls this to reject a problem before any model call. A plain integer parses
    whatever its length (override 18).
    """
    n = _plain_int(gold)
    if n is not None and len(n[1]) > _LONG_INT_DIGITS:
        return True
    p = _parse_answer(gold)
    return p.error is None and _has_sympy(p.items)


def answers_match(gold: str, answer: str) -> bool:
    """True when the bare answer string (not boxed) equals ``gold`` by the grading rules.

    Used by the answer-leak rule on a ``\\boxed{}`` inside an intervention. False when
    either side does not parse or math-verify fails. Never raises.
    """
    return _compare(gold, answer)[0] == "correct"


def grade_answer(
    gold: str, output: str, finish_reason: str | None = None, *, faithful: bool = False
) -> Verdict:
    """Grade one model ``output`` against ``gold``. Never raises for any output.

    Order of checks:

    1. ``gold`` does not parse -> ``ungradable`` "gold answer does not parse".
    2. ``finish_reason == "length"`` -> ``no_answer`` even if the output holds a box: the
       model did not finish [docs/grading.md]. Other finish reasons are not special.
    3. No box, or an unbalanced last box -> ``no_answer`` (see ``extract_boxed``); an empty
       box -> ``no_answer``.
    4. The answer: the last box; for a gold that is a set or a tuple, every complete box
       combined (override 15) [issue 13].
    5. The answer does not parse -> ``ungradable`` "prediction does not parse"; a
       math-verify exception or timeout -> ``ungradable`` with that reason.
    6. ``verify(gold, pred, allow_set_relation_comp=True)`` [InT], plus the small-value
       guard -> ``correct`` / ``wrong``.

    ``faithful=True`` grades as the InT paper's released grader did (module doc, "Faithful
    mode") [issue 15]: the last box always (step 4 never combines), a complete last box of an
    output cut off at the length limit is graded (step 2 is skipped), and a verdict that
    would be ``ungradable`` is ``wrong``, its reason ending "the paper's grader scored it 0".
    """
    verdict = _grade(gold, output, finish_reason, faithful)
    if faithful and verdict.status == "ungradable":
        return Verdict("wrong", f"{verdict.reason}; {REASON_FAITHFUL_ZERO}", verdict.extracted)
    return verdict


def _grade(gold: str, output: str, finish_reason: str | None, faithful: bool) -> Verdict:
    if not gold_parses(gold):
        return Verdict("ungradable", REASON_GOLD_UNPARSED, None)
    if finish_reason == "length" and not faithful:
        return Verdict("no_answer", REASON_LENGTH, None)
    boxes, cut = _scan_boxes(output)
    if cut or not boxes:
        return Verdict("no_answer", REASON_UNBALANCED if cut else REASON_NO_BOX, None)
    if faithful:
        content, decided = boxes[-1], None
    else:
        content, decided = _combine_boxes(gold, boxes)
    status, reason = decided if decided is not None else _compare(gold, content)
    if status == "no_answer":
        return Verdict(status, reason, None)
    return Verdict(status, reason, content)


def grade_many(
    pairs: Sequence[tuple[str, str, str | None]], *, faithful: bool = False
) -> list[Verdict]:
    """Grade ``(gold, output, finish_reason)`` triples, in order (``faithful`` as in
    :func:`grade_answer`). Never raises.

    A simple loop for now; comparisons are memoised per (gold, extracted box content) in
    a bounded module-level LRU cache, and parses per answer string.
    """
    return [
        grade_answer(gold, output, finish_reason, faithful=faithful)
        for gold, output, finish_reason in pairs
    ]
