"""A small Hugging Face Hub stand-in on 127.0.0.1, for testing downloads and uploads offline.

It speaks just enough of the Hub's HTTP API for ``huggingface_hub``:

* ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit`` and ``ETag`` headers, and the
  ``X-Error-Code`` headers the client turns into RepositoryNotFound / RevisionNotFound / EntryNotFound;
* ``POST /api/repos/create``, ``POST /api/validate-yaml`` (the model card's front matter), ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular") and
  ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 file contents) for ``upload_folder``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files


class FakeHub:
    """Repos held in memory; ``add_file`` and ``upload_folder`` both make commits."""

    def __init__(self, port: int = 0) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def create(self, repo_id: str) -> Repo:
        with self._lock:
            return self.repos.setdefault(repo_id, Repo())

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Add/replace ``files`` on ``branch`` as a new commit; returns its 40-hex id."""
        repo = self.create(repo_id)
        with self._lock:
            base = dict(repo.snapshots.get(repo.branches.get(branch, ""), {}))
            base.update(files)
            commit = hashlib.sha1(f"{repo_id}{len(repo.commits)}{sorted(base)}".encode()).hexdigest()
            repo.commits.append(commit)
            repo.snapshots[commit] = base
            repo.branches[branch] = commit
            return commit

    def add_file(self, repo_id: str, path: str, data: bytes, branch: str = "main") -> str:
        return self.commit(repo_id, {path: data}, branch)

    def resolve(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        commit = repo.branches.get(revision, revision)
        if commit not in repo.snapshots:
            return None
        return commit, repo.snapshots[commit]


def _validate_card(content: str) -> dict:
    """What the Hub says of a README's YAML front matter: errors if it does not parse as a mapping."""
    import yaml

    if not content.startswith("---\n"):
        return {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
    front = content[4:].split("\n---\n", 1)[0]
    try:
        parsed = yaml.safe_load(front)
    except yaml.YAMLError as error:
        return {"errors": [{"message": str(error)}]}
    if not isinstance(parsed, dict):
        return {"errors": [{"message": "metadata must be a mapping"}]}
    return {"warnings": []}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    # --- downloads ------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._resolve(send_body=False)

    def do_GET(self) -> None:
        if self.path.startswith("/api/"):
            self._api_get()
        else:
            self._resolve(send_body=True)

    def _resolve(self, send_body: bool) -> None:
        self.hub.requests.append((self.command, self.path))
        match = re.match(r"^/(?:models/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+?)(?:\?.*)?$", unquote(self.path))
        if not match:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo_id, revision, filename = match.groups()
        if repo_id not in self.hub.repos:
            return self._error(401, "RepoNotFound", "Repository not found")
        resolved = self.hub.resolve(repo_id, revision)
        if resolved is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        commit, files = resolved
        if filename not in files:
            return self._error(404, "EntryNotFound", "Entry not found", commit)
        data = files[filename]
        self.send_response(200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _api_get(self) -> None:
        self.hub.requests.append((self.command, self.path))
        match = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/?]+))?", unquote(self.path))
        if not match or match.group(1) not in self.hub.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo_id, revision = match.group(1), match.group(2) or "main"
        resolved = self.hub.resolve(repo_id, revision)
        if resolved is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        commit, files = resolved
        self._json({"id": repo_id, "sha": commit, "siblings": [{"rfilename": name} for name in sorted(files)]})

    # --- uploads --------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self.hub.requests.append((self.command, self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = unquote(self.path).split("?")[0]
        if path == "/api/repos/create":
            payload = json.loads(body or b"{}")
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            self.hub.create(repo_id)
            return self._json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._json(_validate_card(json.loads(body).get("content", "")))
        match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)$", path)
        if not match:
            return self._error(404, "RepoNotFound", "Unknown endpoint")
        repo_id, action, revision = match.groups()
        if repo_id not in self.hub.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        if action == "preupload":
            files = json.loads(body).get("files", [])
            return self._json(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        added: dict[str, bytes] = {}
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("key") == "file":
                value = item["value"]
                added[value["path"]] = base64.b64decode(value["content"])
        commit = self.hub.commit(repo_id, added, branch=revision)
        self._json({"commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit}", "commitOid": commit, "pullRequestUrl": None})

    # --- helpers --------------------------------------------------------------------------------
    def _json(self, data: dict) -> None:
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)
