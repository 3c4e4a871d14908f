"""A local HTTP file server on 127.0.0.1 that honours Range requests and can break a transfer once."""
from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer:
    """Serves ``directory``; the first GET of each name in ``break_once`` stops halfway and drops the connection.

    ``requests`` records (name, Range header or None, status) for every request.
    """

    def __init__(self, directory: Path, break_once: set[str] = frozenset()):
        self.directory = Path(directory)
        self.break_once = set(break_once)
        self.requests: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                path = server.directory / name
                if not path.is_file():
                    server.requests.append((name, None, 404))
                    self.send_error(404)
                    return
                data = path.read_bytes()
                wanted = self.headers.get("Range")
                start = int(re.match(r"bytes=(\d+)-", wanted).group(1)) if wanted else 0
                if name in server.break_once:
                    server.break_once.discard(name)
                    server.requests.append((name, wanted, 200))
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                status = 206 if wanted else 200
                server.requests.append((name, wanted, status))
                self.send_response(status)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
