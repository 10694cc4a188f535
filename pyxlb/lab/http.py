"""The lab's backend HTTP server: says which backend answered and whom it saw.

    GET /            -> "<name> <client address> <client port>\\n"
    GET /bytes?n=N   -> N bytes (a large download)
    POST /echo       -> "<name> <bytes received>\\n" (a large upload)

Run by `pyxlb lab` inside each backend's namespace, bound to every address (the VIP is on
the backend's loopback), IPv4 and IPv6 on one socket.
"""

from __future__ import annotations

import argparse
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MAX_BYTES = 64 << 20


class Handler(BaseHTTPRequestHandler):
    server_version = "pyxlb-lab"
    protocol_version = "HTTP/1.0"     # the server closes: client ports can be reused at once

    def _reply(self, body: bytes, ctype="text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/bytes":
            try:
                n = min(int(parse_qs(url.query).get("n", ["0"])[0]), MAX_BYTES)
            except ValueError:
                self.send_error(400, "n must be a number")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            chunk = b"x" * 65536
            while n > 0:
                self.wfile.write(chunk[:n])
                n -= len(chunk)
            return
        host, port = self.client_address[:2]
        if host.startswith("::ffff:"):
            host = host[7:]
        self._reply(f"{self.server.name} {host} {port}\n".encode())

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        got = 0
        while got < length:
            chunk = self.rfile.read(min(65536, length - got))
            if not chunk:
                break
            got += len(chunk)
        self._reply(f"{self.server.name} {got}\n".encode())

    def log_message(self, *args):
        pass


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 512

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main(argv=None):
    parser = argparse.ArgumentParser(description="pyxlb lab backend HTTP server")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    server = DualStackServer(("::", args.port), Handler)
    server.name = args.name
    server.serve_forever()


if __name__ == "__main__":
    main()
