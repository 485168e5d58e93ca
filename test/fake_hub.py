"""A local stand-in for the Hugging Face Hub's file endpoints, on 127.0.0.1, for download tests.

huggingface_hub talks to it through its ordinary HTTP code (HF_ENDPOINT / constants.ENDPOINT): the
repository info (`/api/models/{repo}/revision/{rev}`) and the file URLs (`/{repo}/resolve/{rev}/{file}`,
HEAD for the metadata headers, GET with Range for the bytes). No test double exists for this in
huggingface_hub, so the few routes it uses are written here.

Each file is served as published unless a test changes it: `published` overrides what the Hub's
metadata claims (size, sha256, blob id) while the bytes stay the same; `corrupt_gets` makes the next N
downloads of a file deliver one wrong byte (same size, headers of the true file: damage in transit);
`truncate_gets` makes the next N downloads stop halfway (the connection drops after half the bytes).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    data: bytes
    lfs: bool = False
    published: dict = field(default_factory=dict)  # overrides of size / sha256 / blob_id in the metadata
    corrupt_gets: int = 0  # this many GETs send the bytes with the first one flipped
    truncate_gets: int = 0  # this many GETs send half the bytes, then drop the connection

    def metadata(self) -> dict:
        size = self.published.get("size", len(self.data))
        row = {"size": size, "blobId": self.published.get("blob_id", git_blob_id(self.data))}
        if self.lfs:
            row["lfs"] = {"size": size, "sha256": self.published.get("sha256", hashlib.sha256(self.data).hexdigest()),
                          "pointerSize": 130}
        return row


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serve `repos` ({repo_id: HubRepo}) on a free port; `endpoint` is its URL; `requests` logs
    (method, path) of every request."""

    def __init__(self, repos: dict[str, HubRepo]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub._answer(self, body=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def file_gets(self, name: str) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and path.endswith("/" + name))

    # ---- routes -------------------------------------------------------------------------------------
    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append((handler.command, path))
        info = re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path)
        resolve = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
        if info and info.group(1) in self.repos:
            self._repo_info(handler, info.group(1), body)
        elif resolve and resolve.group(1) in self.repos and resolve.group(3) in self.repos[resolve.group(1)].files:
            self._file(handler, self.repos[resolve.group(1)], resolve.group(3), body)
        else:
            self._send(handler, 404, {"X-Error-Code": "EntryNotFound"}, b'{"error": "not found"}', body)

    def _repo_info(self, handler, repo_id: str, body: bool) -> None:
        repo = self.repos[repo_id]
        info = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                "siblings": [{"rfilename": name, **f.metadata()} for name, f in sorted(repo.files.items())]}
        self._send(handler, 200, {"Content-Type": "application/json"}, json.dumps(info).encode(), body)

    def _file(self, handler, repo: HubRepo, name: str, body: bool) -> None:
        hub_file = repo.files[name]
        data = hub_file.data
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if hub_file.lfs:
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        headers["ETag"] = f'"{git_blob_id(data)}"'
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if ranged and body:
            start = int(ranged.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        if body and hub_file.corrupt_gets > 0 and payload:
            hub_file.corrupt_gets -= 1
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        if body and hub_file.truncate_gets > 0:
            hub_file.truncate_gets -= 1
            headers["Content-Length"] = str(len(payload))
            self._send(handler, 206 if start else 200, headers, payload[: len(payload) // 2], body,
                       content_length=False)
            handler.close_connection = True
            return
        self._send(handler, 206 if start else 200, headers, payload, body)

    @staticmethod
    def _send(handler, status: int, headers: dict, payload: bytes, body: bool, *, content_length=True) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        if content_length:
            handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if body:
            handler.wfile.write(payload)
