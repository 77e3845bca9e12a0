"""What an OpenAI-compatible server supports, asked with a few tiny requests
(docs/servers.md): ``intgen check-server`` prints it, and the OpenAI-compatible backend
runs the same probe when it starts and picks its modes from it (``manifest.json``,
``backends.*.server_probe`` and ``modes``).

Features probed, each answered ``ok`` True (supported), False (not) or None (unknown), with
a one-line ``detail``:

- ``chat``: ``/v1/chat/completions`` answers a one-message chat.
- ``completions_token_ids``: ``/v1/completions`` takes a list of token ids as the prompt
  (vLLM, SGLang, llama.cpp's C++ server); the model then sees exactly intgen's rendering.
- ``completions_text``: ``/v1/completions`` takes the rendered chat as a string and
  counts the same prompt tokens as the local rendering (the server's usage, or its
  tokenizer endpoint, agrees with :meth:`ChatRenderer.text_prompt`).
- ``continue_final_message``: a chat whose last assistant message is left open is
  continued, not closed (vLLM's ``continue_final_message`` extension). Judged by the
  server's ``/tokenize`` rendering when it has one (same ids as the local rendering, or
  ids that decode to text ending with the open message), else by the prompt token count
  the server reports (that of the open rendering, or that of a closed turn plus a new
  generation prompt), else unknown.
- ``n``: a request for two choices gets two (llama.cpp's Python server answers one).
  intgen always sends ``n=1``; this is for the report.
- ``seeds``: a request with a ``seed`` is accepted, and the same seed twice gives the
  same text (temperature 1).
- ``tokenize``: a tokenizer endpoint: ``POST /tokenize`` of vLLM, llama.cpp's server or TGI
  (each server's body in turn), SGLang's ``POST /v1/tokenize``, or llama-cpp-python's
  ``POST /extras/tokenize``.

Probe requests carry the header ``X-Intgen-Probe: 1`` (the test server keeps them out of
its request log) and go through the backend's retry rule.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from intgen.backends.openai_compat import OpenAIBackend

#: the features, in report order
FEATURES = ("chat", "completions_token_ids", "completions_text", "continue_final_message", "n", "seeds", "tokenize")
PROBE_HEADER = "X-Intgen-Probe"
_ASK = ({"role": "user", "content": "Count to three."},)
_OPEN = _ASK + ({"role": "assistant", "content": "One, two,"},)
_TOKENIZE_TEXT = "Hello world, 1 + 2 = 3."


@dataclass
class Feature:
    """One probed feature: ``ok`` True / False / None (unknown) and what was seen."""

    ok: bool | None
    detail: str

    def __post_init__(self) -> None:
        self.detail = " ".join(str(self.detail).split())  # one line (servers' messages hold newlines)


@dataclass
class ServerProbe:
    """A server's answers to the probe (module docstring).

    Attributes:
        base_url: the API root probed (without credentials).
        model: the served model name probed.
        features: feature name (:data:`FEATURES`) -> :class:`Feature`.
        tokenize: the tokenizer endpoint's form: ``"vllm"`` (``prompt``, answers with a
            ``count``: vLLM, SGLang), ``"llama.cpp"`` (``content``), ``"tgi"`` (``inputs``,
            answers with a list of tokens), ``"llama-cpp-python"`` (``/extras/tokenize``),
            or None.
        tokenize_url: where it answered.
        chat_tokenize: whether the server's ``/tokenize`` also renders chats (vLLM's chat
            form), so each continuation prompt can be checked in ``server`` mode.
    """

    base_url: str
    model: str
    features: dict[str, Feature] = field(default_factory=dict)
    tokenize: str | None = None
    tokenize_url: str | None = None
    chat_tokenize: bool = False

    def ok(self, name: str) -> bool | None:
        f = self.features.get(name)
        return None if f is None else f.ok

    def as_dict(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "tokenize": self.tokenize,
                "chat_tokenize": self.chat_tokenize, "features": {k: asdict(v) for k, v in self.features.items()}}

    def format(self) -> str:
        """A human-readable report, one line per feature."""
        mark = {True: "yes", False: "no", None: "?"}
        width = max(len(k) for k in FEATURES)
        lines = [f"server {self.base_url}, model {self.model}"]
        for name in FEATURES:
            f = self.features.get(name)
            if f is not None:
                lines.append(f"  {name:<{width}}  {mark[f.ok]:<3}  {f.detail}")
        return "\n".join(lines)


def _why(e: BaseException) -> str:
    from intgen.backends.openai_compat import error_text

    return error_text(e)


#: probe requests are retried once at most (a server that refuses n=2 with a 500 is not waited for)
_RETRIES = 1


async def _chat(b: "OpenAIBackend", **kwargs: Any):
    return await b.create("chat", {"model": b.served, "extra_headers": {PROBE_HEADER: "1"}, **kwargs}, _RETRIES)


async def _completion(b: "OpenAIBackend", prompt: Any, **kwargs: Any):
    return await b.create("completions", {"model": b.served, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                          "extra_headers": {PROBE_HEADER: "1"}, **kwargs}, _RETRIES)


async def _post(b: "OpenAIBackend", url: str, body: dict[str, Any]) -> Any:
    return await b.client.post(url if "://" in url else b.root_url + url, cast_to=object, body=body,
                               options={"headers": {PROBE_HEADER: "1"}})


async def probe_tokenize(b: "OpenAIBackend") -> tuple[str | None, str | None, Feature]:
    """Find the server's tokenizer endpoint; returns its form, its URL and the feature."""
    import openai

    text = _TOKENIZE_TEXT
    tries = (  # one body per server: some refuse fields they do not know
        (b.root_url + "/tokenize", None, {"model": b.served, "prompt": text, "add_special_tokens": True}),  # vLLM
        (b.root_url + "/tokenize", "llama.cpp", {"content": text, "add_special": True, "parse_special": True}),
        (b.root_url + "/tokenize", "tgi", {"inputs": text}),
        (b.base_url + "/tokenize", None, {"model": b.served, "prompt": text, "add_special_tokens": True}),  # SGLang
        (b.root_url + "/extras/tokenize", "llama-cpp-python", {"model": b.served, "input": text}))
    tried, missing = [], set()
    for url, form, payload in tries:
        path = url[len(b.root_url):]
        if url in missing:
            continue
        try:
            got = await _post(b, url, payload)
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            if getattr(e, "status_code", None) in (404, 405):
                missing.add(url)
            tried.append(f"{path}: {_why(e)}")
            continue
        if isinstance(got, list) and got and isinstance(got[0], dict) and "id" in got[0]:  # TGI: [{id, text, ...}]
            form, tokens = "tgi", got
        else:
            tokens = got.get("tokens") if isinstance(got, dict) else None
        if not isinstance(tokens, list) or not tokens:
            tried.append(f"{path}: no token list in the answer")
            continue
        if form is None:
            form = "vllm"
        tokens = [t if isinstance(t, int) else t.get("id") for t in tokens]
        detail = f"POST {path} ({form} form)"
        if b.renderer is not None:
            local = list(b.renderer.tokenizer(_TOKENIZE_TEXT, add_special_tokens=True)["input_ids"])
            detail += "; same ids as the local tokenizer" if tokens == local else (
                f"; ids differ from the local tokenizer's ({tokens[:6]} vs {local[:6]}): another tokenizer?")
        return form, url, Feature(True, detail)
    return None, None, Feature(False, "; ".join(tried) or "none")


async def probe_continue_final(b: "OpenAIBackend", form: str | None, out: "ServerProbe") -> Feature:
    """Whether an open assistant turn is continued (module docstring); sets
    ``out.chat_tokenize`` when vLLM's ``/tokenize`` rendered the chat."""
    import openai

    extra = {"continue_final_message": True, "add_generation_prompt": False}
    if b.spec.chat_template_kwargs:
        extra["chat_template_kwargs"] = b.spec.chat_template_kwargs
    try:
        resp = await _chat(b, messages=list(_OPEN), max_tokens=1, temperature=0.0, extra_body=extra)
    except Exception as e:  # noqa: BLE001  (any refusal is the answer)
        return Feature(False, f"refused: {_why(e)}")
    prefix = _OPEN[-1]["content"]
    local = b.renderer.render(_OPEN, True) if b.renderer is not None else None
    if form == "vllm":
        try:
            ids = list((await _post(b, "/tokenize", b.chat_body(_OPEN, True)))["tokens"])
            out.chat_tokenize = True
            if local is not None:
                if ids == local.ids:
                    return Feature(True, "the server's /tokenize rendering equals the local one")
                closed = b.renderer.tokenizer(b.renderer.closed_text(_OPEN), add_special_tokens=False)["input_ids"]
                if ids == list(closed):
                    return Feature(False, "ignored: the server closes the assistant turn (its /tokenize rendering)")
                return Feature(False, "the server renders the open turn differently from the local chat template "
                                      "(another --chat-template?)")
            text = (await _post(b, "/detokenize", {"model": b.served, "tokens": ids}))["prompt"]
            return (Feature(True, "the server's /tokenize rendering ends with the open message") if text.endswith(prefix)
                    else Feature(False, "ignored: the server's /tokenize rendering does not end with the open message"))
        except (openai.APIStatusError, openai.APIConnectionError, KeyError, TypeError):
            pass
    usage = getattr(resp, "usage", None)
    if local is None or usage is None or not usage.prompt_tokens:
        return Feature(None, "accepted; not verifiable here (no tokenizer endpoint, no local tokenizer or no usage)")
    closed = len(b.renderer.tokenizer(b.renderer.closed_text(_OPEN), add_special_tokens=False)["input_ids"])
    if usage.prompt_tokens == len(local.ids):
        return Feature(True, f"the server counts {usage.prompt_tokens} prompt tokens, as the local open rendering")
    if usage.prompt_tokens == closed:
        return Feature(False, f"ignored: the server counts {usage.prompt_tokens} prompt tokens, as a closed turn "
                              "followed by a new assistant turn")
    return Feature(None, f"accepted; the server counts {usage.prompt_tokens} prompt tokens, the local open rendering "
                         f"{len(local.ids)}, a closed turn {closed}: not conclusive")


async def probe_completions(b: "OpenAIBackend") -> tuple[Feature, Feature]:
    """``/v1/completions`` with token ids and with text (module docstring)."""
    if b.renderer is None:
        none = Feature(None, "not probed: no local tokenizer to render a prompt (backend.tokenizer)")
        return none, none
    rendered = b.renderer.render(_ASK, False)

    async def ids() -> Feature:
        try:
            resp = await _completion(b, rendered.ids)
        except Exception as e:  # noqa: BLE001
            return Feature(False, f"refused: {_why(e)}")
        n = getattr(resp.usage, "prompt_tokens", None) if resp.usage else None
        if not resp.choices:
            return Feature(False, "answered without a choice")
        return Feature(True, "accepted" + (f" ({n} prompt tokens, as sent)" if n == len(rendered.ids) else
                                           f" (the server counts {n} prompt tokens for {len(rendered.ids)} ids)"
                                           if n else ""))

    async def text() -> Feature:
        try:
            prompt = b.renderer.text_prompt(rendered)
        except Exception as e:  # noqa: BLE001  (the tokenizer adds tokens no text can undo)
            return Feature(False, str(e))
        try:
            resp = await _completion(b, prompt)
        except Exception as e:  # noqa: BLE001
            return Feature(False, f"refused: {_why(e)}")
        n = getattr(resp.usage, "prompt_tokens", None) if resp.usage else None
        if not resp.choices:
            return Feature(False, "answered without a choice")
        if n and n != len(rendered.ids):
            return Feature(False, f"accepted, but the server counts {n} prompt tokens where the local rendering has "
                                  f"{len(rendered.ids)}: it tokenizes differently")
        return Feature(True, "accepted" + (f" ({n} prompt tokens, as the local rendering)" if n else ""))

    return tuple(await asyncio.gather(ids(), text()))  # type: ignore[return-value]


async def probe_n(b: "OpenAIBackend") -> Feature:
    try:
        resp = await _chat(b, messages=list(_ASK), max_tokens=1, temperature=1.0, n=2)
    except Exception as e:  # noqa: BLE001
        return Feature(False, f"refused: {_why(e)}")
    k = len(resp.choices)
    return Feature(k == 2, f"{k} choice{'s' if k != 1 else ''} for n=2" + ("" if k == 2 else " (n ignored)"))


async def probe_seeds(b: "OpenAIBackend") -> Feature:
    """Same seed twice, one after the other (a server reproduces a seed only for the same
    batch composition); temperature 1."""
    texts = []
    for _ in range(2):
        try:
            resp = await _chat(b, messages=[{"role": "user", "content": "Write one random word."}], max_tokens=8,
                               temperature=1.0, top_p=1.0, seed=1234)
        except Exception as e:  # noqa: BLE001
            return Feature(False, f"a request with a seed was refused: {_why(e)}")
        texts.append(resp.choices[0].message.content if resp.choices else None)
    if texts[0] == texts[1]:
        return Feature(True, "accepted; the same seed gave the same text")
    return Feature(False, "accepted, but the same seed gave different texts: samples are not reproducible")


async def probe_server(b: "OpenAIBackend") -> ServerProbe:
    """Probe the server behind a started backend (module docstring). Never raises for an
    unsupported feature; the seeds go last (a server that breaks on a seeded request then
    has answered everything else first)."""
    from intgen.backends.openai_compat import _public_url

    out = ServerProbe(_public_url(b.base_url), b.served)

    async def chat() -> Feature:
        try:
            resp = await _chat(b, messages=list(_ASK), max_tokens=1, temperature=0.0)
        except Exception as e:  # noqa: BLE001
            return Feature(False, f"refused: {_why(e)}")
        return Feature(bool(resp.choices), "answered" if resp.choices else "answered without a choice")

    form, out.tokenize_url, tok = await probe_tokenize(b)
    out.tokenize = form
    results = await asyncio.gather(chat(), probe_completions(b), probe_continue_final(b, form, out), probe_n(b))
    (ids, text) = results[1]
    out.features.update(chat=results[0], completions_token_ids=ids, completions_text=text,
                        continue_final_message=results[2], n=results[3])
    out.features["seeds"] = await probe_seeds(b)
    out.features["tokenize"] = tok
    return out
