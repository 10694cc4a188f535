"""Fixtures for the Kubernetes tests: a local API stand-in that speaks the real list/watch."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pyxlb.k8s import objects

from tests.support.standin import ApiStandIn


@pytest.fixture
def api():
    """A started API stand-in on 127.0.0.1 (``api.url``, ``api.client()``), stopped afterwards
    with its connections and the clients it made. Namespace pyxlb-system exists, as after
    an install (deploy/namespace.yaml): the agent's Lease lives there."""
    with ApiStandIn() as server:
        server.create(objects.namespace("pyxlb-system"))
        yield server


class Healthz:
    """A /healthz endpoint on 127.0.0.1 whose answer the test sets (like kube-proxy's)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                code = outer.status if self.path == "/healthz" else 404
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def target(self):
        return (self.host, self.port)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def healthz():
    servers = []

    def make(host: str = "127.0.0.1", port: int = 0):
        s = Healthz(host, port)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()
