"""Chat rendering and the prefix-fidelity check (docs/job-spec.md, "backend", continuation pitfalls).

Every backend that renders chats itself (vLLM in process, an OpenAI-compatible server
with ``continuation: completions``, transformers) renders them here, with the model's own
chat template (transformers' ``apply_chat_template``), and tokenizes the rendered string
once with ``add_special_tokens=False``: the template already wrote every special token the
model needs, so tokenizing again must not add a second BOS.

A continuation (the check and baseline stages, and the proposer's ``response_prefix``)
leaves the last assistant message open: ``continue_final_message=True,
add_generation_prompt=False``. Before such a prompt goes out, :meth:`ChatRenderer.render`
checks that the model will see exactly the trace it is asked to continue:

1. the rendered text ends with the unfinished message's exact text (a trailing ``\\n\\n``
   kept), so no end-of-turn or EOS token follows it;
2. the token ids hold exactly the special tokens the rendered text spells (none gained by
   tokenizing again, no BOS twice), the last token is not a special token, and the ids
   decode back to text that ends with the prefix.

Documented repairs (each counted in :attr:`ChatRenderer.repairs` and recorded in the run
manifest):

- ``restored_whitespace``: the template trimmed the message's trailing (or leading)
  whitespace (Llama 3's ``| trim``; transformers then cuts the rendered string with
  ``rstrip()``): the trimmed whitespace is put back, so ``Step 1 ...\\n\\n`` keeps its
  ``\\n\\n``.
- ``removed_empty_think``: the template injected an empty ``<think></think>`` block in front
  of an assistant message that itself starts with ``<think>`` (Qwen3's template for the
  last assistant turn): the injected block is removed, so the model continues its own
  thinking instead of a closed empty one.

Text prompts. A server that takes only strings as the prompt of ``/v1/completions``
(llama.cpp's Python server) tokenizes the text itself, adding the tokenizer's special
tokens. :func:`text_prompt` gives the string whose tokenization is exactly the rendered
ids: the rendered text, minus its leading BOS spelling when the tokenizer adds a BOS (so
the BOS is not doubled). The OpenAI-compatible backend checks the result against the
server's own tokenizer endpoint where it has one.

Anything else (a template that drops or rewrites part of the message, a tokenizer that adds
special tokens or does not round-trip the text) raises :class:`PrefixFidelityError`: a
clear error, never silent corruption. A message whose own text contains a special token's
spelling (e.g. a literal ``<|im_end|>``) cannot be tokenized faithfully either; that is a
problem of that one request (:attr:`Rendered.problem`), which the backend answers with a
``finish_reason="error"`` completion.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from intgen.backends.base import BackendError

_PROBE = "PROBE-MESSAGE"
_EMPTY_THINK = re.compile(r"<think>\s*</think>\s*$")


class PrefixFidelityError(BackendError):
    """The chat template or tokenizer would not put the exact prefix in front of the model."""


@dataclass(frozen=True)
class Rendered:
    """A rendered chat: the text, its token ids, the repairs applied, and a per-request
    ``problem`` (None when the prompt is faithful)."""

    text: str
    ids: list[int]
    repairs: tuple[str, ...] = ()
    problem: str | None = None


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if not isinstance(content, str):
        raise PrefixFidelityError("a continued assistant message must have text content")
    return content


def render_text(tokenizer: Any, messages: Sequence[dict[str, Any]], continue_final: bool = False,
                chat_template_kwargs: dict[str, Any] | None = None,
                chat_template: str | None = None) -> tuple[str, tuple[str, ...]]:
    """The rendered chat string and the repairs applied to it (see the module docstring).

    Args:
        tokenizer: a transformers tokenizer with a chat template (or ``chat_template``).
        messages: the chat; with ``continue_final`` the last one is the open assistant turn.
        continue_final: leave the last message open instead of adding a generation prompt.
        chat_template_kwargs: extra template variables (e.g. ``enable_thinking``).
        chat_template: a template string to use instead of the tokenizer's own.

    Raises:
        PrefixFidelityError: the template does not keep the open message's exact text at
            the end of the rendered string, and no documented repair applies.
    """
    kwargs = dict(chat_template_kwargs or {})
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=not continue_final,
                                             continue_final_message=continue_final, **kwargs)
    except ValueError as e:
        if continue_final and "continue_final_message" in str(e):
            raise PrefixFidelityError("the chat template deletes part of the unfinished assistant message, so it "
                                      f"cannot be continued exactly ({str(e).splitlines()[0]})") from e
        raise
    if not continue_final:
        return text, ()
    content = _message_text(messages[-1])
    repairs: list[str] = []
    if not text.endswith(content):
        stripped = content.strip()
        if stripped and text.endswith(content.rstrip()):
            text += content[len(content.rstrip()):]
            repairs.append("restored_whitespace")
        elif stripped and text.endswith(stripped):
            text = text[: len(text) - len(stripped)] + content
            repairs.append("restored_whitespace")
        else:
            tail = text[-80:]
            raise PrefixFidelityError(
                "the chat template changes the unfinished assistant message, so it cannot be continued exactly: the "
                f"rendered prompt ends with {tail!r}, the message ends with {content[-80:]!r}. Use a template that "
                "keeps an assistant message verbatim (backend.chat_template_kwargs may switch the template's mode).")
    if content.lstrip().startswith("<think>"):
        before = text[: len(text) - len(content)]
        m = _EMPTY_THINK.search(before)
        if m:
            text = before[: m.start()] + content
            repairs.append("removed_empty_think")
    return text, tuple(repairs)


def _special_tokens(tokenizer: Any) -> tuple[set[int], list[str]]:
    """Ids and spellings of the tokenizer's special tokens (EOS, BOS, end-of-turn, added specials)."""
    ids = {i for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None}
    strs = {s for s in (getattr(tokenizer, "all_special_tokens", None) or []) if s}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
            strs.add(str(tok))
    for attr in ("eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            ids.add(v)
    return ids, sorted(strs, key=len, reverse=True)


def check_tokens(tokenizer: Any, text: str, ids: Sequence[int], prefix: str | None,
                 special: tuple[set[int], list[str]] | None = None) -> None:
    """The token-level half of the prefix-fidelity check (module docstring, item 2).

    Args:
        text: the rendered string the ids came from.
        ids: its token ids, as the model will see them.
        prefix: the open assistant message's text, or None for a non-continuation prompt.

    Raises:
        PrefixFidelityError: a special token was added (BOS twice, or more special tokens
            than the text spells), a special token ends a continuation prompt, or the ids
            do not decode back to text ending with the prefix.
    """
    special_ids, special_strs = special or _special_tokens(tokenizer)
    if not ids:
        raise PrefixFidelityError("the rendered prompt tokenizes to nothing")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        raise PrefixFidelityError(f"the prompt starts with the BOS token twice ({tokenizer.bos_token!r}): the template "
                                  "writes it and tokenizing added it again")
    in_ids = Counter(i for i in ids if i in special_ids)
    spelled = len(re.findall("|".join(map(re.escape, special_strs)), text)) if special_strs else 0
    if sum(in_ids.values()) > spelled:
        raise PrefixFidelityError(f"tokenizing the rendered prompt added special tokens: the text spells {spelled}, "
                                  f"the ids hold {sum(in_ids.values())}")
    if prefix is None:
        return
    if prefix and ids[-1] in special_ids:
        raise PrefixFidelityError(f"a special token ({tokenizer.convert_ids_to_tokens(ids[-1])!r}) follows the "
                                  "unfinished assistant message; the model would see a closed turn")
    if prefix:
        decoded = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not decoded.endswith(prefix):
            raise PrefixFidelityError(f"the prompt's tokens do not decode back to the unfinished message: they end "
                                      f"with {decoded[-60:]!r}, the message ends with {prefix[-60:]!r}")


def text_prompt(tokenizer: Any, text: str, ids: Sequence[int]) -> str:
    """The string whose usual tokenization (``add_special_tokens=True``) is ``ids``, the
    token ids of the rendered ``text`` (module docstring, "Text prompts").

    A chat template already writes the BOS token when the model wants one (Llama 3's
    ``<|begin_of_text|>``); a server that tokenizes a text prompt adds it again when the
    tokenizer adds special tokens. So the rendered text goes as it is when tokenizing it that
    way gives ``ids`` (SmolLM2, Qwen: the tokenizer adds nothing), and with its leading BOS
    spelling removed when the tokenizer puts that BOS back.

    Raises:
        PrefixFidelityError: neither string tokenizes to ``ids``.
    """
    def tokens(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=True)["input_ids"])

    want = list(ids)
    if tokens(text) == want:
        return text
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and tokens(text[len(bos):]) == want:
        return text[len(bos):]
    got = tokens(text)
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    raise PrefixFidelityError(
        f"the tokenizer adds special tokens to a text prompt that no change of the text can undo (first difference "
        f"at token {i}: {got[i:i + 3]} instead of {want[i:i + 3]}), so a server given the text would not see the "
        "rendered token ids; use a server that takes token ids (backend.prompt_format=token_ids)")


class ChatRenderer:
    """Renders chats for one tokenizer, with the fidelity check and a small cache (the r
    continuations of one candidate share one prompt, and the runner counts tokens before
    sending). Thread-safe.

    Args:
        tokenizer: a transformers tokenizer with a chat template.
        chat_template_kwargs: extra template variables from ``backend.chat_template_kwargs``.
        cache_size: rendered prompts kept.

    Raises:
        BackendError: the tokenizer has no chat template.
    """

    def __init__(self, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None, cache_size: int = 4096):
        if getattr(tokenizer, "chat_template", None) is None:
            raise BackendError("the model's tokenizer has no chat template; intgen needs one to render chats")
        self.tokenizer = tokenizer
        self.kwargs = dict(chat_template_kwargs or {})
        self.repairs: Counter[str] = Counter()
        self._special = _special_tokens(tokenizer)
        self._cache: OrderedDict[str, Rendered] = OrderedDict()
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def render(self, messages: Sequence[dict[str, Any]], continue_final: bool = False) -> Rendered:
        """Render, repair, tokenize and check one chat (see the module docstring).

        Raises:
            PrefixFidelityError: the template or tokenizer breaks the prefix and no
                documented repair applies.
        """
        key = json.dumps([list(messages), continue_final], sort_keys=True, ensure_ascii=False)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        text, repairs = render_text(self.tokenizer, messages, continue_final, self.kwargs)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        problem = None
        prefix = _message_text(messages[-1]) if continue_final else None
        if prefix is not None:
            found = [s for s in self._special[1] if s in prefix]
            if found:
                problem = (f"the unfinished assistant message contains the special token text {found[0]!r}; it would be "
                           "tokenized as a special token, not as the text the trace holds")
        if problem is None:
            check_tokens(self.tokenizer, text, ids, prefix, self._special)
        out = Rendered(text, ids, repairs, problem)
        with self._lock:
            for r in repairs:
                self.repairs[r] += 1
            self._cache[key] = out
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return out

    def ids(self, messages: Sequence[dict[str, Any]], continue_final: bool = False) -> list[int]:
        return self.render(messages, continue_final).ids

    def text_prompt(self, rendered: Rendered) -> str:
        """The string to send as a text prompt so that a server that tokenizes it the usual
        way (``add_special_tokens=True``, special-token spellings parsed as special tokens:
        vLLM, SGLang, llama.cpp, TGI) gets exactly ``rendered.ids`` (module docstring,
        "Text prompts"). Cached per rendered text.

        Raises:
            PrefixFidelityError: no string tokenizes to ``rendered.ids`` with the tokenizer's
                special tokens added (e.g. it adds an EOS at the end).
        """
        with self._lock:
            hit = self._texts.get(rendered.text)
        if hit is not None:
            return hit
        text = text_prompt(self.tokenizer, rendered.text, rendered.ids)
        with self._lock:
            self._texts[rendered.text] = text
            if len(self._texts) > self._size:
                self._texts.popitem(last=False)
        return text

    def closed_text(self, messages: Sequence[dict[str, Any]]) -> str:
        """The chat rendered with its last message closed and a new assistant turn opened:
        what a server that ignores ``continue_final_message`` renders (the probe compares)."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True,
                                                  **self.kwargs)

    def wraps_user_message_as(self) -> str:
        """What the template puts around one user message (an injected system prompt included)."""
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], tokenize=False,
                                                  add_generation_prompt=True, **self.kwargs)
        return text.replace(_PROBE, "{user}")

    def describe(self) -> dict[str, Any]:
        """Template notes for the run manifest."""
        info: dict[str, Any] = {"template_wraps_user_message_as": self.wraps_user_message_as(),
                                "prefix_repairs": dict(self.repairs)}
        if self.kwargs:
            info["chat_template_kwargs"] = self.kwargs
        return info


def load_tokenizer(name: str, local_only: bool = False) -> Any:
    """The tokenizer of a model name (short name, Hugging Face id or local folder).

    Raises:
        BackendError: it cannot be loaded; the message says what to set.
    """
    from transformers import AutoTokenizer

    from intgen.models import materialize

    try:
        path = materialize(name)
        return AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    except Exception as e:
        raise BackendError(f"cannot load the tokenizer of {name!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "set backend.tokenizer to a local model folder or a Hugging Face id") from e
