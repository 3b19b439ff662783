"""Fixtures for the end-to-end suite: the real pollcap binary, started per
test with the settings it needs, on a free loopback port."""
import os
import re
import subprocess
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("POLLCAP_BIN", os.path.join(ROOT, "target", "release", "pollcap"))
SECRET = "e2e-secret-0123456789abcdef"


class Server:
    def __init__(self, args, env):
        full_env = dict(os.environ, POLLCAP_JWT_SECRET=SECRET, RUST_LOG="info", **env)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", *args],
            env=full_env, stderr=subprocess.PIPE, text=True)
        self.log = []
        addr = None
        for line in self.proc.stderr:  # bounded by the process: EOF if it dies
            self.log.append(line)
            m = re.search(r"listening on (\S+)", line)
            if m:
                addr = m.group(1)
                break
        assert addr, "server did not start:\n" + "".join(self.log)
        self.addr = addr
        self.url = f"ws://{addr}/ws"
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def token(self, sub="e2e", ttl="1h"):
        out = subprocess.run([BIN, "token", "--sub", sub, "--ttl", ttl],
                             env=dict(os.environ, POLLCAP_JWT_SECRET=SECRET),
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server_factory():
    started = []

    def make(*args, **env):
        s = Server(list(args), {k: str(v) for k, v in env.items()})
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(server_factory):
    return server_factory()
