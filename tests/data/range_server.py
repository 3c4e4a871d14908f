"""A local HTTP file server on 127.0.0.1 with Range, ETag, Last-Modified and If-Range, optionally throttled.

``python -m http.server`` has no Range support; the download tests need a server that resumes, that
can prove (or fail to prove) a file is unchanged, that breaks a transfer once, and that is slow
enough for a test to kill the client mid-transfer.
"""
from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer:
    """Serves ``directory``; the first GET of each name in ``break_once`` stops halfway and drops the connection.

    ``requests`` records (name, Range header or None, status) for every request, ``if_range`` the
    If-Range header of each (or None). ``bytes_per_s`` throttles every body (in 1 KiB writes);
    ``validators=False`` sends neither ETag nor Last-Modified.
    """

    def __init__(self, directory: Path, break_once: set[str] = frozenset(), bytes_per_s: float | None = None,
                 validators: bool = True):
        self.directory = Path(directory)
        self.break_once = set(break_once)
        self.bytes_per_s = bytes_per_s
        self.validators = validators
        self.requests: list[tuple[str, str | None, int]] = []
        self.if_range: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_body(self, body: bytes) -> None:
                step = 1024 if server.bytes_per_s else len(body) or 1
                for start in range(0, len(body), step):
                    self.wfile.write(body[start:start + step])
                    self.wfile.flush()
                    if server.bytes_per_s:
                        time.sleep(step / server.bytes_per_s)

            def do_GET(self):
                name = self.path.lstrip("/")
                path = server.directory / name
                server.if_range.append(self.headers.get("If-Range"))
                if not path.is_file():
                    server.requests.append((name, None, 404))
                    self.send_error(404)
                    return
                data = path.read_bytes()
                etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
                modified = formatdate(path.stat().st_mtime, usegmt=True)
                wanted = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if wanted and if_range is not None and if_range not in (etag, modified):
                    wanted = None  # RFC 9110: the validator does not match, send the whole new file
                start = int(re.match(r"bytes=(\d+)-", wanted).group(1)) if wanted else 0
                if name in server.break_once:
                    server.break_once.discard(name)
                    server.requests.append((name, wanted, 200))
                    self.send_response(200)
                    self.send_validators(etag, modified)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.send_body(data[: len(data) // 2])
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                status = 206 if wanted else 200
                server.requests.append((name, wanted, status))
                self.send_response(status)
                self.send_validators(etag, modified)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                try:
                    self.send_body(data[start:])
                except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-transfer
                    self.close_connection = True

            def send_validators(self, etag: str, modified: str) -> None:
                if server.validators:
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", modified)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
