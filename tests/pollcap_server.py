"""The real `pollcap serve` for the Python suites (tests/e2e, tests/browser):
started on 127.0.0.1:0, its address read from its start-up line, its log
kept, stopped by the fixture that made it. Beside it, what every suite
asks of a server: /metrics and /health read one way, bounded waits
(`eventually`, `wait_metric`) and a free loopback port. Every wait is
bounded."""
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("POLLCAP_BIN", os.path.join(ROOT, "target", "release", "pollcap"))


class Server:
    """`pollcap serve --listen 127.0.0.1:0 ARGS`, with only the POLLCAP_
    settings given here (none of the caller's environment leaks in), and
    authentication by `secret` when one is given."""

    def __init__(self, args=(), env=None, secret=None):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("POLLCAP_")}
        full_env["RUST_LOG"] = "info"
        full_env.update(env or {})
        if secret:
            full_env["POLLCAP_JWT_SECRET"] = secret
        self.secret = secret
        self.proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", *args],
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
        self.http = f"http://{addr}"
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def token(self, sub="e2e", ttl="1h"):
        """A token signed with this server's secret (`pollcap token`)."""
        out = subprocess.run([BIN, "token", "--sub", sub, "--ttl", ttl],
                             env=dict(os.environ, POLLCAP_JWT_SECRET=self.secret),
                             capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip()

    def terminate(self):
        """SIGTERM: the graceful drain, without waiting for it."""
        self.proc.send_signal(signal.SIGTERM)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def factory(make):
    """A fixture body: yields `make` (which builds a Server) and stops every
    server it made afterwards."""
    started = []

    def tracked(*args, **kwargs):
        s = make(*args, **kwargs)
        started.append(s)
        return s

    yield tracked
    for s in started:
        s.stop()


def free_port():
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(target, path, context=None):
    """GET `path` of `target` (a Server, anything with `.http`, or a base
    URL such as https://localhost:PORT with an ssl `context`): the body."""
    base = target if isinstance(target, str) else target.http
    with urllib.request.urlopen(base + path, timeout=5, context=context) as r:
        return r.read().decode()


def metrics(target, context=None):
    """Every sample of /metrics, `name{labels}` -> value."""
    out = {}
    for line in _get(target, "/metrics", context).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def health(target, context=None):
    """/health as a dict."""
    return json.loads(_get(target, "/health", context))


def _pauses(limit):
    """Pauses between polls, growing from 5 ms to 50 ms, until `limit`
    seconds have passed."""
    deadline, pause = time.monotonic() + limit, 0.005
    while (left := deadline - time.monotonic()) > 0:
        yield min(pause, left)
        pause = min(pause * 2, 0.05)


def eventually(limit, check, what="the condition"):
    """Calls `check()` until it returns something truthy, for at most
    `limit` seconds; returns that value, or fails naming `what`."""
    for pause in _pauses(limit):
        if got := check():
            return got
        time.sleep(pause)
    if got := check():
        return got
    raise AssertionError(f"{what}: not within {limit} s")


async def eventually_async(limit, check, what="the condition"):
    """`eventually` for a coroutine function `check`, in an event loop."""
    for pause in _pauses(limit):
        if got := await check():
            return got
        await asyncio.sleep(pause)
    if got := await check():
        return got
    raise AssertionError(f"{what}: not within {limit} s")


def wait_metric(target, key, want, limit=10, context=None):
    """Polls /metrics until sample `key` is there and reaches `want` (a
    number: at least that; or a predicate), for at most `limit` seconds;
    returns its value, or fails naming the sample and its last value."""
    ok = want if callable(want) else (lambda v: v >= want)
    last = [None]

    def check():
        last[0] = metrics(target, context).get(key)
        return last[0] is not None and ok(last[0])
    try:
        eventually(limit, check, key)
    except AssertionError:
        expected = "a value the test waits for" if callable(want) else f">= {want}"
        raise AssertionError(f"{key} = {last[0]} after {limit} s, expected {expected}") from None
    return last[0]
