"""Push a run's export to the Hugging Face Hub (README.md, "Export and the Hub").

:func:`push_run` re-exports the run for the repo (so the card's snippets name it), then
pushes the whole ``export/`` folder in **one commit** (``HfApi.create_commit``): every
file of the new export is added and every other file in the repo (a shard of an earlier,
larger push, a config that is empty this time) is deleted by the same commit, so the repo
always holds exactly one consistent set of files (``.gitattributes`` is kept).

Why not the one-call helpers: ``datasets``' ``DatasetDict.push_to_hub(config_name=...)``
makes one commit per config, rewrites the README's YAML on each, and deletes stale files
only in the folder of the config it pushes, so a config dropped between runs would stay
(datasets 5.2, ``dataset_dict.py``).
``HfApi.upload_folder(..., delete_patterns="*")`` deletes stale files, but in
huggingface_hub 2.x, when ``hf_xet`` is installed (the default), it streams the folder
through a multi-commit pipeline (``_upload_pipeline``: batches of up to 250 files, and a
forced commit when a batch is five minutes old), with the deletions in the first
commit, so a slow or large push passes through commits that hold only part of the new
files. ``create_commit`` uploads the same way (LFS or Xet) but commits once.

The token: huggingface_hub's own lookup, ``HF_TOKEN`` or the token stored by
``hf auth login``; intgen never takes one as an argument, never prints it, and never
writes it anywhere.

Retries: huggingface_hub already retries the preupload call, the LFS batch call and
the LFS uploads (``http_backoff``: 408, 429, 500, 502, 503, 504, timeouts and dropped
connections). It does *not* retry the final commit POST (``_send_commit`` with
``retry_on_error=False`` in ``create_commit``: a retried commit whose first answer was
lost would commit twice), nor ``create_repo``, ``repo_info``, ``update_repo_settings``
or the card's YAML validation. Here a second identical commit is harmless (it replaces
the same files with the same files), so each of those calls is retried with tenacity on
the same transient errors.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

import intgen
from intgen.export import CARD_NAME, DEFAULT_MAX_SHARD_BYTES, export_run_result

log = logging.getLogger(__name__)

__all__ = ["PushError", "push_run", "TRANSIENT_STATUS"]

#: HTTP statuses retried (huggingface_hub's own default set for http_backoff)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")


class PushError(RuntimeError):
    """A push that cannot start (no token, bad repo id); the message says what to do."""


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Timeouts and dropped connections of whichever HTTP client huggingface_hub uses
    (httpx2 in 2.x, httpx in 1.x, requests before)."""
    out: list[type[BaseException]] = [TimeoutError, ConnectionError]
    for module, names in (("httpx2", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
                          ("httpx", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
                          ("requests", ("Timeout", "ConnectionError"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        out += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(out)


def is_transient(exc: BaseException) -> bool:
    """True for an HTTP error with a transient status, a timeout or a dropped connection."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        return response is not None and response.status_code in TRANSIENT_STATUS
    return isinstance(exc, _transport_errors())


def _retrying(fn: Callable[..., T], what: str, attempts: int, wait_s: float) -> Callable[..., T]:
    import tenacity

    def note(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        status = getattr(getattr(exc, "response", None), "status_code", None)
        log.warning("push: %s failed (%s%s); retrying, attempt %d of %d", what, type(exc).__name__,
                    f" {status}" if status else "", state.attempt_number + 1, attempts)

    return tenacity.retry(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=wait_s, max=60 * wait_s),
        before_sleep=note,
        reraise=True,
    )(fn)


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, attempts: int = 5, wait_s: float = 2.0,
             max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, commit_message: str | None = None) -> Any:
    """Export ``run_dir`` for ``repo_id`` and push every config, the card and the plots
    as one commit to the dataset repo ``repo_id`` (created if missing).

    Args:
        run_dir: a finished run directory.
        repo_id: ``namespace/name`` of a dataset repo.
        private: create the repo private; if it exists and is public, make it private
            first (never publish what was asked to be private). Without it, a new repo
            gets the Hub's default visibility and an existing one keeps its own.
        attempts / wait_s: retries of the calls huggingface_hub does not retry itself
            (module docstring): at most ``attempts`` tries, exponential waits from ``wait_s``.
        max_shard_bytes: Parquet shard size of the export.
        commit_message: defaults to one naming intgen's version and the run.

    The commit names the parent it was computed from, so a concurrent push to the same
    repo makes this one fail (412) instead of mixing files.

    Returns:
        huggingface_hub's ``CommitInfo`` of the commit (``commit_url``, ``oid``).

    Raises:
        PushError: no token is available, or the repo id is malformed.
        huggingface_hub.errors.HfHubHTTPError: the Hub refused (after the retries above).
    """
    from huggingface_hub import DatasetCard, HfApi, get_token

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"repo id must be NAMESPACE/NAME, got {repo_id!r}")
    if not get_token():
        raise PushError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    result = export_run_result(run_dir, repo_id=repo_id, max_shard_bytes=max_shard_bytes)
    folder = result.export_dir
    api = HfApi()  # the token is looked up by huggingface_hub itself, per call
    _retrying(api.create_repo, "create_repo", attempts, wait_s)(
        repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
    if private:
        info = _retrying(api.repo_info, "repo_info", attempts, wait_s)(repo_id, repo_type="dataset")
        if not info.private:
            log.info("push: %s is public; making it private as asked", repo_id)
            _retrying(api.update_repo_settings, "update_repo_settings", attempts, wait_s)(
                repo_id, private=True, repo_type="dataset")
    card = DatasetCard.load(folder / CARD_NAME, repo_type="dataset")
    _retrying(card.validate, "card validation", attempts, wait_s)(repo_type="dataset")
    rows = ", ".join(f"{c} {n}" for c, n in result.rows.items())
    message = commit_message or f"intgen {intgen.__version__}: export of run {Path(run_dir).resolve().name} ({rows})"
    commit = _retrying(_commit_folder, "commit", attempts, wait_s)(api, repo_id, folder, message)
    log.info("push: %s", commit.commit_url)
    return commit


def _commit_folder(api: Any, repo_id: str, folder: Path, message: str) -> Any:
    """One commit that makes the repo's files exactly those of ``folder`` (plus
    ``.gitattributes``). Computed afresh on every try: after a commit whose answer was
    lost, the retry finds nothing to delete and nothing changed, and huggingface_hub
    skips the no-op commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    info = api.repo_info(repo_id, repo_type="dataset")
    remote = {s.rfilename for s in (info.siblings or [])}
    local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    operations: list[Any] = [CommitOperationDelete(path_in_repo=p) for p in sorted(remote - set(local))
                             if p != ".gitattributes"]
    operations += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in local.items()]
    return api.create_commit(repo_id, operations, commit_message=message, repo_type="dataset",
                             parent_commit=info.sha)
