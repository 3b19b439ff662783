"""Fixtures for the end-to-end suite: the real pollcap binary, started per
test with the settings it needs, on a free loopback port
(tests/pollcap_server.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pollcap_server import BIN, ROOT, Server, factory  # noqa: E402,F401

SECRET = "e2e-secret-0123456789abcdef"


@pytest.fixture
def server_factory():
    yield from factory(lambda *args, **env: Server(
        args, {k: str(v) for k, v in env.items()}, secret=SECRET))


@pytest.fixture
def server(server_factory):
    return server_factory()
