"""The real `pollcap serve` for the Python suites (tests/e2e, tests/browser):
started on 127.0.0.1:0, its address read from its start-up line, its log
kept, stopped by the fixture that made it. Every wait is bounded."""
import os
import re
import signal
import subprocess
import threading

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
