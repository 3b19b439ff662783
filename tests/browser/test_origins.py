"""Allowed origins in a real browser (SPEC §4 "The front door"): outside the
`local` profile only the server's own origin may open a WebSocket, so the
page pollcap serves connects, and a page served from another loopback port
— another origin, the cross-site WebSocket hijacking case — is refused
with 403 before anything else is looked at."""
import http.server
import re
import threading
import urllib.request

import pytest
from selenium.webdriver.support.ui import WebDriverWait

from test_page import wait_status

OTHER_PAGE = """<!doctype html><meta charset="utf-8"><title>other origin</title>
<script>
window.outcome = "pending";
const ws = new WebSocket("ws://%s/ws", ["agent_chat"]);
ws.onopen = () => { window.outcome = "open"; ws.close(); };
ws.onclose = (e) => { if (window.outcome === "pending") window.outcome = "closed " + e.code; };
</script>"""


@pytest.fixture
def other_site(server_factory):
    """A page on another loopback port that opens a socket to `target`."""
    servers = []

    def make(target):
        body = (OTHER_PAGE % target).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def refusals(server):
    text = urllib.request.urlopen(server.http + "/metrics", timeout=5).read().decode()
    m = re.search(r'^pollcap_front_door_refusals_total\{reason="origin"\} (\d+)', text, re.M)
    return int(m.group(1))


def test_the_servers_own_page_connects_and_another_origin_is_refused(browser, server_factory, other_site):
    s = server_factory(ENVIRONMENT="testing")
    browser.get(s.http + "/")
    wait_status(browser, "open", "connected")
    assert refusals(s) == 0
    browser.get(other_site(s.addr))
    outcome = WebDriverWait(browser, 10, poll_frequency=0.05).until(
        lambda d: (o := d.execute_script("return window.outcome")) != "pending" and o)
    assert outcome == "closed 1006", outcome
    assert refusals(s) == 1
    assert any(" 403 " in l or "status=403" in l or "(403)" in l for l in s.log), "".join(s.log[-20:])
