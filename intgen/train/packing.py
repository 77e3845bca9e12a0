"""Packed, padding-free SFT rows (docs/training.md, "Packing").

intgen tokenizes and masks every ``sft`` row itself (:mod:`intgen.train.data`). With packing
on, it then

1. turns each row's completion mask into labels, exactly as TRL does for an unpacked row
   (the token where the mask is 1, ``-100`` elsewhere; nothing is appended, so no
   end-of-turn or EOS token follows the partial target);
2. cuts rows longer than ``max_length`` to their first ``max_length`` tokens and drops rows
   left without a label (what TRL does to unpacked rows);
3. packs the rows best-fit decreasing into sequences of at most ``max_length`` tokens with
   TRL's :func:`trl.pack_dataset` (strategy ``bfd``), which keeps each row whole and
   records its length (``seq_lengths``).

TRL's padding-free collator then concatenates a micro-batch into one row of tokens whose
``position_ids`` restart at 0 at every packed row, and masks the label of each row's first
token (it would otherwise be predicted from the previous row's last token; it is a prompt
token, already ``-100``).

**No attention across rows.** The rows of a packed sequence must not see each other. How
depends on the attention implementation the model is loaded with (transformers'
``attn_implementation``):

- ``flash_attention_2`` / ``flash_attention_3``: variable-length kernels on the row
  boundaries (``cu_seq_lens`` from the collator, or the position ids);
- ``flex_attention``: a block mask built from the position ids (rows are skipped block by
  block, so the attention work follows the rows' lengths);
- ``intgen_sdpa_rows`` (:data:`SDPA_ROWS`, registered by this module with transformers'
  ``AttentionInterface``): PyTorch's ``scaled_dot_product_attention``, causal, called once
  per packed row (boundaries from the collator's ``cu_seq_lens_q`` or the position ids), so
  no mask is built and the attention work is that of the rows run apart; batches with a
  padding mask go to transformers' own sdpa. This is what runs on a CPU, and on CUDA
  without flash-attn (sdpa picks its flash kernel per row);
- ``sdpa`` and ``eager``: transformers builds a dense causal mask that is block-diagonal
  on the rows (it finds the rows where the position ids restart), which isolates them but
  costs memory and attention work quadratic in the packed sequence's length.

:func:`choose_attention` picks one, and :func:`check_row_isolation` proves it on the loaded
model before training (two short rows, packed and apart, must give the same logits);
training refuses to start when they differ.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

IGNORE = -100


class PackingError(RuntimeError):
    """Packing cannot keep the rows apart with this model or attention implementation."""


@dataclass
class PackedData:
    """The packed ``sft`` dataset and what packing did.

    Attributes:
        dataset: ``datasets.Dataset`` with ``input_ids``, ``labels`` and ``seq_lengths``
            (one list of row lengths per packed sequence).
        rows: rows packed (after dropping those without labels).
        sequences: packed sequences.
        tokens: tokens of the packed rows.
        dropped: rows left without a label after truncation to ``max_length``.
        max_length: the longest packed sequence allowed, in tokens.
    """

    dataset: Any
    rows: int
    sequences: int
    tokens: int
    dropped: int
    max_length: int


def labels_from_mask(input_ids: list[int], completion_mask: list[int]) -> list[int]:
    """Labels of one row: the token where the completion mask is 1, ``-100`` elsewhere
    (TRL's rule for pre-tokenized rows with ``completion_only_loss=True``)."""
    return [t if m else IGNORE for t, m in zip(input_ids, completion_mask, strict=True)]


def pack_sft_dataset(dataset, max_length: int) -> PackedData:
    """Pack a tokenized ``sft`` dataset (``input_ids``, ``completion_mask``) into sequences
    of at most ``max_length`` tokens (module docstring, steps 1-3).

    Raises:
        PackingError: ``max_length`` is not positive, or no row has a label left.
    """
    import datasets
    from trl import pack_dataset

    if not max_length or max_length <= 0:
        raise PackingError(f"packing needs a positive max_length (got {max_length!r})")
    ids_out, labels_out = [], []
    dropped = 0
    for ids, mask in zip(dataset["input_ids"], dataset["completion_mask"], strict=True):
        labels = labels_from_mask(ids, mask)[:max_length]
        if all(lab == IGNORE for lab in labels):
            dropped += 1
            continue
        ids_out.append(list(ids[:max_length]))
        labels_out.append(labels)
    if not ids_out:
        raise PackingError(f"no sft row keeps a labelled token within max_length={max_length}")
    if dropped:
        log.warning("%d sft rows have no labelled token within max_length=%d and are left out", dropped, max_length)
    rows = datasets.Dataset.from_dict({"input_ids": ids_out, "labels": labels_out})
    # one batch for the whole dataset, so best-fit decreasing sees every row (the default 1,000-row
    # batches would pack each thousand rows apart)
    packed = pack_dataset(rows, max_length, strategy="bfd", map_kwargs={"batch_size": len(rows)})
    tokens = sum(len(x) for x in ids_out)
    return PackedData(packed, len(ids_out), len(packed), tokens, dropped, max_length)


def unpack_rows(packed: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """Split one packed sequence (a dict with ``input_ids``, ``labels``, ``seq_lengths``)
    back into its rows: ``[(input_ids, labels), ...]`` in packed order."""
    out, start = [], 0
    for n in packed["seq_lengths"]:
        out.append((list(packed["input_ids"][start:start + n]), list(packed["labels"][start:start + n])))
        start += n
    if start != len(packed["input_ids"]):
        raise ValueError(f"seq_lengths add up to {start} tokens, the sequence has {len(packed['input_ids'])}")
    return out


# --------------------------------------------------------------------------- attention

#: the name intgen registers its row-by-row sdpa attention under (transformers' AttentionInterface)
SDPA_ROWS = "intgen_sdpa_rows"


_LAST_BOUNDS: list[Any] = [None, None]


def _row_bounds(length: int, kwargs: dict[str, Any]) -> list[tuple[int, int]] | None:
    """``[(start, end), ...]`` of the packed rows in a sequence of ``length`` tokens, from
    ``cu_seq_lens_q`` or from where ``position_ids`` restart; None for a single row."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        # every layer of one forward gets the same tensor: read it once (on CUDA a read waits for the device)
        if _LAST_BOUNDS[0] is not cu:
            _LAST_BOUNDS[:] = [cu, [int(x) for x in cu.tolist()]]
        edges = _LAST_BOUNDS[1]
    else:
        pos = kwargs.get("position_ids")
        if pos is None or pos.dim() != 2 or pos.shape[0] != 1 or pos.shape[1] != length:
            return None
        import torch

        first = pos[:, :1] - 1
        starts = (torch.diff(pos, prepend=first, dim=-1)[0] != 1).nonzero().flatten().tolist()
        edges = [0, *[s for s in starts if s > 0], length]
    if len(edges) <= 2 or edges[-1] != length:
        return None
    return list(zip(edges[:-1], edges[1:]))


def sdpa_by_row(module, query, key, value, attention_mask, **kwargs):
    """Attention for packed rows: causal ``scaled_dot_product_attention`` per row.

    Shapes as transformers' attention functions: ``query`` (1, heads, tokens, head_dim),
    ``key``/``value`` (1, kv_heads, tokens, head_dim); returns ((1, tokens, heads, head_dim),
    None). A batch with a padding mask, or a single row, goes to transformers' sdpa.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = None if attention_mask is not None or query.shape[0] != 1 else _row_bounds(query.shape[2], kwargs)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    outs = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                                   is_causal=True, **kwargs)[0] for s, e in bounds]
    return torch.cat(outs, dim=1), None


def _mask_for_rows(*args, attention_mask=None, **kwargs):
    """No mask for padding-free batches (the rows are split in :func:`sdpa_by_row`); a
    padding mask as transformers' sdpa builds it otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_sdpa_rows() -> str:
    """Register :func:`sdpa_by_row` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SDPA_ROWS, sdpa_by_row)
    AttentionMaskInterface.register(SDPA_ROWS, _mask_for_rows)
    return SDPA_ROWS


def choose_attention(requested: str, packing: bool) -> str | None:
    """The ``attn_implementation`` to load the model with.

    ``requested`` other than ``auto`` is used as given (``intgen_sdpa_rows`` is registered
    first). ``auto`` without packing: None (the model's default). ``auto`` with packing:
    ``flash_attention_2`` when CUDA and the ``flash_attn`` package are available; else
    ``intgen_sdpa_rows`` (causal sdpa per packed row; on CUDA sdpa runs its flash kernel).
    ``flex_attention`` (block-sparse on the rows, compiled) is available by name on CUDA;
    PyTorch has no flex attention backward on a CPU.
    """
    if requested == SDPA_ROWS or (requested == "auto" and packing):
        register_sdpa_rows()
    if requested != "auto":
        return requested
    if not packing:
        return None
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return SDPA_ROWS


def attention_of(model) -> str:
    """The attention implementation a loaded model runs (``config._attn_implementation``)."""
    return str(getattr(model.config, "_attn_implementation", None) or "default")


def padding_free_batch(rows: list[list[int]], pad_token_id: int) -> dict[str, Any]:
    """What TRL's padding-free collator gives the model for these rows packed into one
    sequence: ``input_ids``, ``position_ids`` (restarting per row), ``labels`` and the
    variable-length kernels' ``cu_seq_lens_*`` / ``max_length_*`` / ``seq_idx``."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
    flat = [t for r in rows for t in r]
    return collator([{"input_ids": flat, "labels": flat, "seq_lengths": [len(r) for r in rows]}])


def check_row_isolation(model, pad_token_id: int = 0, rows: list[list[int]] | None = None) -> float:
    """Run two short rows packed (as TRL's collator feeds them) and apart; return the
    largest difference of their logits relative to the logits' scale.

    Raises:
        PackingError: the packed logits differ (the attention implementation lets rows see
            each other), naming the implementation and what to do instead.
    """
    import torch

    vocab = int(model.config.get_text_config().vocab_size)
    if rows is None:
        g = torch.Generator().manual_seed(0)
        rows = [torch.randint(3, min(vocab, 5000), (n,), generator=g).tolist() for n in (7, 9)]
    device = next(model.parameters()).device
    batch = padding_free_batch(rows, pad_token_id)
    batch.pop("labels")
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(**batch, use_cache=False).logits[0].float()
            apart = torch.cat([model(input_ids=torch.tensor([r], device=device), use_cache=False).logits[0].float()
                               for r in rows])
    finally:
        model.train(was_training)
    scale = apart.abs().max().clamp(min=1e-6)
    diff = float(((packed - apart).abs().max() / scale).item())
    dtype = next(model.parameters()).dtype
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    if not diff <= tol:  # also catches NaN
        raise PackingError(
            f"packed rows see each other with attn_implementation={attention_of(model)!r}: two rows packed into one "
            f"sequence give logits {diff:.3g} (relative) away from the rows run apart (tolerance {tol:g}); load the "
            "model with another implementation (attn_implementation=sdpa, flex_attention or flash_attention_2) or "
            "train without packing (packing=false)")
    return diff
