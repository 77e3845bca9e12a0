"""The training data: finding the exported views, and tokenizing the ``sft`` view.

``--data`` is one of (checked in this order):

1. an intgen run directory (it has ``manifest.json`` or ``interventions.parquet``): its
   ``export/`` folder is used, written first with :func:`intgen.export.export_run` when it
   is missing or older than the run's tables;
2. an export folder (``RUN_DIR/export`` or a copy of one: a folder with a ``README.md``
   or one subfolder per config);
3. a Hugging Face dataset repo id (``NAMESPACE/NAME``), as ``intgen push`` wrote it.

A local export is read from its config's Parquet files (``export/<config>/*.parquet``, so a
copied export without its card works too); a Hub repo with
``datasets.load_dataset(REPO, CONFIG, split="train")``.

**The SFT masking** (docs/training.md, "SFT rows"). The ``sft`` target is a partial trace (steps before
the error + the intervention) that must not end the assistant turn. Stock TRL trains an
end-of-turn token after every completion, so intgen tokenizes each row itself, in one pass
over the whole rendered string::

    text = chat_template(prompt, add_generation_prompt=True) + completion

(no end-of-turn, no EOS, no special tokens added by the tokenizer: the template already
wrote them). The completion mask comes from the character offsets of that one
tokenization: a token carries a label iff it holds at least one character of the
completion (its end offset is past the boundary). The pieces are never encoded apart:
byte-level BPE merges across the boundary (SmolLM2: the template's ``"\\n"`` and a
completion that starts with ``"  "`` or ``"\\n\\n"`` become one token ``"\\n "`` /
``"\\n\\n"``). Such a **straddling token** is labelled: it is the only token that holds the
completion's first characters, so leaving it out would drop them from training. Its
prompt characters are then predicted too (the tokens before it end one character
earlier than the rendered prompt does); rows with such a token are counted and logged.
TRL receives ``input_ids`` + ``completion_mask`` and, with ``completion_only_loss=True``,
labels exactly the masked tokens and appends nothing; with packing, intgen builds the same
labels itself (:mod:`intgen.train.packing`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_RUN_TABLES = ("interventions", "problems", "sft")


class DataError(ValueError):
    """``--data`` names nothing usable, or the view is missing or malformed."""


# --------------------------------------------------------------------------- locating the views


def _is_run_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / "interventions.parquet").is_file()


def _export_is_stale(run_dir: Path, export: Path) -> bool:
    """True when ``export/`` is missing or older than one of the run's tables (a resumed run)."""
    card = export / "README.md"
    if not card.is_file():
        return True
    tables = [run_dir / f"{t}.parquet" for t in _RUN_TABLES]
    return any(t.exists() and t.stat().st_mtime > card.stat().st_mtime for t in tables)


def resolve_data(data: str) -> tuple[str, str]:
    """Where to load the views from: ``(path_or_repo, "local" | "hub")``.

    A run directory without a current export is exported first (on the main process
    only, when launched with several processes).

    Raises:
        DataError: a local path that is neither a run directory nor an export folder, or a
            string that is neither an existing path nor a repo id.
    """
    path = Path(data).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(f"--data {data}: not a folder (give an intgen run directory, its export/ folder, "
                            "or a Hugging Face dataset repo id)")
        if _is_run_dir(path):
            export = path / "export"
            from accelerate import PartialState

            with PartialState().main_process_first():
                if _export_is_stale(path, export):
                    from intgen.export import export_run

                    log.info("exporting %s (its export/ is missing or older than the run)", path)
                    try:
                        export_run(path)
                    except FileNotFoundError as e:
                        raise DataError(f"--data {data}: {e}") from e
            return str(export), "local"
        if (path / "README.md").is_file() or any((path / c).is_dir() for c in ("sft", "rl")):
            return str(path), "local"
        raise DataError(f"--data {data}: neither an intgen run directory (no manifest.json) nor an export folder "
                        "(no README.md, no sft/ or rl/ folder)")
    if _REPO_ID.match(data):
        return data, "hub"
    raise DataError(f"--data {data}: no such folder, and not a Hugging Face dataset repo id (NAMESPACE/NAME)")


def load_view(data: str, config: str):
    """The ``train`` split of one config (``sft`` or ``rl``) as a ``datasets.Dataset``.

    Raises:
        DataError: the data cannot be found, or it has no such config (for ``sft``: the run
            accepted no interventions).
    """
    import datasets

    where, kind = resolve_data(data)
    if kind == "local":
        folder = Path(where) / config
        files = sorted(str(f) for f in folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            why = " (the run accepted no interventions, so the export has no sft rows)" if config == "sft" else ""
            raise DataError(f"--data {data}: the export {where} has no {config!r} config{why}")
        return datasets.load_dataset("parquet", data_files={"train": files}, split="train")
    try:
        return datasets.load_dataset(where, config, split="train")
    except ValueError as e:
        if "BuilderConfig" in str(e):
            raise DataError(f"--data {data}: the dataset has no {config!r} config: {e}") from e
        raise


# --------------------------------------------------------------------------- SFT rows


@dataclass
class EncodedRow:
    """One tokenized SFT row.

    Attributes:
        input_ids: tokens of ``text`` (the rendered prompt + the completion), nothing after.
        completion_mask: 1 on tokens that hold a completion character, else 0.
        text: the string that was tokenized.
        boundary: the character index where the completion starts in ``text``.
        straddle: index of the token that holds both prompt and completion characters, or None.
    """

    input_ids: list[int]
    completion_mask: list[int]
    text: str
    boundary: int
    straddle: int | None


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise DataError(f"unsupported message content: {type(content).__name__}")


def completion_text(completion: Any) -> str:
    """The target text of an ``sft`` completion: a string, or a list with one assistant message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and len(completion) == 1 and isinstance(completion[0], dict):
        msg = completion[0]
        if msg.get("role", "assistant") != "assistant":
            raise DataError(f"the completion's message has role {msg.get('role')!r}, expected 'assistant'")
        return message_text(msg.get("content"))
    size = len(completion) if hasattr(completion, "__len__") else "?"
    raise DataError("a completion must be a string or a list with one assistant message "
                    f"(got {type(completion).__name__} of length {size})")


def render_prompt(tokenizer, prompt: Any, chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """The prompt as the model sees it before its answer: the chat template applied to the
    messages with ``add_generation_prompt=True``; a string prompt is used verbatim."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template, so conversational prompts cannot be rendered; "
                        "use a chat model, or give string prompts")
    messages = [{"role": m["role"], "content": message_text(m["content"])} for m in prompt]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **(chat_template_kwargs or {}))
    if not isinstance(rendered, str):
        raise DataError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}, not a string")
    return rendered


def encode_sft_row(tokenizer, prompt: Any, completion: Any,
                   chat_template_kwargs: dict[str, Any] | None = None) -> EncodedRow:
    """Tokenize one row in one pass and mask it from character offsets (module docstring).

    Raises:
        DataError: the tokenizer gives no offsets (a slow tokenizer), the completion is
            empty, or the labelled tokens do not cover the completion.
    """
    prompt_text = render_prompt(tokenizer, prompt, chat_template_kwargs)
    target = completion_text(completion)
    if not target:
        raise DataError("empty completion")
    text = prompt_text + target
    boundary = len(prompt_text)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as e:  # slow (Python) tokenizers have no offsets
        raise DataError(f"the tokenizer gives no character offsets ({e}); use a fast tokenizer") from e
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    mask = [1 if end > boundary else 0 for _, end in offsets]
    if not any(mask):
        raise DataError("no token holds a completion character: the completion was lost in tokenization")
    first = mask.index(1)
    if 0 in mask[first:]:  # end offsets never decrease, so this means broken offsets
        raise DataError("the completion tokens are not contiguous; the tokenizer's offsets are unusable")
    straddle = first if offsets[first][0] < boundary else None
    # Offsets can be trimmed by some tokenizers; check what was labelled against the text itself: the
    # unlabelled tokens must decode to (a prefix of) the rendered prompt, never into the completion.
    head = tokenizer.decode(ids[:first], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if text.startswith(head) and len(head) > boundary:
        raise DataError(f"the unlabelled tokens reach {len(head) - boundary} characters into the completion")
    return EncodedRow(ids, mask, text, boundary, straddle)


@dataclass
class SFTData:
    """The tokenized ``sft`` view: the dataset handed to TRL and what was seen."""

    dataset: Any                 # datasets.Dataset with input_ids, completion_mask
    rows: int
    straddled: int               # rows whose boundary token straddles prompt and completion
    too_long: int                # rows longer than max_length (TRL keeps their start)
    tokens: int


def build_sft_dataset(view, tokenizer, *, max_length: int | None = None,
                      chat_template_kwargs: dict[str, Any] | None = None, limit: int | None = None) -> SFTData:
    """Tokenize the ``sft`` view (columns ``prompt`` and ``completion``) into the
    pre-tokenized dataset TRL trains on: ``input_ids`` and ``completion_mask`` only.

    Raises:
        DataError: the view lacks the columns, or a row cannot be encoded (row index named).
    """
    import datasets

    missing = {"prompt", "completion"} - set(view.column_names)
    if missing:
        raise DataError(f"the sft view lacks the column(s) {sorted(missing)} (has {view.column_names})")
    n = len(view) if limit is None else min(limit, len(view))
    input_ids, masks = [], []
    straddled = too_long = tokens = 0
    for i in range(n):
        row = view[i]
        try:
            enc = encode_sft_row(tokenizer, row["prompt"], row["completion"], chat_template_kwargs)
        except DataError as e:
            ident = row.get("candidate_id") or f"row {i}"
            raise DataError(f"sft {ident}: {e}") from e
        input_ids.append(enc.input_ids)
        masks.append(enc.completion_mask)
        straddled += enc.straddle is not None
        too_long += max_length is not None and len(enc.input_ids) > max_length
        tokens += len(enc.input_ids)
    if straddled:
        log.info("%d of %d sft rows have a token that straddles the prompt/completion boundary; it is labelled "
                    "(intgen.train.data)", straddled, n)
    if too_long:
        log.warning("%d of %d sft rows are longer than max_length=%s tokens; TRL keeps their start and drops "
                    "rows left without labels", too_long, n, max_length)
    ds = datasets.Dataset.from_dict({"input_ids": input_ids, "completion_mask": masks})
    return SFTData(ds, n, straddled, too_long, tokens)
