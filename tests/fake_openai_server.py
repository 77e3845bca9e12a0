"""A fault-injecting fake OpenAI-compatible server for tests (loopback only).

It answers ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``
with scripted text shaped for intgen's stages (rollouts that fail, proposer outputs that
parse, continuations that are sometimes correct), and on a chosen fraction of requests
injects a fault instead: ``429``, ``500``, ``503``, ``stall`` (no answer until past the
client's timeout, then the connection closes), ``drop`` (the connection closes without an
answer) or ``few`` (200 with fewer choices than asked). A prompt longer than
``max_prompt_chars`` gets a 400, as vLLM answers a prompt longer than the context.
Given a ``tokenizer``, it also answers vLLM's ``/tokenize`` (chat form) and
``/detokenize``, rendering with that tokenizer's chat template as vLLM does.

Quirks (``quirks=``, or a named imitation from :data:`IMITATIONS`) imitate servers that
are not vLLM: ``string_prompts_only`` (``/v1/completions`` refuses a prompt of token ids,
as llama.cpp's Python server does), ``validation_500`` (such a refusal is a 500 whose body
is a validation error, as that server answers, instead of a 422), ``ignore_n`` (one choice
whatever ``n`` asks), ``no_continue_final`` (``continue_final_message`` is ignored: the
last assistant turn is closed and a new one opened), ``no_tokenize`` (no ``/tokenize``)
and ``no_seed`` (a request with a ``seed`` gets a 400, as some hosted APIs answer an
unknown field).
With a ``tokenizer``, the server renders chats and tokenizes text prompts as vLLM does
(chat: the template's text, no special tokens added; a text prompt: special tokens added)
and logs the token ids that reach "the model" (:attr:`Logged.prompt_ids`); usage counts
them. ``refuse=(status, message)`` answers every generation request with that error.
Requests with the header ``X-Intgen-Probe`` (intgen's server probe) get no faults and are
logged in :attr:`probes`, not :attr:`log`.

Faults are chosen by a hash of (seed, request body, how often this body was seen), so a
run is reproducible; one body gets at most ``max_faults_per_body`` faults, so a client
with enough retries always gets its answer. Every request is logged in :attr:`log`.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

FAULTS = ("429", "500", "503", "stall", "drop", "few")
QUIRKS = ("string_prompts_only", "validation_500", "ignore_n", "no_continue_final", "no_tokenize", "no_seed")
#: servers imitated by quirks (docs/servers.md)
IMITATIONS = {
    "vllm": frozenset(),
    "llama.cpp-python": frozenset({"string_prompts_only", "validation_500", "ignore_n", "no_continue_final",
                                   "no_tokenize"}),
    "no-continue-final": frozenset({"no_continue_final"}),
    "no-tokenize": frozenset({"no_tokenize"}),
    "token-ids-500": frozenset({"string_prompts_only", "validation_500"}),
}


@dataclass
class Logged:
    path: str
    body_key: str
    seed: int | None
    retry_count: int
    outcome: str  # "ok", "400" or a fault name
    authorization: str | None
    body: dict
    prompt_ids: list[int] | None = None


class FakeOpenAIServer:
    """Run with ``with FakeOpenAIServer(...) as server:``; ``server.url`` is the base URL (``.../v1``).

    Args:
        served: the model id the server serves.
        fault_rate: fraction of requests answered with a fault.
        faults: the fault kinds to draw from.
        stall_s: how long a stalled request hangs before its connection is closed.
        max_prompt_chars: longer prompts get a 400.
        max_model_len: what ``/v1/models`` reports.
        answers: problem text -> gold answer, so that some continuations are correct.
        decode: token ids -> text, to read ``/v1/completions`` prompts given as ids.
        seed: the fault hash's seed.
        max_faults_per_body: the most faults one request body gets.
        tokenizer: a transformers tokenizer for ``/tokenize`` and ``/detokenize`` (else 404).
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get a 401.
        down_after: go down (:attr:`down`) after this many answered completions: an outage.
        quirks: quirk names (:data:`QUIRKS`) or an imitation's name (:data:`IMITATIONS`).
        refuse: ``(status, message)``: every generation request gets this error.

    Attributes:
        down: while True, every connection is closed without an answer (``/v1/models``
            too), as a server that went away; set it False to bring the server back.
    """

    def __init__(self, served: str = "fake-model", fault_rate: float = 0.0, faults: tuple[str, ...] = FAULTS,
                 stall_s: float = 2.5, max_prompt_chars: int = 20000, max_model_len: int | None = 8192,
                 answers: dict[str, str] | None = None, decode: Callable[[list[int]], str] | None = None,
                 seed: int = 0, max_faults_per_body: int = 2, tokenizer: Any = None,
                 api_key: str | None = None, down_after: int | None = None, quirks: Any = (),
                 refuse: tuple[int, str] | None = None):
        self.served = served
        self.fault_rate = fault_rate
        self.faults = faults
        self.stall_s = stall_s
        self.max_prompt_chars = max_prompt_chars
        self.max_model_len = max_model_len
        self.answers = answers or {}
        self.decode = decode
        self.seed = seed
        self.max_faults_per_body = max_faults_per_body
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.down_after = down_after
        self.quirks = frozenset(IMITATIONS[quirks] if isinstance(quirks, str) else quirks)
        unknown = self.quirks - set(QUIRKS)
        if unknown:
            raise ValueError(f"unknown quirks {sorted(unknown)}")
        self.refuse = refuse
        self.down = False
        self.refused = 0
        self.log: list[Logged] = []
        self.probes: list[Logged] = []
        self._seen: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._get(self)

            def do_POST(self):
                server._post(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- what happened ---------------------------------------------------------------------
    def outcomes(self) -> Counter[str]:
        return Counter(e.outcome for e in self.log)

    def answered(self) -> Counter[str]:
        """Request body -> how many times it was answered with a choice."""
        return Counter(e.body_key for e in self.log if e.outcome == "ok")

    # -- handlers ----------------------------------------------------------------------------
    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _unauthorized(self, h: BaseHTTPRequestHandler) -> bool:
        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._send(h, 401, {"error": {"message": "Incorrect API key provided.", "code": 401}})
            return True
        return False

    def _refuse_if_down(self, h: BaseHTTPRequestHandler) -> bool:
        if not self.down:
            return False
        with self._lock:
            self.refused += 1
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        if self._refuse_if_down(h):
            return
        if self._unauthorized(h):
            return
        if h.path.rstrip("/") == "/v1/models":
            entry: dict[str, Any] = {"id": self.served, "object": "model", "owned_by": "fake"}
            if self.max_model_len:
                entry["max_model_len"] = self.max_model_len
            self._send(h, 200, {"object": "list", "data": [entry]})
        else:
            self._send(h, 404, {"error": {"message": f"no route {h.path}", "code": 404}})

    def _fault_for(self, key: str) -> str | None:
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
            if self._faulted[key] >= self.max_faults_per_body or not self.fault_rate:
                return None
            digest = hashlib.sha256(f"{self.seed}:{key}:{n}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 >= self.fault_rate:
                return None
            self._faulted[key] += 1
            return self.faults[digest[8] % len(self.faults)]

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if self._refuse_if_down(h):
            return
        if self._unauthorized(h):
            return
        path = h.path.rstrip("/")
        if path in ("/tokenize", "/detokenize") and self.tokenizer is not None and "no_tokenize" not in self.quirks:
            self._tokenize(h, path, json.loads(raw))
            return
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(h, 404, {"error": {"message": f"no route {h.path}", "code": 404}})
            return
        body = json.loads(raw)
        key = hashlib.sha256(path.encode() + raw).hexdigest()
        retry = int(h.headers.get("x-stainless-retry-count") or 0)
        probe = h.headers.get("X-Intgen-Probe") is not None
        prompt_ids: list[int] | None = None

        def record(outcome: str) -> None:
            with self._lock:
                (self.probes if probe else self.log).append(
                    Logged(path, key, body.get("seed"), retry, outcome, h.headers.get("Authorization"), body, prompt_ids))

        if body.get("model") != self.served:
            record("404")
            self._send(h, 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}})
            return
        if self.refuse is not None and not probe:
            record(str(self.refuse[0]))
            self._send(h, self.refuse[0], {"error": {"message": self.refuse[1], "code": self.refuse[0]}})
            return
        if "no_seed" in self.quirks and "seed" in body:
            record("400")
            self._send(h, 400, {"error": {"message": "Unrecognized request argument supplied: seed", "code": 400}})
            return
        t = self.tokenizer
        if path == "/v1/chat/completions":
            continuing = bool(body.get("continue_final_message")) and "no_continue_final" not in self.quirks
            if t is not None:
                prompt = t.apply_chat_template(body["messages"], tokenize=False, continue_final_message=continuing,
                                               add_generation_prompt=(not continuing if "no_continue_final" in self.quirks
                                                                      else body.get("add_generation_prompt", True)),
                                               **(body.get("chat_template_kwargs") or {}))
                prompt_ids = t(prompt, add_special_tokens=False)["input_ids"]
            else:
                prompt = "\n".join(m["content"] for m in body["messages"])
        else:
            p = body["prompt"]
            if isinstance(p, list) and "string_prompts_only" in self.quirks:
                record("422")
                if "validation_500" in self.quirks:
                    self._send(h, 500, {"error": {"message": "1 validation error for CreateCompletionRequest\nprompt\n  "
                                                             "Input should be a valid string [type=string_type]",
                                                  "type": "internal_server_error"}})
                else:
                    self._send(h, 422, {"detail": [{"type": "string_type", "loc": ["body", "prompt"],
                                                    "msg": "Input should be a valid string"}]})
                return
            if t is not None:
                prompt_ids = list(p) if isinstance(p, list) else t(p, add_special_tokens=True)["input_ids"]
                prompt = t.decode(prompt_ids) if isinstance(p, list) else p
            else:
                prompt = self.decode(p) if isinstance(p, list) and self.decode else str(p)
            continuing = True  # a completion always continues its prompt
        if len(prompt) > self.max_prompt_chars:
            record("400")
            self._send(h, 400, {"error": {"message": f"This model's maximum context length is exceeded: the prompt has "
                                                     f"{len(prompt)} characters", "type": "BadRequestError", "code": 400}})
            return
        if t is not None:  # the rendered prompt tells: a new assistant turn, or one to continue (any endpoint)
            continuing = not prompt.endswith(self._generation_prompt())
        fault = None if probe else self._fault_for(key)
        if fault in ("429", "500", "503"):
            record(fault)
            self._send(h, int(fault), {"error": {"message": f"injected {fault}", "code": int(fault)}})
            return
        if fault in ("stall", "drop"):
            record(fault)
            if fault == "stall":
                self._stop.wait(self.stall_s)
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        n = 1 if "ignore_n" in self.quirks else int(body.get("n") or 1)
        text = self._reply(prompt, continuing, int(body.get("seed") or 0))
        k = n - 1 if fault == "few" else n
        record("few" if fault == "few" else "ok")
        if self.down_after is not None and sum(e.outcome == "ok" for e in self.log) >= self.down_after:
            self.down = True  # this answer still goes out; the next request finds the server gone
        if path == "/v1/chat/completions":
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                       for i in range(k)]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": text, "finish_reason": "stop", "logprobs": None} for i in range(k)]
            obj = "text_completion"
        words = len(text.split())
        used = len(prompt_ids) if prompt_ids is not None else len(prompt) // 4
        self._send(h, 200, {"id": f"fake-{key[:12]}", "object": obj, "created": int(time.time()), "model": self.served,
                            "choices": choices, "usage": {"prompt_tokens": used, "completion_tokens": words,
                                                          "total_tokens": used + words}})

    def _generation_prompt(self) -> str:
        """What the chat template appends to open a new assistant turn."""
        t = self.tokenizer
        user = [{"role": "user", "content": "x"}]
        with_prompt = t.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        return with_prompt[len(t.apply_chat_template(user, tokenize=False, add_generation_prompt=False)):]

    def _tokenize(self, h: BaseHTTPRequestHandler, path: str, body: dict) -> None:
        t = self.tokenizer
        if path == "/detokenize":
            self._send(h, 200, {"prompt": t.decode(body["tokens"])})
            return
        if "messages" not in body:  # the completion form: a text prompt, special tokens added by default
            ids = t(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True)))["input_ids"]
            self._send(h, 200, {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len})
            return
        keep_open = body.get("continue_final_message", False) and "no_continue_final" not in self.quirks
        text = t.apply_chat_template(body["messages"], tokenize=False,
                                     add_generation_prompt=(not keep_open if "no_continue_final" in self.quirks
                                                            else body.get("add_generation_prompt", True)),
                                     continue_final_message=keep_open,
                                     **(body.get("chat_template_kwargs") or {}))
        ids = t(text, add_special_tokens=bool(body.get("add_special_tokens", False)))["input_ids"]
        self._send(h, 200, {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len})

    def _reply(self, prompt: str, continuing: bool, seed: int) -> str:
        """Stage-shaped text: proposer outputs that parse, continuations correct one time in
        three (when the problem's gold answer is known), rollouts always wrong."""
        if "Student's attempt" in prompt or "**Substep" in prompt:
            if continuing and prompt.rstrip().endswith('{"content": "'):
                return 'Let me recheck this step carefully.", "location": 1}</intervention>'
            return 'Checked.\n<intervention>{"content": "Let me recheck this step carefully.", "location": 1}</intervention>'
        gold = next((g for problem, g in self.answers.items() if problem in prompt), None)
        if continuing:
            answer = gold if gold is not None and seed % 3 == 0 else "-12345"
            return f"\n\nRedoing it carefully.\n\nSo the answer is $\\boxed{{{answer}}}$."
        return "First I read the problem.\n\nThen I compute.\n\nSo the answer is $\\boxed{-12345}$."
