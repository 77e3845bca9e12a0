"""The OpenAI-compatible backend: any server that speaks the OpenAI API (vLLM serve,
SGLang, llama.cpp's servers, TGI, hosted APIs) (docs/job-spec.md, "backend";
docs/servers.md).

- **Probe and modes.** At start the backend lists ``/v1/models`` and probes the server
  (:mod:`intgen.backends.server_probe`: chat, completions with token ids or text,
  continue-final-message, ``n``, seeds, a tokenizer endpoint), then picks its modes from
  the answers and the spec (``backend.continuation``, ``backend.prompt_format``): what it
  chose and why go to the manifest (``modes``, ``server_probe``). A mode the spec asks for
  that the probe shows the server refuses stops the run before any generation request,
  naming the setting to change.
- **Retries** (tenacity; the ``openai`` client itself does not retry): a request is sent
  again, up to ``backend.max_retries`` times with exponential backoff (0.5 s doubling to
  8 s, with jitter; a ``Retry-After`` up to 60 s is honoured), only after a timeout, a
  dropped connection, a 408, a 429, or a 5xx whose body does not say *validation*.
  Nothing else is retried (:func:`classify`):

  - a request that is too big for the model (the body speaks of the context, a prompt
    too long, too many tokens) or refused for its content: that request becomes a
    completion with ``finish_reason="error"`` and ``permanent=True``, recorded as a reject
    (``request_rejected``), and the run goes on;
  - 401/403 (the key), 404 (the model or endpoint), and every other 4xx or 5xx that says
    validation (a field the server does not take, a prompt of token ids where it wants a
    string): the same request would be refused every time, so the first one stops the run
    with the server's message (:class:`BackendError`; the manifest says ``stopped``).
- **Outages.** A request that still fails after those retries with a 5xx, 408, 429, a
  timeout or a dropped connection is most likely a server that is down, not a bad request:
  it waits while one shared probe asks ``/v1/models`` with exponential backoff (tenacity;
  0.5 s doubling to 15 s) for up to ``backend.outage_s`` seconds (default 300), and is sent
  again when the server answers (at most 3 times). Past ``outage_s`` the server is taken as
  down: every request left fails at once without being sent, the run ends *incomplete*
  (``manifest.json``), and rerunning the same command sends exactly those requests again.
  ``manifest.json`` counts HTTP requests and answers by status (``http_requests``,
  ``http_503``, ...), retries, outages and probes.
- **Concurrency.** At most ``backend.concurrency`` requests in flight (a semaphore).
- **Per-sample seeds.** One :class:`~intgen.backends.base.Request` is one sample: it goes
  out with ``n=1`` and its own ``seed``. Samples of one prompt are never grouped into one
  ``n>1`` request, because servers derive the seeds of the n choices in their own way (or
  ignore ``n``, like llama.cpp's Python server). A server that answers with fewer choices
  than asked (none for ``n=1``) is asked again for the missing sample, with the same seed,
  up to ``max_retries`` times (fan-out). A server that refuses seeded requests (the probe)
  gets none, and the manifest says so (``modes.seeds``).
- **Context.** ``max_model_len`` is ``backend.max_model_len``, else the ``max_model_len``
  the server lists for the model in ``/v1/models`` (vLLM does). Prompt tokens are counted
  with the local tokenizer when there is one, else with the server's ``/tokenize``, else
  estimated; the runner clamps ``max_tokens`` to the context left.
- **Continuation modes** (``backend.continuation``):

  - ``server``: chats go to ``/v1/chat/completions``; an unfinished assistant turn is sent
    with vLLM's ``continue_final_message: true, add_generation_prompt: false`` (in the
    request body). Before continuation requests go out, each distinct prompt is rendered
    by the server's ``/tokenize`` and checked: against the local rendering (same ids, no
    repair needed) when the model's tokenizer is available here, else by decoding the
    server's ids (``/detokenize``) and checking that they end with the exact prefix. A
    server without ``/tokenize`` is used unchecked, and the manifest says so.
  - ``completions``: intgen renders every chat itself with the model's chat template
    (:mod:`intgen.backends.templates`: the prefix-fidelity check and its documented
    repairs) and sends it as the prompt of ``/v1/completions``: as token ids
    (``prompt_format: token_ids``), so the model sees exactly the tokens intgen checked, as
    with the in-process vLLM engine; or, for a server that takes only strings
    (``prompt_format: text``), as the text whose tokenization is those same ids
    (:meth:`~intgen.backends.templates.ChatRenderer.text_prompt`: the BOS the server adds is
    not doubled), checked locally and, where the server has a tokenizer endpoint, against
    the server's tokenization of each distinct prompt. ``prompt_format: auto`` takes token
    ids when the server accepts them, else text.
  - ``none``: a chat API that cannot continue a turn (most hosted APIs):
    ``can_continue`` is False, so it serves rollouts and proposals only and the check
    stage refuses it.
  - ``auto``: ``server`` when the probe saw the server continue an open turn and it has
    vLLM's ``/tokenize`` (each prompt can be checked); else ``completions`` when a local
    tokenizer is available and ``/v1/completions`` takes token ids or text; else
    ``server`` unchecked when the server accepted the extension without showing whether
    it honours it; else ``none``.

- **Secrets.** The API key is read from the environment variable named by
  ``backend.api_key_env`` and handed to the client only; it is never logged, described
  or written. A server without authentication gets a placeholder key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections import Counter
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from intgen.backends.base import Backend, BackendError, Completion, Request
from intgen.backends.templates import ChatRenderer, PrefixFidelityError, load_tokenizer
from intgen.config import BackendSpec

log = logging.getLogger(__name__)


class _Fatal(Exception):
    """An answer that means no request can succeed (bad key, unknown model or endpoint)."""


class _RequestProblem(Exception):
    """A request that cannot be sent faithfully (its own text, not the template, is the problem)."""


def _public_url(url: str) -> str:
    """The URL without credentials (``user:key@``) or query, for the manifest."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _short(msg: Any, limit: int = 500) -> str:
    s = str(msg)
    return s if len(s) <= limit else s[:limit] + "..."


#: a 5xx whose body says this is a refusal of the request, not a server in trouble
_VALIDATION = re.compile(r"validation|Input should be|Field required|unprocessable", re.I)
#: a refusal of this one request (its size or its content), not of the way intgen sends requests
_THIS_REQUEST = re.compile(r"context|too long|too large|too many tokens|max_model_len|n_ctx|must be <=|"
                           r"content.?(policy|filter|management)|safety|flagged", re.I)


def error_text(e: BaseException) -> str:
    """An API error as ``"STATUS: the server's message"`` (or the exception's name and text)."""
    import openai

    if isinstance(e, openai.APIStatusError):
        body = e.body
        msg = body.get("message") if isinstance(body, dict) else body
        if not isinstance(msg, str) or not msg:
            msg = json.dumps(body, default=str) if body is not None else e.message
        return f"{e.status_code}: {_short(msg)}"
    return f"{type(e).__name__}: {_short(e)}"


def classify(e: BaseException) -> str:
    """What an error from the server means (module docstring, "Retries").

    Returns:
        ``"retry"`` (a timeout, a dropped connection, 408, 429, a 5xx that does not say
        validation), ``"request"`` (this request is too big or refused for its content),
        ``"auth"`` (401, 403), ``"missing"`` (404), ``"stop"`` (any other 4xx, or a 5xx
        that says validation: no retry can fix it), ``"other"`` (not an API error).
    """
    import openai

    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError)):
        return "retry"
    if not isinstance(e, openai.APIStatusError):
        return "other"
    status = e.status_code
    text = f"{e.message} {json.dumps(e.body, default=str) if e.body is not None else ''}"
    if status in (401, 403):
        return "auth"
    if status in (408, 429):
        return "retry"
    if status >= 500 and not _VALIDATION.search(text):
        return "retry"
    if status == 404:
        return "missing"
    return "request" if _THIS_REQUEST.search(text) else "stop"


def _retry_after(e: BaseException) -> float | None:
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenAIBackend(Backend):
    """A model behind an OpenAI-compatible server (module docstring).

    Args:
        model: the model name in the spec; it names the tokenizer for local rendering
            (unless ``backend.tokenizer`` does) and the served model (unless
            ``backend.served_model_name`` does).
        spec: the backend spec.

    Raises:
        BackendError: ``backend.base_url`` is missing.
    """

    def __init__(self, model: str, spec: BackendSpec):
        if not spec.base_url:
            raise BackendError("backend.kind=openai needs backend.base_url, e.g. backend.base_url=http://127.0.0.1:8000/v1")
        self.model = model
        self.spec = spec
        self.served = spec.served_model_name or model
        self.base_url = spec.base_url.rstrip("/")
        self.root_url = re.sub(r"/v1$", "", self.base_url)
        self.can_continue = spec.continuation != "none"
        #: the modes in use (module docstring): set from the spec, then from the probe at start
        self.continuation = spec.continuation
        self.prompt_format = spec.prompt_format
        self.send_seed = True
        self.seeds_note = "sent"
        self.probe: Any = None
        self.max_model_len = spec.max_model_len
        self.client = None
        self.renderer: ChatRenderer | None = None
        self.counts: Counter[str] = Counter()
        self._sync_client = None
        self._sem: asyncio.Semaphore | None = None
        self._aborted: set[str] = set()
        self._tasks: dict[str, asyncio.Task] = {}
        self._checks: dict[str, asyncio.Future] = {}
        self._probe: asyncio.Future | None = None
        self._down_since: float | None = None
        self._has_tokenize: bool | None = None
        self._token_counts: dict[str, int] = {}
        self._text_checks: dict[str, asyncio.Future] = {}
        self.fidelity = {"server": "not checked yet", "completions": "rendered and checked locally",
                         "none": "no continuations", "auto": "not started"}[spec.continuation]

    # -- start / close -------------------------------------------------------------------
    def _api_key(self) -> str:
        return os.environ.get(self.spec.api_key_env) or "EMPTY"

    async def start(self) -> None:
        if self.client is not None:
            return
        import openai

        async def on_request(request) -> None:
            self.counts["http_requests"] += 1

        async def on_response(response) -> None:
            self.counts[f"http_{response.status_code}"] += 1

        http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [on_request], "response": [on_response]})
        # max_retries=0: retries follow intgen's rule (create()), not the client's
        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key(), timeout=self.spec.timeout_s,
                                         max_retries=0, http_client=http)
        self._sem = asyncio.Semaphore(self.spec.concurrency)
        try:
            await self._connect()
        except BaseException:  # a failed start leaves nothing open, and a later start() tries again
            await self.client.close()
            self.client = None
            raise

    async def _connect(self) -> None:
        """List the models (context length, served name), load the local tokenizer, probe
        the server and choose the modes (module docstring)."""
        import openai

        where = _public_url(self.base_url)
        try:
            models = await self._retrying(lambda: self.client.with_options(
                timeout=min(self.spec.timeout_s, 60.0)).models.list())
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            source = (f"read from ${self.spec.api_key_env}" if os.environ.get(self.spec.api_key_env)
                      else f"${self.spec.api_key_env} is not set; backend.api_key_env names the variable")
            raise BackendError(f"the server at {where} refused the API key ({source}): {_short(e.message, 200)}") from None
        except openai.APIConnectionError as e:
            raise BackendError(f"cannot reach the server at {where} ({type(e).__name__}: {e}); is it running, and is "
                               "backend.base_url right (it ends in /v1)?") from None
        except openai.APIStatusError as e:
            log.warning("the server at %s does not list its models (%s); using %r", where, e.status_code, self.served)
            models = None
        if models is not None:
            served = {m.id: m for m in models.data}
            if served and self.served not in served:
                raise BackendError(f"the server at {where} does not serve {self.served!r}; it serves "
                                   f"{', '.join(sorted(served)[:20])}. Set backend.served_model_name (vLLM: the "
                                   "--served-model-name the server was started with).")
            entry = served.get(self.served)
            server_len = (entry.model_extra or {}).get("max_model_len") if entry is not None else None
            if self.max_model_len is None and isinstance(server_len, int):
                self.max_model_len = server_len
        if self.spec.continuation == "completions":
            # required: intgen renders every prompt itself
            self.renderer = ChatRenderer(load_tokenizer(self.spec.tokenizer or self.model), self.spec.chat_template_kwargs)
        else:
            try:  # optional: exact token counts and a local reference rendering for the fidelity check
                tok = load_tokenizer(self.spec.tokenizer or self.model, local_only=self.spec.tokenizer is None)
                self.renderer = ChatRenderer(tok, self.spec.chat_template_kwargs)
            except BackendError:
                if self.spec.tokenizer is not None:
                    raise
                self.renderer = None
        from intgen.backends.server_probe import probe_server

        self.probe = await probe_server(self)
        self._choose_modes()

    def _choose_modes(self) -> None:
        """Set :attr:`continuation`, :attr:`prompt_format` and the seeds from the spec and
        the probe (module docstring).

        Raises:
            BackendError: the spec asks for a mode the server refuses, or no mode works.
        """
        p, s, where = self.probe, self.spec, _public_url(self.base_url)
        feats = p.features
        ids_ok, text_ok = p.ok("completions_token_ids"), p.ok("completions_text")
        if s.prompt_format == "auto":
            fmt = "token_ids" if ids_ok else "text" if text_ok else None
        else:
            fmt = s.prompt_format
        cf = feats["continue_final_message"]
        if s.continuation == "auto":
            if cf.ok and p.chat_tokenize and p.ok("chat"):
                mode = "server"
            elif self.renderer is not None and fmt is not None:
                mode = "completions"
            elif cf.ok is not False and p.ok("chat"):
                mode = "server"
            else:
                mode = "none"
        else:
            mode = s.continuation
        if mode == "server" and p.ok("chat") is False:
            raise BackendError(f"the server at {where} refuses chat requests ({feats['chat'].detail}); use "
                               "backend.continuation=completions or auto")
        if mode == "server" and cf.ok is False and cf.detail.startswith(("ignored", "refused")):
            raise BackendError(f"the server at {where} does not continue an unfinished assistant turn "
                               f"(continue_final_message: {cf.detail}); use backend.continuation=auto, which renders "
                               "the chat in intgen and sends it to /v1/completions")
        if mode == "completions":
            named = {"token_ids": ids_ok, "text": text_ok}
            if fmt is None:
                raise BackendError(
                    f"the server at {where} takes neither token ids nor text as a /v1/completions prompt (token ids: "
                    f"{feats['completions_token_ids'].detail}; text: {feats['completions_text'].detail})")
            if named[fmt] is False:
                other = "text" if fmt == "token_ids" else "token_ids"
                raise BackendError(
                    f"the server at {where} refuses /v1/completions prompts as {fmt.replace('_', ' ')} "
                    f"({feats['completions_' + fmt].detail}); use backend.prompt_format={other} or auto")
        self.continuation, self.prompt_format = mode, fmt
        self.can_continue = mode != "none"
        seeds = feats["seeds"]
        if seeds.ok is False and seeds.detail.startswith("a request with a seed was refused"):
            self.send_seed, self.seeds_note = False, f"not sent: {seeds.detail}"
            log.warning("the server at %s refuses seeded requests; samples go without a seed and are not "
                        "reproducible (%s)", where, seeds.detail)
        elif seeds.ok is False:
            self.seeds_note = f"sent; {seeds.detail}"
        if mode == "completions":
            self.fidelity = ("rendered and checked locally; sent as token ids" if fmt == "token_ids" else
                             "rendered and checked locally; sent as text" + (
                                 f", each prompt's tokens checked by the server's tokenizer ({p.tokenize})"
                                 if p.tokenize else ", tokenized locally to the same ids (no tokenizer endpoint)"))
        elif mode == "none":
            self.fidelity = "no continuations"
        elif p.chat_tokenize:
            self.fidelity = "not checked yet: each continuation prompt is checked with the server's /tokenize"
        elif not p.chat_tokenize:
            self._has_tokenize = False
            self.fidelity = "unchecked: the server has no /tokenize endpoint"

    async def close(self) -> None:
        for t in list(self._tasks.values()):
            t.cancel()
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None

    # -- token counts ----------------------------------------------------------------------
    def _key(self, messages: Sequence[dict[str, str]], continue_final: bool) -> str:
        return json.dumps([list(messages), continue_final], sort_keys=True, ensure_ascii=False)

    def chat_body(self, messages: Sequence[dict[str, str]], continue_final: bool) -> dict[str, Any]:
        """The body of vLLM's ``/tokenize`` in chat form for these messages."""
        return self._chat_body(messages, continue_final)

    def _chat_body(self, messages: Sequence[dict[str, str]], continue_final: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.served, "messages": list(messages),
                                "add_generation_prompt": not continue_final, "continue_final_message": continue_final}
        if self.spec.chat_template_kwargs:
            body["chat_template_kwargs"] = self.spec.chat_template_kwargs
        return body

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]], continue_final: bool = False) -> int:
        """Exact with a local tokenizer; else the server's ``/tokenize`` (vLLM; cached); else
        the base class's estimate."""
        if self.renderer is not None:
            return len(self.renderer.ids(messages, continue_final))
        if self._has_tokenize is not False and self.continuation != "none":
            key = self._key(messages, continue_final)
            if key in self._token_counts:
                return self._token_counts[key]
            try:
                n = int(self._sync().post(self.root_url + "/tokenize", cast_to=object,
                                          body=self._chat_body(messages, continue_final))["count"])
                self._token_counts[key] = n
                self._has_tokenize = True
                return n
            except Exception as e:  # no /tokenize here: estimate from now on
                log.warning("token counts are estimates: the server has no usable /tokenize (%s)", type(e).__name__)
                self._has_tokenize = False
        return super().count_prompt_tokens(messages, continue_final)

    def _sync(self):
        if self._sync_client is None:
            import openai

            self._sync_client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key(),
                                              timeout=min(self.spec.timeout_s, 60.0), max_retries=self.spec.max_retries)
        return self._sync_client

    # -- the server-side prefix-fidelity check -----------------------------------------------------
    async def _prefix_problem(self, messages: tuple[dict, ...]) -> str | None:
        """Check one continuation prompt as the server renders it (module docstring), once
        per distinct prompt (requests that share it wait for the one check); returns the
        request's own problem (e.g. a special token in its text), or None.

        Raises:
            PrefixFidelityError: the server would not put the exact prefix in front of the model.
        """
        if self._has_tokenize is False:
            return None
        key = self._key(messages, True)
        check = self._checks.get(key)
        if check is None:
            check = self._checks[key] = asyncio.ensure_future(self._check_prefix(messages))
        return await asyncio.shield(check)

    async def _check_prefix(self, messages: tuple[dict, ...]) -> str | None:
        import openai

        local = self.renderer.render(messages, True) if self.renderer is not None else None
        if local is not None and local.problem is not None:
            return local.problem
        async with self._sem:
            try:
                got = await self._retrying(lambda: self.client.post(self.root_url + "/tokenize", cast_to=object,
                                                                    body=self._chat_body(messages, True)))
            except (openai.NotFoundError, openai.APIStatusError) as e:
                if getattr(e, "status_code", None) in (404, 405, 501):
                    if self._has_tokenize is None:
                        log.warning("the server at %s has no /tokenize endpoint: continuation prompts are not checked "
                                    "for prefix fidelity (see docs/job-spec.md, backend.continuation)",
                                    _public_url(self.base_url))
                    self._has_tokenize = False
                    self.fidelity = "unchecked: the server has no /tokenize endpoint"
                    return None
                raise PrefixFidelityError(f"the server cannot render this continuation ({_short(e.message, 300)})") from None
            ids = list(got["tokens"])
            if local is not None:
                if local.repairs:
                    raise PrefixFidelityError(
                        f"the model's chat template needs a repair ({', '.join(local.repairs)}) that the server cannot "
                        "apply to continue_final_message; use backend.continuation=completions, which renders the "
                        "prompt in intgen with the repair")
                if ids != local.ids:
                    i = next((k for k, (a, b) in enumerate(zip(ids, local.ids)) if a != b), min(len(ids), len(local.ids)))
                    raise PrefixFidelityError(
                        f"the server renders the continuation differently from the model's own chat template (first "
                        f"difference at token {i} of {len(ids)} vs {len(local.ids)}: server {ids[i:i + 5]}, local "
                        f"{local.ids[i:i + 5]}); was it started with another --chat-template? Use "
                        "backend.continuation=completions or align the templates")
            else:
                text = (await self.client.post(self.root_url + "/detokenize", cast_to=object,
                                               body={"model": self.served, "tokens": ids}))["prompt"]
                content = messages[-1]["content"]
                if not text.endswith(content):
                    raise PrefixFidelityError(
                        f"the server's rendering of the continuation does not end with the unfinished assistant "
                        f"message (it ends with {text[-60:]!r}, the message with {content[-60:]!r}); use "
                        "backend.continuation=completions, which renders and repairs the prompt in intgen")
        self._has_tokenize = True
        self.fidelity = ("server /tokenize ids equal to the local rendering" if self.renderer is not None
                         else "server /tokenize ids decode to text ending with the prefix")
        return None

    # -- generation ----------------------------------------------------------------------------
    @property
    def max_in_flight(self) -> int:  # type: ignore[override]
        """``backend.concurrency``: what the server gets at once."""
        return self.spec.concurrency

    async def prepare(self) -> None:
        """Connect (cheap): the context length comes from ``/v1/models``."""
        await self.start()

    async def complete(self, request: Request) -> Completion:
        if self.client is None:
            await self.start()
        self._tasks[request.id] = asyncio.current_task()
        try:
            if self.continuation == "server" and request.continue_final:
                problem = await self._prefix_problem(request.messages)
                if problem is not None:
                    return Completion(request.id, "", "error", error=problem, permanent=True)
            if self.continuation == "completions" and self.prompt_format == "text":
                problem = await self._text_problem(request)
                if problem is not None:
                    return Completion(request.id, "", "error", error=problem, permanent=True)
            async with self._sem:
                if request.id in self._aborted:
                    return Completion(request.id, "", "abort")
                return await self._call(request)
        except asyncio.CancelledError:
            if request.id in self._aborted:
                return Completion(request.id, "", "abort")
            raise
        except PrefixFidelityError:
            raise
        except _Fatal as e:
            raise BackendError(str(e)) from None
        except Exception as e:  # one failed request never sinks the others
            return Completion(request.id, "", "error", error=f"{type(e).__name__}: {_short(e)}")
        finally:
            self._tasks.pop(request.id, None)

    # -- text prompts: the server's tokenization of each distinct prompt ------------------------
    async def _text_problem(self, request: Request) -> str | None:
        """Check, once per distinct prompt, that the text sent tokenizes on the server to the
        rendered ids (module docstring, ``completions``); returns the request's own problem.

        Raises:
            PrefixFidelityError: the server's tokenizer gives other ids.
        """
        rendered = self.renderer.render(request.messages, request.continue_final)
        if rendered.problem is not None:
            return rendered.problem
        text = self.renderer.text_prompt(rendered)  # the local check: raises when no text gives the ids
        form = self.probe.tokenize if self.probe is not None else None
        if form is None:
            return None
        check = self._text_checks.get(text)
        if check is None:
            check = self._text_checks[text] = asyncio.ensure_future(self._check_text(text, rendered.ids, form))
        await asyncio.shield(check)
        return None

    async def _check_text(self, text: str, ids: list[int], form: str) -> None:
        if form == "llama-cpp-python":
            body = {"model": self.served, "input": text}
        elif form == "llama.cpp":
            body = {"content": text, "add_special": True, "parse_special": True}
        elif form == "tgi":
            body = {"inputs": text}
        else:
            body = {"model": self.served, "prompt": text, "add_special_tokens": True}
        url = self.probe.tokenize_url
        async with self._sem:
            got = await self._retrying(lambda: self.client.post(url, cast_to=object, body=body))
        tokens = [t if isinstance(t, int) else t.get("id") for t in (got if isinstance(got, list) else got["tokens"])]
        if tokens != ids:
            i = next((k for k, (a, b) in enumerate(zip(tokens, ids)) if a != b), min(len(tokens), len(ids)))
            raise PrefixFidelityError(
                f"the server tokenizes the text prompt differently from the local rendering (first difference at token "
                f"{i} of {len(tokens)} vs {len(ids)}: server {tokens[i:i + 5]}, local {ids[i:i + 5]}); is it serving "
                "another tokenizer? Use a server that takes token ids (backend.prompt_format=token_ids)")
        self.counts["text_prompts_checked"] += 1

    def request_body(self, request: Request) -> tuple[str, dict[str, Any], list[int] | None]:
        """The endpoint (``"chat"`` or ``"completions"``), the keyword arguments of the
        client call, and the prompt's token ids when intgen rendered it.

        Raises:
            PrefixFidelityError: (completions mode) the template breaks the prefix, or (text
                prompts) no text tokenizes to the rendered ids.
        """
        s = request.sampling
        extra = dict(self.spec.extra_body)
        if s.top_k and s.top_k > 0:
            extra.setdefault("top_k", s.top_k)
        kwargs: dict[str, Any] = {"model": self.served, "n": 1, "max_tokens": s.max_tokens,
                                  "temperature": s.temperature, "top_p": s.top_p}
        if self.send_seed:
            kwargs["seed"] = request.seed
        if self.continuation == "completions":
            rendered = self.renderer.render(request.messages, request.continue_final)
            if rendered.problem is not None:
                raise _RequestProblem(rendered.problem)
            if extra:
                kwargs["extra_body"] = extra
            prompt = rendered.ids if self.prompt_format != "text" else self.renderer.text_prompt(rendered)
            return "completions", {**kwargs, "prompt": prompt}, rendered.ids
        if request.continue_final:
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if self.spec.chat_template_kwargs:
            extra["chat_template_kwargs"] = self.spec.chat_template_kwargs
        if extra:
            kwargs["extra_body"] = extra
        return "chat", {**kwargs, "messages": list(request.messages)}, None

    # -- the retry rule ----------------------------------------------------------------------------
    def _wait(self, retry_state) -> float:
        from tenacity import wait_exponential_jitter

        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        after = _retry_after(exc) if exc is not None else None
        if after is not None and 0 <= after <= 60:
            return after
        return wait_exponential_jitter(multiplier=0.5, max=8, jitter=0.5)(retry_state)

    async def _retrying(self, call, retries: int | None = None):
        """``await call()`` under the retry rule (module docstring): at most
        ``backend.max_retries`` more tries, and only for errors :func:`classify` calls
        ``"retry"``; any other error is raised at once (one HTTP attempt). ``retries``
        overrides ``max_retries`` (the probe's requests retry once).

        Raises:
            openai.APIError: the last error.
        """
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        def count(_state) -> None:
            self.counts["retries"] += 1

        result = None
        retries = self.spec.max_retries if retries is None else min(retries, self.spec.max_retries)
        async for attempt in AsyncRetrying(stop=stop_after_attempt(retries + 1), wait=self._wait,
                                           retry=retry_if_exception(lambda e: classify(e) == "retry"),
                                           before_sleep=count, reraise=True):
            with attempt:
                result = await call()
        return result

    async def create(self, endpoint: str, kwargs: dict[str, Any], retries: int | None = None):
        """One ``/v1/completions`` (``endpoint="completions"``) or ``/v1/chat/completions``
        call with the client's keyword arguments, under the retry rule (:meth:`_retrying`)."""
        create = self.client.completions.create if endpoint == "completions" else self.client.chat.completions.create
        return await self._retrying(lambda: create(**kwargs), retries)

    async def _call(self, request: Request) -> Completion:
        """One sample, through the outage policy (module docstring): a request that still
        fails after the client's retries because the server is unreachable or failing waits
        for the server (probed up to ``backend.outage_s`` seconds) and is sent again, at most
        3 times; once the server has been down longer than that, every request fails at once
        (retryable: the run ends incomplete and a rerun sends them again)."""
        if self._down_since is not None:
            self.counts["failed_server_down"] += 1
            return Completion(request.id, "", "error", error=(
                f"the server has not answered since {time.strftime('%H:%M:%S', time.localtime(self._down_since))} "
                f"(waited backend.outage_s={self.spec.outage_s:g} s); not sent"))
        for recovery in range(4):
            completion, transient = await self._call_once(request)
            if not transient or recovery == 3 or not await self._server_back():
                return completion
            self.counts["sent_again_after_outage"] += 1
        return completion

    async def _server_back(self) -> bool:
        """Wait until the server answers ``/v1/models`` again (one probe shared by every
        waiting request, exponential backoff with tenacity), for at most ``outage_s``."""
        if self._down_since is not None or self.spec.outage_s == 0:
            return False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_server())
        return await asyncio.shield(self._probe)

    async def _probe_server(self) -> bool:
        from tenacity import AsyncRetrying, RetryError, stop_after_delay, wait_exponential

        started = time.time()
        try:
            async for attempt in AsyncRetrying(stop=stop_after_delay(self.spec.outage_s),
                                               wait=wait_exponential(multiplier=0.5, max=15), reraise=False):
                with attempt:
                    self.counts["outage_probes"] += 1
                    await self.client.with_options(timeout=min(self.spec.timeout_s, 10.0), max_retries=0).models.list()
        except RetryError:
            self._down_since = started
            log.warning("the server at %s has not answered for %.0f s (backend.outage_s); the requests left fail and "
                        "the run will end incomplete: rerun it once the server is back", _public_url(self.base_url),
                        time.time() - started)
            return False
        if time.time() - started > 1:
            self.counts["outages"] += 1
        return True

    async def _call_once(self, request: Request) -> tuple[Completion, bool]:
        """One try through the client (its own retries included); returns the completion and
        whether it failed in a way the server's health explains (5xx, 408/409/429, a timeout,
        a connection error)."""
        if request.continue_final and not self.can_continue:
            return Completion(request.id, "", "error", error="backend.continuation=none: this server cannot continue an "
                              "unfinished assistant turn", permanent=True), False
        try:
            endpoint, kwargs, prompt_ids = self.request_body(request)
        except _RequestProblem as e:
            return Completion(request.id, "", "error", error=str(e), permanent=True), False
        try:
            for _ in range(self.spec.max_retries + 1):
                resp = await self.create(endpoint, kwargs)
                if resp.choices:
                    break
                self.counts["missing_choices"] += 1  # fewer choices than asked: ask again, same seed
            else:
                self.counts["failed"] += 1
                return Completion(request.id, "", "error", len(prompt_ids or ()), error=(
                    f"the server returned no choice for this sample {self.spec.max_retries + 1} times")), False
        except Exception as e:
            kind = classify(e)
            if kind == "other":
                raise
            what = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
            if kind == "auth":
                raise _Fatal(f"the server refused the API key (read from ${self.spec.api_key_env}): {error_text(e)}")
            if kind == "missing":
                raise _Fatal(f"the server answered 404 for {what} with model {self.served!r}: {error_text(e)}")
            if kind == "stop":
                self.counts[f"refused_{e.status_code}"] += 1
                hint = ""
                if endpoint == "completions" and self.prompt_format == "token_ids":
                    hint = " If it refuses prompts of token ids, set backend.prompt_format=text (or auto)."
                raise _Fatal(f"the server at {_public_url(self.base_url)} refused a {what} request in a way no retry "
                             f"can fix ({error_text(e)}); the run stops here, nothing was retried.{hint} "
                             f"`intgen check-server {_public_url(self.base_url)} --model {self.served}` shows what "
                             "this server supports")
            if kind == "request":
                self.counts[f"rejected_{e.status_code}"] += 1
                return Completion(request.id, "", "error", len(prompt_ids or ()), error=(
                    f"the server rejected this request ({error_text(e)}; not retried)"), permanent=True), False
            self.counts["failed"] += 1
            import openai

            if isinstance(e, openai.APITimeoutError):
                why = f"no answer within backend.timeout_s={self.spec.timeout_s:g} s, {self.spec.max_retries} retries"
            elif isinstance(e, openai.APIConnectionError):
                why = f"connection failed after {self.spec.max_retries} retries: {_short(e)}"
            else:
                why = f"the server kept failing after {self.spec.max_retries} retries ({error_text(e)})"
            return Completion(request.id, "", "error", len(prompt_ids or ()), error=why), True
        choice = resp.choices[0]
        text = choice.text if prompt_ids is not None else (choice.message.content or "")
        usage = resp.usage
        cached = None
        if usage is not None and getattr(usage, "prompt_tokens_details", None) is not None:
            cached = getattr(usage.prompt_tokens_details, "cached_tokens", None)
        self.counts["answered"] += 1
        return Completion(request.id, text or "", choice.finish_reason or "stop",
                          usage.prompt_tokens if usage else len(prompt_ids or ()),
                          usage.completion_tokens if usage else 0, cached), False

    def abort(self, request_ids: Iterable[str]) -> None:
        for rid in request_ids:
            self._aborted.add(rid)
            t = self._tasks.get(rid)
            if t is not None and not t.done():
                t.cancel()  # closes the HTTP request; vLLM aborts a request whose client went away

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": "openai", "model": self.model, "served_model_name": self.served,
            "base_url": _public_url(self.base_url), "api_key_env": self.spec.api_key_env,
            "continuation": self.continuation, "max_model_len": self.max_model_len,
            "modes": {"continuation": self.continuation, "continuation_setting": self.spec.continuation,
                      "prompt_format": self.prompt_format if self.continuation == "completions" else None,
                      "prompt_format_setting": self.spec.prompt_format, "seeds": self.seeds_note},
            "server_probe": self.probe.as_dict() if self.probe is not None else "not run (the server was not needed)",
            "concurrency": self.spec.concurrency, "timeout_s": self.spec.timeout_s, "max_retries": self.spec.max_retries,
            "outage_s": self.spec.outage_s, "prefix_fidelity": self.fidelity, "requests": dict(self.counts),
        }
        if self.renderer is not None:
            info.update(self.renderer.describe())
        elif self.spec.chat_template_kwargs:
            info["chat_template_kwargs"] = self.spec.chat_template_kwargs
        return info
