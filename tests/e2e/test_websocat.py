"""websocat, a second third-party client beside Python `websockets`,
against the real binary: one agent_chat run, and one refused subprotocol.
scripts/test installs it (`cargo install websocat --root .cache/websocat`).
Every wait is bounded."""
import json
import os
import queue
import subprocess
import threading
import time

import pytest

from conftest import ROOT
from pollcap_server import metrics
from test_agent_chat import check_run

WEBSOCAT = os.environ.get("WEBSOCAT", os.path.join(ROOT, ".cache", "websocat", "bin", "websocat"))


def websocat():
    if not os.access(WEBSOCAT, os.X_OK):
        pytest.fail(f"websocat not found at {WEBSOCAT}: scripts/test installs it "
                    "(cargo install websocat --locked --root .cache/websocat)", pytrace=False)
    return WEBSOCAT


def lines_until(proc, done, timeout):
    """stdout lines of `proc` until `done(line)`, within `timeout` seconds."""
    q = queue.Queue()
    threading.Thread(target=lambda: [q.put(l) for l in proc.stdout] + [q.put(None)],
                     daemon=True).start()
    deadline = time.monotonic() + timeout
    out = []
    while True:
        try:
            line = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"timed out after {timeout} s; got {out}")
        assert line is not None, f"websocat ended early: {out}; {proc.stderr.read()}"
        out.append(line)
        if done(line):
            return out


def test_websocat_runs_agent_chat(server):
    msg = json.dumps({"type": "user_message", "text": "hello from websocat", "thread_id": "w1"})
    # -n: keep reading once stdin ends (without it websocat sends a Close at
    # EOF, which ends the connection and cancels the run). -H must follow
    # the URL.
    proc = subprocess.Popen(
        [websocat(), "-n", "--protocol", "agent_chat", server.url,
         "-H", f"Authorization: Bearer {server.token()}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(msg + "\n")
        proc.stdin.close()
        lines = lines_until(proc, lambda l: '"agent_completed"' in l or '"error"' in l, 15)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    check_run([json.loads(l) for l in lines], "hello from websocat")


def test_websocat_is_refused_an_unknown_subprotocol(server):
    key = 'pollcap_http_responses_total{status="400"}'
    before = metrics(server)[key]
    out = subprocess.run(
        [websocat(), "--protocol", "chat.v2", server.url,
         "-H", f"Authorization: Bearer {server.token()}"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    assert out.returncode != 0, out
    assert "400" in out.stderr, out.stderr
    assert metrics(server)[key] == before + 1
