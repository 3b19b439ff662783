"""End-to-end: `examples/echo.rs` (an echo server on the library) against
the real Python `websockets` 17 client: text and binary messages back as
sent, a closing handshake, then SIGTERM drains it and it exits 0. The
binary is the one `cargo test --release` built (`POLLCAP_EXAMPLES`, by
default target/release/examples); built here if absent. Every wait is
bounded."""
import asyncio
import os
import queue
import re
import signal
import subprocess
import threading

import websockets

from pollcap_server import ROOT

EXAMPLES = os.environ.get("POLLCAP_EXAMPLES", os.path.join(ROOT, "target", "release", "examples"))


def echo_binary():
    path = os.path.join(EXAMPLES, "echo")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--release", "--example", "echo"],
                       cwd=ROOT, check=True, timeout=900)
    return path


class Example:
    """The example's process and its standard output, a line at a time."""

    def __init__(self, args):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("POLLCAP_", "WEBSOCKET_")) and k != "PORT"}
        self.proc = subprocess.Popen([echo_binary(), *args], env=env,
                                     stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # EOF

    def wait_for(self, pattern, timeout=20):
        """The first match of `pattern` in a printed line (within `timeout`
        seconds for each line)."""
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, "exited before printing it:\n" + "\n".join(self.seen)
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def test_echo_example_answers_websockets_and_drains_on_sigterm():
    echo = Example(["0"])
    try:
        url = echo.wait_for(r"listening on (ws://\S+)").group(1)

        async def exchange():
            async with websockets.connect(url, subprotocols=["echo"], open_timeout=10) as ws:
                assert ws.subprotocol == "echo"
                for msg in ["hello pollcap", "ünïcode ✓", b"\x00\x01\xfe\xff", "x" * 100_000]:
                    await ws.send(msg)
                    assert await asyncio.wait_for(ws.recv(), timeout=10) == msg
            return ws.close_code

        assert asyncio.run(asyncio.wait_for(exchange(), timeout=30)) == 1000
        echo.proc.send_signal(signal.SIGTERM)  # the graceful drain
        echo.wait_for(r"^echo: drained$")
        assert echo.proc.wait(timeout=10) == 0
    finally:
        echo.stop()
