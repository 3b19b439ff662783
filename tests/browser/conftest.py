"""Fixtures for the browser suite: the real pollcap binary on a free
loopback port, headless Chromium driven by selenium (Debian's chromium and
chromium-driver; selenium from PyPI), and a loopback TCP proxy that can cut
a WebSocket in the middle of a run. Every wait has a deadline."""
import os
import shutil
import socket
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pollcap_server import BIN, ROOT, Server, factory  # noqa: E402,F401

SHOTS = os.path.join(ROOT, "target", "browser")
SECRET = "browser-secret-0123456789abcdef"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture
def server_factory():
    yield from factory(lambda auth=False, **env: Server(
        (), {k: str(v) for k, v in env.items()}, secret=SECRET if auth else None))


class BlipProxy:
    """Forwards loopback TCP to `target`. The first WebSocket connection
    (the one whose request asks to upgrade) is cut — both sockets shut
    down, no Close frame — right after the server sent its `cut_after`-th
    `agent_thinking` event through it; `forwarded` counts the events that
    went through before the cut. Every other connection is forwarded
    untouched."""

    MARK = b'"type":"agent_thinking"'

    def __init__(self, target, cut_after):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.cut_after = cut_after
        self.cuts = 0
        self.forwarded = 0
        self.ws_connections = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.http = f"http://{self.addr}"
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self.open += [client, upstream]
            state = {"ws": None, "seen": b"", "cut": False}
            threading.Thread(target=self._pump, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, state, False), daemon=True).start()

    def _pump(self, src, dst, state, from_client):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and state["ws"] is None:
                    is_ws = b"upgrade: websocket" in data.lower()
                    with self.lock:
                        state["ws"] = is_ws and self.ws_connections == 0
                        self.ws_connections += is_ws
                dst.sendall(data)
                if not from_client and state["ws"]:
                    state["seen"] += data
                    if state["seen"].count(self.MARK) >= self.cut_after:
                        with self.lock:
                            self.cuts += 1
                            self.forwarded = state["seen"].count(b'"seq":')
                        state["ws"] = False
                        return  # finally: both sides shut down
        except OSError:
            pass
        finally:
            # One side ended (or the cut): end the other too, as a plain TCP
            # relay does. Shut down, not closed: a close with unread input
            # would send a reset, which may discard what was forwarded.
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _cut(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self):
        self.listener.close()
        self._cut(*self.open)


@pytest.fixture
def proxy_factory():
    made = []

    def make(target, cut_after):
        p = BlipProxy(target, cut_after)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture(scope="session")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: scripts/test installs chromium and "
                    "chromium-driver with apt-get", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,860", "--force-device-scale-factor=1",
              "--no-first-run", "--disable-extensions", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(15)
    driver.set_script_timeout(15)
    os.makedirs(SHOTS, exist_ok=True)
    yield driver
    driver.quit()
