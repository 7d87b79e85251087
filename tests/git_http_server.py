"""A loopback git server over smart HTTP that demands basic auth, for the helper's tests.

Bare repositories under one root are served by ``git http-backend`` as a CGI
program, each behind its own user name and password: a request without them,
or with others, gets 401 and ``WWW-Authenticate: Basic realm=...``, as GitHub
or Hugging Face answer. The log keeps each request's method, path, status and
the user name it claimed, never a password or an Authorization header, and
:attr:`GitHttpServer.attempts` records who tried which repository with what
outcome.
"""

from __future__ import annotations

import base64
import binascii
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

REALM = "modelforge-git-test"
#: Bound on one `git http-backend` run: a wedged backend fails the request, not the test run.
BACKEND_TIMEOUT = 60.0
#: git sends a few KiB per request for these small repositories; anything far larger is a bug.
MAX_BODY = 16 << 20


@dataclass(frozen=True)
class Attempt:
    repo: str
    username: str | None  # None: no Authorization header
    accepted: bool


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        # The request line and the status only: BaseHTTPRequestHandler logs no headers.
        self.server.owner.log.append(format % args)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _claimed(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        return (username, password) if sep else None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
                if len(body) > MAX_BODY:
                    raise ValueError("request body too large")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length)

    def _serve(self) -> None:
        owner = self.server.owner
        url = urlsplit(self.path)
        repo = url.path.lstrip("/").split("/", 1)[0]
        claimed = self._claimed()
        expected = owner.accounts.get(repo)
        accepted = expected is not None and claimed == expected
        with owner.lock:
            owner.attempts.append(Attempt(repo, claimed[0] if claimed else None, accepted))
        if not accepted:
            message = b"authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Basic realm="{REALM}"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
            return
        assert claimed is not None
        body = self._body() if self.command == "POST" else b""
        env = {
            **owner.backend_env,
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": claimed[0],
            "REMOTE_ADDR": self.client_address[0],
        }
        for header, variable in (
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ):
            if header in self.headers:
                env[variable] = self.headers[header]
        result = subprocess.run(
            ["git", "http-backend"],
            input=body,
            capture_output=True,
            env=env,
            timeout=BACKEND_TIMEOUT,
        )
        head, payload = _split_cgi(result.stdout)
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _split_cgi(output: bytes) -> tuple[bytes, bytes]:
    """A CGI response's header block and body (the blank line may be CRLF or LF)."""
    crlf = output.find(b"\r\n\r\n")
    lf = output.find(b"\n\n")
    if crlf != -1 and (lf == -1 or crlf < lf):
        return output[:crlf], output[crlf + 4 :]
    if lf != -1:
        return output[:lf], output[lf + 2 :]
    return output, b""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: GitHttpServer


class GitHttpServer:
    """Serves ``root``'s bare repositories on 127.0.0.1; ``accounts``: repo -> (user, password)."""

    def __init__(
        self, root: Path, accounts: dict[str, tuple[str, str]], backend_env: dict[str, str]
    ) -> None:
        self.root = root
        self.accounts = accounts
        self.backend_env = backend_env
        self.log: list[str] = []
        self.attempts: list[Attempt] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="git-http-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        """What git sends as ``host``: the address and the port."""
        return f"127.0.0.1:{self.port}"

    def url(self, repo: str) -> str:
        return f"http://{self.host}/{repo}"

    def start(self) -> GitHttpServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=BACKEND_TIMEOUT)

    def log_text(self) -> str:
        with self.lock:
            return "\n".join(self.log)
