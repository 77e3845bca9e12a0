"""Parsing the proposer's ``<intervention>`` block and the answer-leak rule.

This is intgen's own logic (docs/pipeline.md, "Parsing and the leak rule"); the paper's
version is in its ``parse_interventions.ipynb`` (docs/paper.md). Nothing here raises for a
model output: every failure is a :class:`ParsedIntervention` with ``status`` set to the
reason, which the propose stage records on the candidate.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
import warnings
from dataclasses import dataclass

from intgen import grading

# Reasons a proposer output is not a usable candidate (candidates.parse_status).
OK = "ok"
NO_TAG = "no_intervention_tag"
UNCLOSED = "unclosed_intervention"
UNPARSEABLE = "unparseable"
NO_LOCATION = "missing_location"
OUT_OF_RANGE = "location_out_of_range"
EMPTY = "empty_intervention"
LEAK = "answer_leak"
#: faithful mode only: the paper's parsing loop raised on this sample (a location with no
#: number, no content, a block that is not a mapping), which also dropped the later samples
#: of the same attempt (docs/faithful.md, item 2)
PAPER_ERROR = "paper_loop_error"

_OPEN = re.compile(r"<intervention>", re.IGNORECASE)
_CLOSE = re.compile(r"</intervention>", re.IGNORECASE)
_BLOCK = re.compile(r"<intervention>.*?</intervention>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^\s*```(?:json|python)?\s*|\s*```\s*$")
# the location key; its value is read from a bounded window after it (no backtracking over long runs)
_LOCATION_KEY = re.compile(r"""["']?location["']?[ \t]*:""", re.IGNORECASE)
# a location value: 5 / "5" / "Substep 5" / "**Substep 5**" / "step #5" (whole value, nothing else)
_LOCATION_VALUE = re.compile(r"""[\s"'*#]*(?:sub-?step|step)?[\s#]*(-?\d{1,18})[\s"'*.]*""", re.IGNORECASE)
_LOCATION_WINDOW = 48
MAX_LOCATION = 10**9  # anything larger is a garbled number, not a step
_CONTENT_START = re.compile(r"""["']?content["']?\s*:\s*(["'])""", re.IGNORECASE)
# LaTeX commands that begin with a JSON escape letter (\n, \t, \r, \b, \f, \u): when a
# backslash is followed by one of these words, it is LaTeX, not an escape.
_N_COMMANDS = (
    "neq|ne|nabla|nu|not|notin|neg|nleq|ngeq|nmid|ni|newline|nexists|nsubseteq|nsupseteq|"
    "nparallel|ncong|nsim|natural|nolimits|noindent|nonumber|nrightarrow|nleftarrow|nearrow|nwarrow|nless|ngtr"
)
_LATEX_BACKSLASH = re.compile(
    r"(?<!\\)((?:\\\\)*)\\(?=(?:(?:" + _N_COMMANDS + r")(?![A-Za-z])|[A-Za-mo-z][A-Za-z]|[^A-Za-z\\\"/'\n]))"
)


@dataclass(frozen=True)
class ParsedIntervention:
    """The result of parsing one proposer output.

    ``status`` is ``"ok"`` or one of the reason codes above; ``content`` and
    ``location`` hold what could be read even when the status is a rejection.
    """

    status: str
    content: str | None = None
    location: int | None = None
    detail: str = ""


def _escape_latex(raw: str) -> str:
    """Double the single backslashes that start LaTeX (``\\frac``, ``\\{``, ``\\neq``)
    so a JSON or Python reader keeps them; leave ``\\n``, ``\\"`` and ``\\\\`` alone."""
    return _LATEX_BACKSLASH.sub(lambda m: m.group(1) + "\\\\", raw)


def _decode_loose(value: str) -> str:
    """Decode the escapes a model writes inside a quoted string it did not escape
    properly: ``\\n`` newline, ``\\"`` and ``\\'`` quotes, ``\\\\`` one backslash; any
    other backslash is kept (LaTeX)."""
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "n" and not re.match(r"(?:" + _N_COMMANDS + r")(?![A-Za-z])", value[i + 1:]):
                out.append("\n"); i += 2; continue
            if nxt in "\"'":
                out.append(nxt); i += 2; continue
            if nxt == "\\":
                out.append("\\"); i += 2; continue
        out.append(c)
        i += 1
    return "".join(out)


def _read_dict(block: str) -> dict | None:
    """Read the block as JSON, then as a Python literal (the paper's ``ast.literal_eval``),
    after protecting LaTeX backslashes; None if neither reads it as a dict."""
    text = _escape_latex(block)
    for reader in (lambda s: json.loads(s, strict=False), ast.literal_eval):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # literal_eval warns on odd escapes in model text
                value = reader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _read_loose(block: str) -> tuple[str | None, str | None]:
    """Fallback for blocks with unescaped quotes inside ``content``: the content runs from
    its opening quote to the last matching quote before ``, "location"`` or the closing
    brace. Returns (content, raw location text)."""
    loc = _LOCATION_KEY.search(block)
    loc_text = None
    if loc:
        value = re.split(r"[,}\n]", block[loc.end(): loc.end() + _LOCATION_WINDOW], maxsplit=1)[0]
        m = _LOCATION_VALUE.fullmatch(value)
        loc_text = m.group(1) if m else value
    start = _CONTENT_START.search(block)
    if not start:
        return None, loc_text
    quote = start.group(1)
    rest = block[start.end():]
    # the content ends at a quote followed by a comma + location key, or by the closing brace
    end_pat = re.compile(re.escape(quote) + r"""\s*(?:,\s*["']?location["']?\s*:|,?\s*\}\s*$)""", re.IGNORECASE)
    ends = [m.start() for m in end_pat.finditer(rest)]
    if not ends:
        return None, loc_text
    return _decode_loose(rest[: ends[0]]), loc_text


def _to_location(value: object) -> int | None:
    """An integer location from an int, an integer-valued float, or a string that is only a
    step number (``"5"``, ``"Substep 5"``, ``"**Substep 5**"``); None for anything else
    (``3.7``, ``"1/2"``, ``"third"``, ``True``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= _LOCATION_WINDOW:
        m = _LOCATION_VALUE.fullmatch(value)
        return int(m.group(1)) if m else None
    return None


def echoed_blocks(*prompt_texts: str) -> tuple[str, ...]:
    """The ``<intervention>`` blocks that appear in the texts the proposer was shown (a
    problem, reference solution or failed trace may contain one), for
    :func:`parse_intervention`'s ``echoed``."""
    blocks: list[str] = []
    for text in prompt_texts:
        if text and "intervention" in text:
            blocks += _BLOCK.findall(text)
    return tuple(dict.fromkeys(blocks))


def parse_intervention(output: str, num_steps: int, echoed: tuple[str, ...] = ()) -> ParsedIntervention:
    """Parse the LAST ``<intervention>...</intervention>`` block of a proposer output: the
    text between the last closing tag and the opening tag nearest before it, so a tag the
    model reopened inside its own block never ends up in the content.

    Tolerates (docs/pipeline.md; docs/paper.md): code fences, single or double quotes,
    LaTeX backslashes written unescaped (``\\frac``, ``\\neq``), unescaped double quotes
    inside ``content``, and locations written as ``"Substep 5"`` or ``5.0``.

    Args:
        output: the raw proposer output.
        num_steps: the number of steps of the failed trace; valid locations are
            ``1..num_steps``.
        echoed: blocks that stand verbatim in the prompt (:func:`echoed_blocks`): a block
            the model only copied from its input is not its proposal, so such copies are
            removed from the output before parsing [issue 13: a problem text planted with a
            block was parsed as the intervention].

    Returns:
        A :class:`ParsedIntervention`; ``status`` is ``"ok"``, ``no_intervention_tag``,
        ``unclosed_intervention``, ``unparseable``, ``missing_location``, ``location_out_of_range`` or
        ``empty_intervention``. The leak rule is separate (:func:`leaks_answer`).
    """
    try:
        for block in echoed:
            output = output.replace(block, "")
        return _parse(output, num_steps)
    except Exception as e:  # noqa: BLE001 - a promise: no model output makes the parser raise
        return ParsedIntervention(UNPARSEABLE, detail=f"the parser failed on this output ({type(e).__name__}: {e})"[:300])


def _parse(output: str, num_steps: int) -> ParsedIntervention:
    closes = list(_CLOSE.finditer(output))
    opens = [m for m in _OPEN.finditer(output) if not closes or m.end() <= closes[-1].start()]
    if not closes or not opens:
        if _OPEN.search(output):
            return ParsedIntervention(UNCLOSED, detail="an <intervention> block is opened but never closed "
                                                        "(often: the output hit the token limit)")
        return ParsedIntervention(NO_TAG, detail="no <intervention>...</intervention> block in the output")
    # the block is the text between the last closing tag and the opening tag nearest before it
    block = _FENCE.sub("", output[opens[-1].end():closes[-1].start()]).strip()
    data = _read_dict(block)
    if data is not None:
        content = data.get("content")
        location = _to_location(data.get("location"))
        if content is not None and not isinstance(content, str):
            return ParsedIntervention(UNPARSEABLE, location=location,
                                      detail=f"content is a {type(content).__name__}, not text")
    else:
        content, loc_text = _read_loose(block)
        location = _to_location(loc_text)
        if content is None and location is None:
            return ParsedIntervention(UNPARSEABLE, detail=f"cannot read the intervention block: {block[:200]!r}")
    if content is None or not content.strip():
        return ParsedIntervention(EMPTY, content=content, location=location, detail="the intervention content is empty")
    if location is None:
        return ParsedIntervention(NO_LOCATION, content=content, detail="no integer location in the intervention block")
    if not 1 <= location <= num_steps:
        return ParsedIntervention(OUT_OF_RANGE, content=content, location=location if abs(location) <= MAX_LOCATION else None,
                                  detail=f"location {location} is outside 1..{num_steps}")
    return ParsedIntervention(OK, content=content, location=location)


def _normalize(text: str) -> str:
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ ", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # digit grouping: 1,000 -> 1000
    return text.rstrip(".").strip()


def boxed_answers(text: str) -> list[str]:
    """Every ``\\boxed{}``/``\\fbox{}`` content in the text, each read by the grader's extractor."""
    starts = [m.start() for m in re.finditer(r"\\(?:boxed|fbox)", text)]
    out = []
    for i, pos in enumerate(starts):
        segment = text[pos: starts[i + 1] if i + 1 < len(starts) else len(text)]
        box = grading.extract_boxed(segment)
        if box is not None:
            out.append(box)
    return out


def leaks_answer(content: str, gold: str, faithful: bool = False) -> bool:
    """Whether an intervention gives away the gold answer.

    intgen's rule (docs/pipeline.md): it leaks when it contains a ``\\boxed{}`` whose
    content the grader finds equal to the gold answer, or, for gold answers other than
    a single-digit integer (or a single letter: choices A-E, a variable x), when the
    normalized gold appears as a whole token: gold
    ``12`` matches ``x = 12`` but not ``112``, ``12x`` or ``12.5``. Normalization strips
    ``$``, ``\\left``/``\\right``, thin spaces, a trailing period and digit grouping,
    maps ``\\dfrac``/``\\tfrac`` to ``\\frac``, unwraps ``\\text{}``, and ignores whitespace inside the gold.

    The paper's code used a raw substring test ``gold in content`` (docs/paper.md, "Parsing and filtering"),
    which rejects most interventions when the gold is ``2``; ``faithful=True``
    reproduces it.

    This calls math-verify in this process; the runner instead grades the boxed answers
    (:func:`boxed_answers`) in its grading pool, where a pathological expression cannot
    hang the run, and combines them with :func:`leaks_as_token`.
    """
    if faithful:
        return gold in content
    return leaks_as_token(content, gold) or any(grading.answers_match(gold, box) for box in boxed_answers(content))


def leaks_as_token(content: str, gold: str) -> bool:
    """The token half of :func:`leaks_answer` (no math-verify call): the normalized gold
    appears in the content as a whole token; never for a single character."""
    g = _normalize(gold)
    if len(g.lstrip("-")) <= 1:  # a single digit or letter (A-E, x) appears in any sentence
        return False
    pattern = r"\s*".join(re.escape(ch) for ch in g if not ch.isspace())
    # a token boundary: no letter/digit (or decimal part) glued on either side
    pattern = r"(?<![A-Za-z0-9])(?<!\d\.)" + pattern + r"(?![A-Za-z0-9])(?!\.\d)"
    return re.search(pattern, _normalize(content)) is not None


# -- the paper's parser (faithful mode; docs/faithful.md, item 2) ------------------------------
_PAPER_BLOCK = re.compile(r"<intervention>(.*?)</intervention>", re.DOTALL)
# "location": "Substep 5" (a word, then digits; optional quotes) -> "location": 5
_PAPER_LOCATION_WORD = re.compile(r"""(["']location["']\s*:\s*)["']?[A-Za-z_]+\s*(\d+)["']?""")
# a backslash and the character after it (not a newline)
_PAPER_ESCAPE = re.compile(r"\\(.)")
# "content": "..." with its escapes -> "content": """..."""
_PAPER_CONTENT = re.compile(r'("content":\s*)"((?:[^"\\]|\\.)*)"')


def _paper_escapes(text: str) -> str:
    """Double each backslash whose next character is not ``n``, a backslash or a quote."""
    return _PAPER_ESCAPE.sub(lambda m: m.group(0) if m.group(1) in "n\\'\"" else "\\\\" + m.group(1), text)


def _paper_literal(text: str) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes in model text warn
        return ast.literal_eval(textwrap.dedent(text))


def parse_intervention_paper(output: str) -> ParsedIntervention:
    """Parse one proposer output the way the paper's ``parse_interventions.ipynb`` did
    (faithful mode; docs/faithful.md, item 2; docs/paper.md, "Parsing and filtering").

    The last ``<intervention>(.*?)</intervention>`` match (case-sensitive, DOTALL); a
    location written as a word and a number (``"Substep 5"``) becomes the number; each
    backslash not followed by ``n``, ``\\``, ``'`` or ``"`` is doubled; then
    ``ast.literal_eval`` of the dedented text, and if that fails, once more with the
    ``"content"`` string put in triple quotes. An output neither reading accepts is
    ``unparseable`` (dropped, where intgen's own parser reads it loosely).

    Then, as the paper's code did: the location is ``int(location)``, or failing that the
    first run of digits in ``str(location)`` (``"5 (the product)"`` -> 5); an empty content
    is kept; no range check is made (:func:`intgen.steps.build_target` with
    ``any_location`` keeps the whole attempt for a location past the last step). Where the
    paper's loop raised (no digits in the location, no ``content`` or ``location`` key, a
    content that is not text, a block that is not a mapping), the status is
    ``paper_loop_error``: the paper dropped that sample and every later sample of the same
    attempt. Locations beyond +-10^9 are clamped to it (same slice of any real trace).

    Never raises.
    """
    try:
        return _parse_paper(output)
    except Exception as e:  # noqa: BLE001 - no model output makes the parser raise
        return ParsedIntervention(UNPARSEABLE, detail=f"the parser failed on this output ({type(e).__name__}: {e})"[:300])


def _parse_paper(output: str) -> ParsedIntervention:
    blocks = _PAPER_BLOCK.findall(output)
    if not blocks:
        if "<intervention>" in output:
            return ParsedIntervention(UNCLOSED, detail="an <intervention> block is opened but never closed")
        return ParsedIntervention(NO_TAG, detail="no <intervention>...</intervention> block in the output")
    block = _PAPER_LOCATION_WORD.sub(lambda m: m.group(1) + m.group(2), blocks[-1])
    try:
        value = _paper_literal(_paper_escapes(block))
    except Exception:  # noqa: BLE001 - the paper retried on any exception
        try:
            value = _paper_literal(_paper_escapes(_PAPER_CONTENT.sub(lambda m: m.group(1) + '"""' + m.group(2) + '"""',
                                                                     block)))
        except Exception as e:  # noqa: BLE001
            return ParsedIntervention(UNPARSEABLE, detail=f"ast.literal_eval cannot read the block ({type(e).__name__}); "
                                                          "the paper dropped such outputs")
    halt = "the paper's parsing loop raised here, dropping this sample and the later samples of this attempt"
    try:
        raw_location = value["location"]  # type: ignore[index]
    except Exception as e:  # noqa: BLE001
        return ParsedIntervention(PAPER_ERROR, detail=f"no location ({type(e).__name__}); {halt}")
    try:
        location = int(raw_location)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        digits = re.search(r"(\d+)", str(raw_location))
        if digits is None:
            return ParsedIntervention(PAPER_ERROR, detail=f"location {str(raw_location)[:60]!r} has no number; {halt}")
        location = int(digits.group(1))
    location = max(-MAX_LOCATION, min(MAX_LOCATION, location))
    try:
        content = value["content"]  # type: ignore[index]
    except Exception as e:  # noqa: BLE001
        return ParsedIntervention(PAPER_ERROR, location=location, detail=f"no content ({type(e).__name__}); {halt}")
    if not isinstance(content, str):
        return ParsedIntervention(PAPER_ERROR, location=location,
                                  detail=f"content is a {type(content).__name__}, not text; {halt}")
    return ParsedIntervention(OK, content=content, location=location)
