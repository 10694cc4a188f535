"""Fixtures for the Kubernetes tests: a local API stand-in that speaks the real list/watch."""

import pytest

from pyxlb.k8s.standin import ApiStandIn


@pytest.fixture
def api():
    """A started API stand-in on 127.0.0.1 (``api.url``, ``api.client()``), stopped afterwards
    with its connections and the clients it made."""
    with ApiStandIn() as server:
        yield server
