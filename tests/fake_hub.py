"""A small in-process fake of the Hugging Face Hub for tests (loopback only).

It answers the endpoints that ``huggingface_hub``'s ``create_repo``/``upload_folder``/
``update_repo_settings`` and ``datasets.load_dataset(REPO_ID, CONFIG)`` use (listed in
shared/ENV.md): repo creation and info, tree listing, paths-info, YAML validation,
preupload (Parquet and PNG files go through LFS), the LFS batch API and upload URL, the
NDJSON commit (``file``, ``lfsFile``, ``deletedFile``, ``deletedFolder``) and
``resolve`` (HEAD and GET, with ``Range``). Every commit is a snapshot, so a revision
may be a branch name or a commit sha.

Point the clients at it with ``HF_ENDPOINT=fake.url``, ``HF_HUB_DISABLE_XET=1`` and any
``HF_TOKEN``; write calls must carry ``Authorization: Bearer <token>`` when the server
was given one. ``fail`` injects transient errors: ``{(method, path_regex): n}`` answers
the first n matching requests with 503.

Start it with ``with FakeHub(token=...) as hub:``; it binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".png", ".arrow", ".bin", ".safetensors")


def _private(req: dict[str, Any]) -> bool | None:
    """Visibility asked for by a create or settings call: huggingface_hub 2.x sends
    ``visibility`` (``private``/``public``), older clients ``private``."""
    if req.get("visibility") is not None:
        return req["visibility"] == "private"
    return None if req.get("private") is None else bool(req["private"])


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def entry(self, path: str) -> dict[str, Any]:
        e: dict[str, Any] = {"type": "file", "oid": git_blob_sha(self.data), "size": len(self.data), "path": path}
        if self.lfs:
            e["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return e


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: list[tuple[str, dict[str, Blob]]] = field(default_factory=list)

    def snapshot(self, rev: str) -> tuple[str, dict[str, Blob]] | None:
        if rev in ("main", "refs/heads/main"):
            return self.commits[-1]
        for sha, files in self.commits:
            if sha == rev:
                return sha, files
        return None


class FakeHub:
    """The server; see the module docstring. ``repos`` is its whole state."""

    def __init__(self, token: str | None = None, fail: dict[tuple[str, str], int] | None = None):
        self.token = token
        self.fail = dict(fail or {})
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []  # method, path, status
        self.unauthorized: list[str] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle
    def __enter__(self) -> "FakeHub":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- helpers for tests
    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision, path -> content."""
        snap = self.repos[repo_id].snapshot(rev)
        assert snap is not None
        return {p: b.data for p, b in snap[1].items()}

    def new_commit(self, repo: Repo, files: dict[str, Blob]) -> str:
        sha = hashlib.sha1(f"{repo.repo_id}:{len(repo.commits)}:{time.time_ns()}".encode()).hexdigest()
        repo.commits.append((sha, files))
        return sha


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
        self.send_response(status)
        hdrs = {"Content-Type": "application/json" if not isinstance(body, bytes) else "application/octet-stream"}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        with self.hub.lock:
            self.hub.requests.append((self.command, self.path, status))

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers, head=head)

    def _authorized(self) -> bool:
        if self.hub.token is None:
            return True
        ok = self.headers.get("Authorization") == f"Bearer {self.hub.token}"
        if not ok:
            self.hub.unauthorized.append(f"{self.command} {self.path}")
        return ok

    def _injected_failure(self) -> bool:
        path = urlsplit(self.path).path
        with self.hub.lock:
            for (method, pattern), left in self.hub.fail.items():
                if left > 0 and method == self.command and re.search(pattern, path):
                    self.hub.fail[(method, pattern)] = left - 1
                    return True
        return False

    def _repo(self, kind: str, repo_id: str, head: bool = False, write: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id) if kind == "datasets" else None
        if repo is None or (repo.private and not self._authorized()):
            self._error(404, f"Repository not found: {repo_id}", "RepoNotFound", head=head)
            return None
        if write and not self._authorized():
            self._error(401, "Invalid credentials", head=head)
            return None
        return repo

    # -- dispatch
    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self, head: bool = False) -> None:
        body = b"" if head or self.command == "GET" else self._body()
        if self._injected_failure():
            return self._error(503, "Service Unavailable (injected)", head=head)
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        m = self.command
        routes = [
            ("POST", r"^/api/repos/create$", self._create),
            ("GET", r"^/api/whoami-v2$", self._whoami),
            ("GET", r"^/api/agent-harnesses$", self._empty_list),
            ("POST", r"^/api/validate-yaml$", self._validate_yaml),
            ("PUT", r"^/api/(datasets)/([^/]+/[^/]+)/settings$", self._settings),
            ("GET", r"^/api/(datasets)/([^/]+/[^/]+)/tree/([^/]+)/?(.*)$", self._tree),
            ("POST", r"^/api/(datasets)/([^/]+/[^/]+)/paths-info/([^/]+)$", self._paths_info),
            ("POST", r"^/api/(datasets)/([^/]+/[^/]+)/preupload/([^/]+)$", self._preupload),
            ("POST", r"^/api/(datasets)/([^/]+/[^/]+)/commit/([^/]+)$", self._commit),
            ("GET", r"^/api/(datasets)/([^/]+/[^/]+)/revision/([^/]+)$", self._info),
            ("GET", r"^/api/(datasets)/([^/]+/[^/]+)$", self._info),
            ("POST", r"^/(datasets)/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", self._lfs_batch),
            ("PUT", r"^/lfs-upload/([0-9a-f]{64})$", self._lfs_put),
            ("GET", r"^/(datasets)/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self._resolve),
            ("HEAD", r"^/(datasets)/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self._resolve),
        ]
        for method, pattern, fn in routes:
            if method != m:
                continue
            match = re.match(pattern, path)
            if match:
                return fn(*match.groups(), body=body, query=query, head=head)
        self._error(404, f"fake hub: no route for {m} {path}", head=head)

    # -- endpoints
    def _empty_list(self, body: bytes, query: dict, head: bool) -> None:
        self._send(200, [])

    def _whoami(self, body: bytes, query: dict, head: bool) -> None:
        if not self._authorized():
            return self._error(401, "Invalid credentials")
        self._send(200, {"type": "user", "name": "tester", "orgs": []})

    def _create(self, body: bytes, query: dict, head: bool) -> None:
        if not self._authorized():
            return self._error(401, "Invalid credentials")
        req = json.loads(body or b"{}")
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
        if "/" not in repo_id:
            repo_id = f"tester/{repo_id}"
        if req.get("type") != "dataset":
            return self._error(400, "fake hub: only dataset repos")
        url = f"{self.hub.url}/datasets/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._send(409, {"error": "You already created this dataset repo", "url": url})
            repo = Repo(repo_id, private=_private(req) or False)
            attrs = Blob(b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n",
                         lfs=False)
            self.hub.new_commit(repo, {".gitattributes": attrs})
            self.hub.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id})

    def _settings(self, kind: str, repo_id: str, body: bytes, query: dict, head: bool) -> None:
        repo = self._repo(kind, repo_id, write=True)
        if repo is None:
            return
        private = _private(json.loads(body or b"{}"))
        if private is not None:
            repo.private = private
        self._send(200, {})

    def _validate_yaml(self, body: bytes, query: dict, head: bool) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def _info(self, kind: str, repo_id: str, rev: str = "main", body: bytes = b"", query: dict | None = None,
              head: bool = False) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        snap = repo.snapshot(rev)
        if snap is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        sha, files = snap
        self._send(200, {
            "_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(files)],
        })

    def _entries(self, files: dict[str, Blob], prefix: str, recursive: bool) -> list[dict[str, Any]] | None:
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        if prefix and not any(p.startswith(base) for p in files):
            return None
        out: dict[str, dict[str, Any]] = {}
        for p in sorted(files):
            if not p.startswith(base):
                continue
            rest = p[len(base):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                d = base + "/".join(parts[:depth])
                if (recursive or depth == 1) and d not in out:
                    out[d] = {"type": "directory", "oid": git_blob_sha(d.encode()), "size": 0, "path": d}
            if recursive or len(parts) == 1:
                out[p] = files[p].entry(p)
        return list(out.values())

    def _tree(self, kind: str, repo_id: str, rev: str, sub: str, body: bytes, query: dict, head: bool) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        snap = repo.snapshot(rev)
        if snap is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        entries = self._entries(snap[1], sub, recursive)
        if entries is None:
            return self._error(404, f"Entry not found: {sub}", "EntryNotFound")
        self._send(200, entries)

    def _paths_info(self, kind: str, repo_id: str, rev: str, body: bytes, query: dict, head: bool) -> None:
        repo = self._repo(kind, repo_id)
        if repo is None:
            return
        snap = repo.snapshot(rev)
        if snap is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        files = snap[1]
        out = []
        for p in paths:
            p = p.strip("/")
            if p in files:
                out.append(files[p].entry(p))
            elif any(f.startswith(p + "/") for f in files):
                out.append({"type": "directory", "oid": git_blob_sha(p.encode()), "size": 0, "path": p})
        self._send(200, out)

    def _preupload(self, kind: str, repo_id: str, rev: str, body: bytes, query: dict, head: bool) -> None:
        repo = self._repo(kind, repo_id, write=True)
        if repo is None:
            return
        req = json.loads(body)
        files = repo.commits[-1][1]
        out = []
        for f in req["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES)
            existing = files.get(f["path"])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": existing.entry(f["path"])["oid"] if existing else None})
        self._send(200, {"files": out, "commitOid": repo.commits[-1][0]})

    def _lfs_batch(self, kind: str, repo_id: str, body: bytes, query: dict, head: bool) -> None:
        repo = self._repo(kind, repo_id, write=True)
        if repo is None:
            return
        req = json.loads(body)
        objects = []
        for o in req["objects"]:
            obj: dict[str, Any] = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.hub.lfs_objects:
                obj["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{o['oid']}", "header": {}}}
            objects.append(obj)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str, body: bytes, query: dict, head: bool) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "sha256 mismatch")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = body
        self._send(200, {})

    def _commit(self, kind: str, repo_id: str, rev: str, body: bytes, query: dict, head: bool) -> None:
        repo = self._repo(kind, repo_id, write=True)
        if repo is None:
            return
        with self.hub.lock:
            parent_sha, parent = repo.commits[-1]
            files = dict(parent)
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    parent_commit = value.get("parentCommit")
                    if parent_commit and parent_commit != parent_sha:
                        return self._error(412, "A commit has happened since", "ParentCommitMismatch")
                elif key == "file":
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.hub.lfs_objects.get(value["oid"])
                    if data is None:
                        return self._error(422, f"LFS object {value['oid']} was not uploaded")
                    files[value["path"]] = Blob(data, lfs=True)
                elif key == "deletedFile":
                    if value["path"] not in files:
                        return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    return self._error(400, f"fake hub: unknown commit key {key}")
            sha = self.hub.new_commit(repo, files)
        self._send(200, {"commitUrl": f"{self.hub.url}/datasets/{repo_id}/commit/{sha}", "commitOid": sha,
                         "success": True, "pullRequestUrl": None})

    def _resolve(self, kind: str, repo_id: str, rev: str, path: str, body: bytes, query: dict, head: bool) -> None:
        repo = self._repo(kind, repo_id, head=head)
        if repo is None:
            return
        snap = repo.snapshot(rev)
        if snap is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound", head=head)
        sha, files = snap
        blob = files.get(path)
        if blob is None:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound", head=head)
        data = blob.data
        etag = blob.sha256 if blob.lfs else git_blob_sha(data)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d*)-(\d*)$", rng.strip())
            if m:
                start = int(m.group(1)) if m.group(1) else max(0, len(data) - int(m.group(2)))
                end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
        if head:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with self.hub.lock:
                self.hub.requests.append((self.command, self.path, status))
            return
        self._send(status, data, headers)
