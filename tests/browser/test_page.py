"""The built-in page (`GET /`) in headless Chromium against the release
binary on loopback: a run renders all five event types in order with the
final answer; the health panel is live; a wrong token is named, the right
one works; a network blip mid-run is resumed with no delta lost or
repeated; 1001 on shutdown is announced; nothing loads from other hosts.
Screenshots land in target/browser/."""
import asyncio
import os
import re
import ssl
import subprocess
import time
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import SHOTS
from pollcap_server import health, metrics

TYPES = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


def wait(driver, what, cond, timeout=10):
    """Polls `cond(driver)` until it is truthy (returned), or fails naming `what`."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond)
    except Exception as e:  # TimeoutException carries no context of its own
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(f"timed out waiting for {what}; #status: {status!r}") from e


def status(driver):
    s = driver.find_element(By.ID, "status")
    return s.get_attribute("data-state"), s.text


def wait_status(driver, state, contains="", timeout=10):
    return wait(driver, f"#status {state} {contains!r}",
                lambda d: status(d)[0] == state and contains in status(d)[1] and status(d), timeout)


def events(driver):
    """Every element of #transcript with its data-type, in document order."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#transcript [data-type]')].map(e => ({
            type: e.dataset.type, seq: e.dataset.seq ? Number(e.dataset.seq) : null,
            text: e.textContent}));""")


def timings(driver):
    return driver.execute_script(
        "return Object.assign({}, [...document.querySelectorAll('#transcript .timings')].pop().dataset)")


def send(driver, text):
    box = driver.find_element(By.ID, "message")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def completed(driver):
    return any(e["type"] in ("agent_completed", "error") for e in events(driver))


def check_run(evs, text):
    """One run in the transcript: order, seq, final = the streamed deltas."""
    types = [e["type"] for e in evs]
    assert types[0] == "user_message", types
    run = [e for e in evs if e["type"] != "user_message"]
    kinds = [e["type"] for e in run]
    assert kinds[0] == "agent_started", kinds
    assert kinds[-3:] == ["tool_executing", "tool_completed", "agent_completed"], kinds
    assert set(kinds[1:-3]) == {"agent_thinking"} and len(kinds) >= 6, kinds
    seqs = [e["seq"] for e in run]
    assert seqs == list(range(1, len(run) + 1)), f"seq must be 1..N exactly once each: {seqs}"
    deltas = "".join(e["text"] for e in run if e["type"] == "agent_thinking")
    final = run[-1]["text"]
    assert final.startswith("final answer"), final
    assert final[len("final answer"):] == deltas, (final, deltas)
    assert deltas.endswith("Echo: " + text)
    return run


def shot(driver, name):
    path = os.path.join(SHOTS, name)
    assert driver.save_screenshot(path), path


def test_a_run_renders_every_event_type_in_order(browser, server_factory):
    srv = server_factory()
    browser.get(srv.http + "/")
    wait_status(browser, "open", "connected")
    # Idle: connected, health panel filled in and its chart started.
    wait(browser, "two health samples in the chart",
         lambda d: len(d.find_element(By.ID, "line-conns").get_attribute("points").split()) >= 2)
    shot(browser, "idle.png")

    # 200 ms between events (the page's pace control → pacing_ms): slow
    # enough to catch the stream in the middle.
    Select(browser.find_element(By.ID, "pace")).select_by_value("200")
    text = "Show me how a streamed answer renders"
    send(browser, text)
    assert browser.find_element(By.ID, "send").get_attribute("disabled") is not None
    wait(browser, "three deltas on screen",
         lambda d: sum(e["type"] == "agent_thinking" for e in events(d)) >= 3)
    assert not completed(browser), "the run should still be streaming"
    shot(browser, "mid-stream.png")

    wait(browser, "agent_completed", completed, timeout=15)
    run = check_run(events(browser), text)
    assert [t for t in TYPES if t in {e["type"] for e in run}] == TYPES
    final = browser.find_element(By.CSS_SELECTOR, '#transcript [data-type="agent_completed"]')
    assert final.is_displayed() and "Echo: " + text in final.text
    t = timings(browser)
    assert t["dups"] == "0" and t["missing"] == "0" and t["resumes"] == "0", t
    open_ms, first_ms, done_ms = (int(t[k]) for k in ("openMs", "firstMs", "doneMs"))
    assert 0 <= open_ms < 5000 and 0 <= first_ms <= done_ms < 15000, t
    # Paced at 200 ms, the run takes at least (events - 1) pauses.
    assert done_ms >= 200 * (len(run) - 2), (done_ms, len(run))
    assert browser.find_element(By.ID, "send").get_attribute("disabled") is None
    shot(browser, "completed.png")
    # The same page in a dark colour scheme.
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        assert browser.execute_script("return matchMedia('(prefers-color-scheme: dark)').matches")
        shot(browser, "completed-dark.png")
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_the_page_socket_negotiates_permessage_deflate_and_a_run_completes(browser, server_factory):
    """Chromium offers permessage-deflate on every WebSocket; the page's own
    socket (opened from the server's origin) reports what was agreed in
    WebSocket.extensions, which the page keeps on #status."""
    srv = server_factory()
    browser.get(srv.http + "/")
    wait_status(browser, "open", "compressed")
    ext = browser.find_element(By.ID, "status").get_attribute("data-extensions")
    assert ext == "permessage-deflate; server_no_context_takeover; client_no_context_takeover", ext
    # A long message (compressed by Chromium, over the threshold) and a
    # long final answer (compressed by the server).
    text = "compress this " * 60
    send(browser, text)
    wait(browser, "agent_completed", completed, timeout=15)
    check_run(events(browser), text.strip())
    m = {}
    for line in urllib.request.urlopen(srv.http + "/metrics", timeout=5).read().decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    assert m["pollcap_deflate_negotiated_total"] >= 1, m
    assert m['pollcap_deflate_messages_total{direction="in"}'] >= 1
    assert m['pollcap_deflate_messages_total{direction="out"}'] >= 1
    # With compression off the page still works, uncompressed.
    off = server_factory(POLLCAP_DEFLATE="off")
    browser.get(off.http + "/")
    wait_status(browser, "open", "connected")
    assert browser.find_element(By.ID, "status").get_attribute("data-extensions") == ""
    assert "compressed" not in status(browser)[1]


def health_value(driver, key):
    return driver.find_element(By.CSS_SELECTOR, f'#health [data-k="{key}"]').text


def test_health_panel_shows_live_figures(browser, server_factory):
    import websockets

    srv = server_factory()
    browser.get(srv.http + "/")
    wait_status(browser, "open")
    # The page's own WebSocket is the one open connection.
    wait(browser, "1 open connection", lambda d: health_value(d, "connections.open") == "1")
    assert health_value(browser, "status") == "healthy"
    assert health_value(browser, "breaker.state") == "closed"
    assert re.fullmatch(r"[\d.]+ ms", health_value(browser, "handshake.p99")), \
        health_value(browser, "handshake.p99")
    phases = browser.execute_script(
        "return [...document.querySelectorAll('#timeouts tr')].map(r => r.dataset.row)")
    assert phases == ["connect", "handshake", "ping", "heartbeat", "stale", "lifetime", "close",
                      "execution", "linger", "agent_connect", "agent_response", "agent_idle"], phases
    causes = browser.execute_script(
        "return [...document.querySelectorAll('#wakeups tr')].map(r => r.dataset.row)")
    assert {"by_io", "by_waker", "by_deadline", "by_cap"} <= set(causes), causes

    # Live: two more connections from outside show up, then go away.
    async def hold_two():
        url = f"ws://{srv.addr}/ws"
        async with websockets.connect(url, subprotocols=["agent_chat"], open_timeout=5), \
                websockets.connect(url, subprotocols=["agent_chat"], open_timeout=5):
            await asyncio.to_thread(wait, browser, "3 open connections",
                                    lambda d: health_value(d, "connections.open") == "3")
    asyncio.run(asyncio.wait_for(hold_two(), timeout=20))
    wait(browser, "back to 1 open connection", lambda d: health_value(d, "connections.open") == "1")
    # The chart kept sampling: wakeups/s has a figure and the line has points.
    points = browser.find_element(By.ID, "line-wakeups").get_attribute("points").split()
    assert len(points) >= 3, points
    assert float(health_value(browser, "rate.wakeups")) >= 0


def test_wrong_token_is_named_and_the_right_token_completes(browser, server_factory):
    srv = server_factory(auth=True)
    browser.get(srv.http + "/")
    wait_status(browser, "idle", "authentication is on")

    token = browser.find_element(By.ID, "token")
    token.send_keys("not-a-real-token")
    send(browser, "first try")
    _, text = wait_status(browser, "error", "401: token rejected")
    assert "unknown token" in text, text
    assert "not sent: 401: token rejected" in \
        browser.find_element(By.CSS_SELECTOR, "#transcript .run").text

    token.clear()
    token.send_keys(srv.token())
    send(browser, "second try")
    wait_status(browser, "open", "connected")
    wait(browser, "agent_completed", lambda d: any(
        e["type"] == "agent_completed" for e in events(d)), timeout=15)
    evs = events(browser)
    second = evs[[i for i, e in enumerate(evs) if e["type"] == "user_message"][1]:]
    check_run(second, "second try")
    assert health(srv)["auth_failures"] == 1


def test_network_blip_mid_run_reconnects_and_resumes(browser, server_factory, proxy_factory):
    srv = server_factory(POLLCAP_PACING_MS=150)
    proxy = proxy_factory(srv.addr, cut_after=3)
    browser.get(proxy.http + "/")
    wait_status(browser, "open", "connected")
    text = "a run that survives a dropped connection"
    send(browser, text)
    wait(browser, "the cut and the reconnect",
         lambda d: proxy.cuts == 1 and proxy.ws_connections >= 2, timeout=15)
    wait(browser, "agent_completed after the resume", completed, timeout=20)
    evs = events(browser)
    resumes = [e for e in evs if e["type"] == "resume"]
    assert len(resumes) == 1, resumes
    run = check_run([e for e in evs if e["type"] != "resume"], text)
    # The cut came after the 3rd delta (seq 4): the page asked for what
    # followed the last event that went through the first connection.
    after = browser.execute_script(
        "return Number(document.querySelector('#transcript [data-type=resume]').dataset.afterSeq)")
    assert after == proxy.forwarded >= 4, (after, proxy.forwarded)
    t = timings(browser)
    assert (t["dups"], t["missing"], t["resumes"]) == ("0", "0", "1"), t
    assert len([e for e in run if e["type"] == "agent_thinking"]) >= 4
    wait(browser, "the resume in the health panel",
         lambda d: health_value(d, "resumes").startswith("1 served"), timeout=5)
    shot(browser, "resumed.png")


def test_shutdown_close_1001_is_announced(browser, server_factory):
    srv = server_factory()
    browser.get(srv.http + "/")
    wait_status(browser, "open")
    srv.terminate()
    wait(browser, "the 1001 announcement",
         lambda d: "server shutting down, reconnecting" in status(d)[1], timeout=10)


def test_the_page_loads_nothing_from_other_hosts(browser, server_factory, proxy_factory):
    srv = server_factory()
    with urllib.request.urlopen(srv.http + "/", timeout=5) as r:
        csp = r.headers["Content-Security-Policy"]
        html = r.read().decode()
    assert csp.startswith("default-src 'none';") and "unsafe" not in csp, csp
    assert not re.search(r"https?://", html), "the served page names another host"

    browser.get_log("browser")  # drop what earlier tests left in the session's log
    browser.get(srv.http + "/")
    wait_status(browser, "open")
    wait(browser, "a health sample", lambda d: health_value(d, "connections.open") == "1")
    origin = browser.execute_script("return location.origin")
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(u.startswith(origin + "/") for u in resources), resources
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, f"console errors (a blocked style or script shows here): {severe}"

    # The policy is enforced, not only sent: an injected inline script does
    # not run, and a request to another origin that answers (the same
    # server behind a proxy on another port) is refused by the browser.
    other = proxy_factory(srv.addr, cut_after=10**9).http
    with urllib.request.urlopen(other + "/health", timeout=5) as r:
        assert r.status == 200  # reachable: only the policy can stop the page
    ran, fetched = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const s = document.createElement('script');
        s.textContent = 'window.__injected = true';
        document.body.append(s);
        fetch(arguments[0] + '/health', {mode: 'no-cors'}).then(
            () => done([!!window.__injected, true]), () => done([!!window.__injected, false]));""",
        other)
    assert (ran, fetched) == (False, False)
    refused = " ".join(e["message"] for e in browser.get_log("browser"))
    assert "inline script violates the following Content Security Policy" in refused, refused
    assert f"Connecting to '{other}/health' violates" in refused, refused


def test_the_page_runs_over_https_and_wss(browser, server_factory, tmp_path):
    """Behind TLS (what Cloud Run serves) the page is fetched over https://
    and opens its socket over wss:// (a ws:// socket from an https page
    would be blocked as mixed content): a run completes in full. The
    certificate is a self-signed one for localhost, which this test alone
    tells Chromium to accept."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    srv = server_factory(POLLCAP_TLS_CERT=cert, POLLCAP_TLS_KEY=key)
    port = srv.addr.rsplit(":", 1)[1]
    browser.execute_cdp_cmd("Security.setIgnoreCertificateErrors", {"ignore": True})
    try:
        browser.get(f"https://localhost:{port}/")
        assert browser.execute_script("return location.protocol") == "https:"
        wait_status(browser, "open", "connected")
        text = "over TLS end to end"
        send(browser, text)
        wait(browser, "agent_completed", completed, timeout=15)
        check_run(events(browser), text)
        # Every byte on this port is TLS (a plain-text request gets a 400),
        # so the 101 the server counted was a wss:// upgrade.
        ctx = ssl.create_default_context(cafile=str(cert))
        m = metrics(f"https://localhost:{port}", context=ctx)
        assert m['pollcap_http_responses_total{status="101"}'] >= 1, m
    finally:
        browser.execute_cdp_cmd("Security.setIgnoreCertificateErrors", {"ignore": False})
        browser.get("about:blank")
