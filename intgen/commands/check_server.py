"""``intgen check-server``: what an OpenAI-compatible server supports, and the modes
``intgen generate`` would use with it (docs/servers.md)."""

from __future__ import annotations

import argparse
import json
import sys


def run(args: argparse.Namespace) -> int:
    """Probe the server (:mod:`intgen.backends.server_probe`) as ``generate`` does with
    ``backend.continuation=auto``; print the report and the chosen modes. Exit 0 when the
    server answered the probe, 2 when it cannot be reached, refuses the key or does not
    serve the model."""
    import asyncio

    from intgen.backends import BackendError
    from intgen.backends.openai_compat import OpenAIBackend
    from intgen.config import BackendSpec

    url = args.url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"

    async def main():
        model = args.model
        if model is None:  # the server's first model
            import openai

            client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=30)
            try:
                models = (await client.models.list()).data
            except openai.APIError as e:
                raise BackendError(f"cannot list the models of {url} ({type(e).__name__}: {e}); name one with --model")
            finally:
                await client.close()
            if not models:
                raise BackendError(f"{url} lists no model; name one with --model")
            model = models[0].id
        spec = BackendSpec(kind="openai", base_url=url, served_model_name=model, continuation="auto",
                           api_key_env=args.api_key_env, tokenizer=args.tokenizer, timeout_s=args.timeout_s,
                           max_retries=1, outage_s=0)
        backend = OpenAIBackend(args.tokenizer or model, spec)
        try:
            await backend.start()
            return backend
        finally:
            await backend.close()

    try:
        backend = asyncio.run(main())
    except BackendError as e:
        print(f"intgen check-server: {e}", file=sys.stderr)
        return 2
    modes = backend.describe()["modes"]
    if args.json:
        print(json.dumps({"probe": backend.probe.as_dict(), "modes": modes,
                          "local_tokenizer": backend.renderer is not None}, indent=2))
        return 0
    print(backend.probe.format())
    print(f"  local tokenizer: {'yes' if backend.renderer is not None else 'no (--tokenizer NAME)'}")
    fmt = f", prompt_format={modes['prompt_format']}" if modes["prompt_format"] else ""
    print(f"\nintgen generate with backend.continuation=auto would use: continuation={modes['continuation']}{fmt}; "
          f"seeds {modes['seeds']}")
    print(f"prefix fidelity: {backend.fidelity}")
    if modes["continuation"] == "none":
        print("this server can be the proposer (a prompt without response_prefix), not the policy: the check stage "
              "continues an unfinished assistant turn")
    return 0


def register(sub) -> None:
    p = sub.add_parser("check-server", help="probe an OpenAI-compatible server: what it supports, which modes intgen "
                                            "would use (docs/servers.md)")
    p.add_argument("url", help="the server's API root, e.g. http://127.0.0.1:8000/v1 (/v1 is added when missing)")
    p.add_argument("--model", help="the served model name (default: the first one the server lists); also names the "
                                   "local tokenizer unless --tokenizer does")
    p.add_argument("--tokenizer", help="a local tokenizer for rendering (short name, HF id or folder)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    p.add_argument("--timeout-s", type=float, default=120.0, help="seconds to wait for one answer")
    p.add_argument("--json", action="store_true", help="print the probe as JSON")
    p.set_defaults(func=run)
