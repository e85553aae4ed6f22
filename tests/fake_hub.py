"""A tiny fake Hugging Face Hub (stdlib only) for push/pull tests without network access.

It serves exactly what huggingface_hub 2.4 calls for ``create_repo``, ``upload_folder`` / ``create_commit``
(``validate-yaml``, ``preupload``, ndjson ``commit`` with every file inline as base64: the preupload answer is always
``"uploadMode": "regular"``), ``model_info`` / ``repo_info``, ``list_repo_tree`` / ``list_repo_files``, ``whoami``
and file resolution (``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{path}`` with the ``X-Repo-Commit``, ``ETag``
and ``X-Linked-*`` headers that ``hf_hub_download`` reads). Each commit is a full snapshot folder in a temp dir.

huggingface_hub reads ``HF_ENDPOINT`` when it is imported, so clients run in subprocesses started with
``hub.env`` (``hub.run_python(script)``), while the server thread lives in the test process:

>>> with running_fake_hub() as hub:                                                      # doctest: +SKIP
...     hub.run_python("from huggingface_hub import HfApi; HfApi().create_repo('me/x')")

In a test module, share one server between tests with a fixture (use distinct repo names per test)::

    @pytest.fixture(scope="module")
    def fake_hub():
        with running_fake_hub() as hub:
            yield hub
"""

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

FAKE_USER = "sop-tester"
FAKE_TOKEN = "hf_fake_token_for_tests"


class FakeHub:
    """Repository state (snapshot folders per commit) and the HTTP server that exposes it."""

    def __init__(self, root: Path):
        self.root = root
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "commits": [sha, ...]} (newest last)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for debugging and asserts
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = False  # server_close() then joins every request thread
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)
        home = root / "hf_home"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
        for key in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "PYTHONPATH"):
            self.env.pop(key, None)
        self.env.update(
            HF_ENDPOINT=self.url, HF_TOKEN=FAKE_TOKEN, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"),
            HF_MODULES_CACHE=str(home / "modules"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
            NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        )  # fmt: skip

    # ----- repository state -----
    def head(self, repo_id: str) -> str:
        return self.repos[repo_id]["commits"][-1]

    def snapshot(self, repo_id: str, revision: str = "main") -> Path:
        """Folder holding the files of ``repo_id`` at ``revision`` (``main`` or a commit sha)."""
        commits = self.repos[repo_id]["commits"]
        sha = commits[-1] if revision == "main" else revision
        if sha not in commits:
            raise KeyError(revision)
        return self.root / "repos" / repo_id / sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        folder = self.snapshot(repo_id, revision)
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    def create_repo(self, repo_id: str, private: bool = False) -> bool:
        """Create ``repo_id`` with the Hub's initial ``.gitattributes`` commit; False if it already exists."""
        with self.lock:
            if repo_id in self.repos:
                return False
            self.repos[repo_id] = {"private": private, "commits": []}
        self.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, [], "init")
        return True

    def commit(self, repo_id: str, added: dict[str, bytes], deleted: list[str], message: str) -> str:
        with self.lock:
            commits = self.repos[repo_id]["commits"]
            digest = hashlib.sha1(f"{repo_id}\n{len(commits)}\n{message}".encode())
            for path in sorted(added):
                digest.update(path.encode() + hashlib.sha256(added[path]).digest())
            sha = digest.hexdigest()
            target = self.root / "repos" / repo_id / sha
            if commits:
                shutil.copytree(self.root / "repos" / repo_id / commits[-1], target)
            target.mkdir(parents=True, exist_ok=True)
            for path in deleted:
                (target / path).unlink(missing_ok=True)
            for path, content in added.items():
                (target / path).parent.mkdir(parents=True, exist_ok=True)
                (target / path).write_bytes(content)
            commits.append(sha)
            return sha

    # ----- lifecycle and clients -----
    def start(self) -> "FakeHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def run_python(self, script: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``python -c script`` against this Hub; raise with its stderr if it fails."""
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=cwd or self.root, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        # ----- helpers -----
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True):
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _json(self, payload, status: int = 200) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, code: str, send_body: bool = True) -> None:
            body = json.dumps({"error": code}).encode()
            self._send(status, body, {"X-Error-Code": code, "X-Error-Message": code}, send_body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _repo(self, parts: list[str]) -> str | None:
            repo_id = "/".join(parts[:2])
            return repo_id if repo_id in hub.repos else None

        # ----- routing -----
        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def _route(self, method: str) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((method, path))
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if method == "POST" and self.headers.get("Authorization") != f"Bearer {FAKE_TOKEN}":
                return self._error(401, "Unauthorized")
            if parts[:2] == ["api", "whoami-v2"]:
                return self._json({"type": "user", "name": FAKE_USER, "orgs": [], "auth": {"type": "access_token"}})
            if method == "POST" and parts[:3] == ["api", "repos", "create"]:
                return self._create_repo(json.loads(self._body()))
            if method == "POST" and parts[:2] == ["api", "validate-yaml"]:
                self._body()
                return self._json({"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = self._repo(parts[2:4])
                if repo_id is None:
                    return self._error(404, "RepoNotFound")
                rest = parts[4:]
                if method == "POST" and rest[:1] == ["preupload"]:
                    files = json.loads(self._body())["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._json({"files": modes, "commitOid": hub.head(repo_id)})
                if method == "POST" and rest[:1] == ["commit"]:
                    return self._commit(repo_id)
                if method == "GET" and rest[:1] in ([], ["revision"]):
                    return self._model_info(repo_id, rest[1] if len(rest) > 1 else "main")
                if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(parts, send_body=method == "GET")
            return self._error(404, "NotFound" if method != "HEAD" else "EntryNotFound", method != "HEAD")

        # ----- endpoints -----
        def _create_repo(self, payload: dict) -> None:
            repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
            if not hub.create_repo(repo_id, private=payload.get("visibility") == "private"):
                return self._json({"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}, 409)
            return self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _commit(self, repo_id: str) -> None:
            added, deleted, summary = {}, [], ""
            for line in self._body().decode().splitlines():
                item = json.loads(line) if line.strip() else {}
                key, value = item.get("key"), item.get("value", {})
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file" and value.get("encoding") == "base64":
                    added[value["path"]] = base64.b64decode(value["content"])
                elif key in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                elif key is not None:  # lfsFile would need an LFS upload, which this fake never asks for
                    return self._json({"error": f"unsupported commit operation {key!r}"}, 400)
            sha = hub.commit(repo_id, added, deleted, summary)
            self._json({"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True})

        def _model_info(self, repo_id: str, revision: str) -> None:
            try:
                files = hub.files(repo_id, revision)
            except KeyError:
                return self._error(404, "RevisionNotFound")
            siblings = [{"rfilename": path, "size": len(data)} for path, data in files.items()]
            sha = hub.head(repo_id) if revision == "main" else revision
            private = hub.repos[repo_id]["private"]
            self._json({"id": repo_id, "sha": sha, "private": private, "siblings": siblings, "tags": []})

        def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
            try:
                files = hub.files(repo_id, revision)
            except KeyError:
                return self._error(404, "RevisionNotFound")
            entries = [
                {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for path, data in files.items()
                if not prefix or path.startswith(prefix.rstrip("/") + "/")
            ]
            self._json(entries)

        def _resolve(self, parts: list[str], send_body: bool) -> None:
            repo_id, revision, filename = self._repo(parts[:2]), parts[3], "/".join(parts[4:])
            if repo_id is None:
                return self._error(404, "RepoNotFound", send_body)
            try:
                folder = hub.snapshot(repo_id, revision)
            except KeyError:
                return self._error(404, "RevisionNotFound", send_body)
            file = folder / filename
            if not file.is_file():
                return self._error(404, "EntryNotFound", send_body)
            data = file.read_bytes()
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            headers = {"X-Repo-Commit": folder.name, "ETag": etag, "X-Linked-Etag": etag}
            headers.update({"X-Linked-Size": str(len(data)), "Content-Type": "application/octet-stream"})
            self._send(200, data, headers, send_body)

    return Handler


@contextlib.contextmanager
def running_fake_hub() -> Iterator[FakeHub]:
    """Start a fake Hub in a temp dir for the duration of the block; the server thread is joined on exit."""
    with tempfile.TemporaryDirectory(prefix="fake_hub_") as tmp:
        hub = FakeHub(Path(tmp)).start()
        try:
            yield hub
        finally:
            hub.stop()
