"""The OpenAI-compatible backend: any server that speaks the OpenAI API (vLLM serve,
SGLang, llama.cpp's server, hosted APIs) (docs/job-spec.md, "backend").

- **Client and retries.** The ``openai`` package's ``AsyncOpenAI`` client, configured with
  ``backend.timeout_s`` and ``backend.max_retries``: it retries 408, 409, 429 and 5xx
  answers, timeouts and dropped connections with exponential backoff (0.5 s doubling to
  8 s, with jitter; a ``Retry-After`` up to 60 s is honoured) and never retries any other
  4xx. intgen adds no retry loop of its own for those.
- **Outages.** A request that still fails after those retries with a 5xx, 408/409/429, a
  timeout or a dropped connection is most likely a server that is down, not a bad request:
  it waits while one shared probe asks ``/v1/models`` with exponential backoff (tenacity;
  0.5 s doubling to 15 s) for up to ``backend.outage_s`` seconds (default 300), and is sent
  again when the server answers (at most 3 times). Past ``outage_s`` the server is taken as
  down: every request left fails at once without being sent, the run ends *incomplete*
  (``manifest.json``), and rerunning the same command sends exactly those requests again.
  ``manifest.json`` counts HTTP requests and answers by status (``http_requests``,
  ``http_503``, ...; retries are the difference), outages and probes.
- **Concurrency.** At most ``backend.concurrency`` requests in flight (a semaphore).
- **Per-sample seeds.** One :class:`~intgen.backends.base.Request` is one sample: it goes
  out with ``n=1`` and its own ``seed``. Samples of one prompt are never grouped into one
  ``n>1`` request, because servers derive the seeds of the n choices in their own way (or
  ignore ``n``, like llama.cpp). A server that answers with fewer choices than asked (none
  for ``n=1``) is asked again for the missing sample, with the same seed, up to
  ``max_retries`` times (fan-out).
- **Rejected requests.** A 4xx answer other than 401/403/404/408/409/429 (for example a
  400 for a prompt longer than the context) is not retried: it becomes a completion with
  ``finish_reason="error"`` and the server's message, which the runner records as a
  reject. 401, 403 and 404 stop the run: no request could succeed.
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
    repairs) and sends the token ids as the prompt of ``/v1/completions``, so the model
    sees exactly the tokens intgen checked, as with the in-process vLLM engine.
  - ``none``: a chat API that cannot continue a turn (most hosted APIs):
    ``can_continue`` is False, so it serves rollouts and proposals only and the check
    stage refuses it.

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
        self.fidelity = {"server": "not checked yet", "completions": "rendered and checked locally",
                         "none": "no continuations"}[spec.continuation]

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
        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._api_key(), timeout=self.spec.timeout_s,
                                         max_retries=self.spec.max_retries, http_client=http)
        self._sem = asyncio.Semaphore(self.spec.concurrency)
        where = _public_url(self.base_url)
        try:
            models = await self.client.with_options(timeout=min(self.spec.timeout_s, 60.0)).models.list()
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
        if self._has_tokenize is not False and self.spec.continuation != "none":
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
                got = await self.client.post(self.root_url + "/tokenize", cast_to=object,
                                             body=self._chat_body(messages, True))
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
            if self.spec.continuation == "server" and request.continue_final:
                problem = await self._prefix_problem(request.messages)
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

    def request_body(self, request: Request) -> tuple[str, dict[str, Any], list[int] | None]:
        """The endpoint (``"chat"`` or ``"completions"``), the keyword arguments of the
        client call, and the prompt's token ids when intgen rendered it.

        Raises:
            PrefixFidelityError: (completions mode) the template breaks the prefix.
        """
        s = request.sampling
        extra = dict(self.spec.extra_body)
        if s.top_k and s.top_k > 0:
            extra.setdefault("top_k", s.top_k)
        kwargs: dict[str, Any] = {"model": self.served, "n": 1, "seed": request.seed, "max_tokens": s.max_tokens,
                                  "temperature": s.temperature, "top_p": s.top_p}
        if self.spec.continuation == "completions":
            rendered = self.renderer.render(request.messages, request.continue_final)
            if rendered.problem is not None:
                raise _RequestProblem(rendered.problem)
            if extra:
                kwargs["extra_body"] = extra
            return "completions", {**kwargs, "prompt": rendered.ids}, rendered.ids
        if request.continue_final:
            extra.update(continue_final_message=True, add_generation_prompt=False)
        if self.spec.chat_template_kwargs:
            extra["chat_template_kwargs"] = self.spec.chat_template_kwargs
        if extra:
            kwargs["extra_body"] = extra
        return "chat", {**kwargs, "messages": list(request.messages)}, None

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
        import openai

        if request.continue_final and not self.can_continue:
            return Completion(request.id, "", "error", error="backend.continuation=none: this server cannot continue an "
                              "unfinished assistant turn", permanent=True), False
        try:
            endpoint, kwargs, prompt_ids = self.request_body(request)
        except _RequestProblem as e:
            return Completion(request.id, "", "error", error=str(e), permanent=True), False
        create = self.client.completions.create if endpoint == "completions" else self.client.chat.completions.create
        try:
            for _ in range(self.spec.max_retries + 1):
                resp = await create(**kwargs)
                if resp.choices:
                    break
                self.counts["missing_choices"] += 1  # fewer choices than asked: ask again, same seed
            else:
                self.counts["failed"] += 1
                return Completion(request.id, "", "error", len(prompt_ids or ()), error=(
                    f"the server returned no choice for this sample {self.spec.max_retries + 1} times")), False
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise _Fatal(f"the server refused the API key (read from ${self.spec.api_key_env}): {_short(e.message, 200)}")
        except openai.NotFoundError as e:
            what = "/v1/completions" if prompt_ids is not None else "/v1/chat/completions"
            raise _Fatal(f"the server answered 404 for {what} with model {self.served!r}: {_short(e.message, 300)}")
        except openai.APIStatusError as e:
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500
            self.counts["failed" if retried else f"rejected_{e.status_code}"] += 1
            why = (f"the server kept failing ({e.status_code}) after {self.spec.max_retries} retries" if retried
                   else f"the server rejected the request ({e.status_code}, not retried)")
            return Completion(request.id, "", "error", len(prompt_ids or ()), error=f"{why}: {_short(e.message)}",
                              permanent=not retried), retried
        except openai.APITimeoutError:
            self.counts["failed"] += 1
            return Completion(request.id, "", "error", len(prompt_ids or ()), error=(
                f"no answer within backend.timeout_s={self.spec.timeout_s:g} s, {self.spec.max_retries} retries")), True
        except openai.APIConnectionError as e:
            self.counts["failed"] += 1
            return Completion(request.id, "", "error", len(prompt_ids or ()), error=(
                f"connection failed after {self.spec.max_retries} retries: {_short(e)}")), True
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
            "continuation": self.spec.continuation, "max_model_len": self.max_model_len,
            "concurrency": self.spec.concurrency, "timeout_s": self.spec.timeout_s, "max_retries": self.spec.max_retries,
            "outage_s": self.spec.outage_s, "prefix_fidelity": self.fidelity, "requests": dict(self.counts),
        }
        if self.renderer is not None:
            info.update(self.renderer.describe())
        elif self.spec.chat_template_kwargs:
            info["chat_template_kwargs"] = self.spec.chat_template_kwargs
        return info
