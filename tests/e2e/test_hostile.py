"""Hostile load over loopback against the real binary (issue 11): slowloris
and silent floods while healthy agent_chat clients are measured, a flood
over --max-connections, a fragmented message that never ends, a ping
flood from a client that never reads, 1-byte frames, and requests
pipelined behind an error. Each case checks its status or close code, its
metric in /metrics, and that the server still serves afterwards. Every
wait is bounded; the whole module takes about half a minute."""
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hostile_peers import raise_fd_limit
from pollcap_server import eventually_async, health, metrics, wait_metric
from test_agent_chat import check_run, connect, one_run, run

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def setup_module():
    # Hundreds of sockets in this process.
    raise_fd_limit()


def still_serves(server):
    """/health answers 200 and a full agent_chat run completes."""
    with urllib.request.urlopen(f"{server.http}/health", timeout=5) as r:
        assert r.status == 200

    async def go():
        async with connect(server) as ws:
            check_run(await one_run(ws, "still here", pacing_ms=0), "still here")
    run(go())
    assert server.proc.poll() is None, "the server is running"


def rss(server):
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def host_port(server):
    host, port = server.addr.rsplit(":", 1)
    return host, int(port)


def raw_upgrade(server, token):
    """A raw socket after a successful agent_chat upgrade."""
    s = socket.create_connection(host_port(server), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
               f"Sec-WebSocket-Protocol: agent_chat\r\nAuthorization: Bearer {token}\r\n\r\n")
              .encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        assert b, f"closed during the handshake: {head!r}"
        head += b
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


def frame(opcode, payload, fin=True):
    """A masked client frame."""
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(s):
    """One server frame: (opcode, payload), or None at EOF."""
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf
    h = exact(2)
    if h is None:
        return None
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exact(8))[0]
    return h[0] & 0x0F, exact(n)


def peers(mode, server, *args):
    """Starts hostile_peers.py in its own process; returns it once READY."""
    host, port = host_port(server)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "hostile_peers.py"), mode, host,
                             str(port), *map(str, args)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the helper exits at its own limit
    assert line.strip() == "READY", line
    return proc


def peers_report(proc):
    out, _ = proc.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


async def run_latencies(server, seconds, clients=4):
    """Complete agent_chat runs (pacing 0) from `clients` connections for
    `seconds`: the latency of each, send to agent_completed, in seconds."""
    lat = []

    async def client(i):
        async with connect(server) as ws:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.perf_counter()
                events = await one_run(ws, f"healthy {i}", pacing_ms=0)
                lat.append(time.perf_counter() - t0)
                check_run(events, f"healthy {i}")
    await asyncio.gather(*(client(i) for i in range(clients)))
    return lat


def p99(samples):
    s = sorted(samples)
    return s[max(0, int(len(s) * 0.99) - 1)]


def test_1000_slowloris_clients_leave_healthy_clients_p99_within_2x(server_factory):
    # The handshake deadline outlasts the loaded measurement.
    server = server_factory(WEBSOCKET_HANDSHAKE_TIMEOUT="8")
    run(run_latencies(server, 0.5))  # warm-up: pool threads, first connections
    unloaded = run(run_latencies(server, 3))
    loris = peers("slowloris", server, 1000, 1.0, 30)
    loaded = run(run_latencies(server, 3))
    report = peers_report(loris)
    base, under = p99(unloaded), p99(loaded)
    print(f"p99 unloaded {base * 1e3:.2f} ms ({len(unloaded)} runs), "
          f"with 1000 slowloris {under * 1e3:.2f} ms ({len(loaded)} runs)")
    # 2x, plus 5 ms: millisecond p99s on a shared 2-core machine jitter by
    # a few ms from scheduling alone. A reactor held up by the slowloris
    # clients would add seconds (their deadline), not milliseconds.
    assert under <= 2 * base + 0.005, (base, under)
    assert len(loaded) >= len(unloaded) / 3, "throughput did not collapse"
    # Every slowloris client got its 408, at the handshake deadline.
    assert report["statuses"] == {"408": 1000}, report
    assert report["errors"] == {}, report
    assert 8 - 0.1 <= report["first_end"] and report["last_end"] <= 8 + 3, report
    m = metrics(server)
    assert m['pollcap_timeouts_total{phase="handshake"}'] == 1000
    assert m['pollcap_http_responses_total{status="408"}'] == 1000
    still_serves(server)


def test_1000_silent_connections_are_dropped_at_the_connect_deadline(server):
    silent = peers("silent", server, 1000, 30)

    async def during():  # a healthy client meanwhile
        async with connect(server) as ws:
            check_run(await one_run(ws, "beside the silent", pacing_ms=0), "beside the silent")
    run(during())
    report = peers_report(silent)
    # The local profile's connect deadline is 2 s; dropped without a byte.
    assert report["statuses"] == {"none": 1000}, report
    assert report["errors"] == {}, report
    assert 2 - 0.1 <= report["first_end"] and report["last_end"] <= 2 + 3, report
    assert metrics(server)['pollcap_timeouts_total{phase="connect"}'] == 1000
    still_serves(server)


def test_a_flood_over_max_connections_gets_503_with_retry_after(server_factory):
    server = server_factory("--max-connections", "50")

    async def go():
        token = server.token()
        held = [await connect(server, token=token) for _ in range(50)]

        async def refused():
            try:
                async with connect(server, token=token):
                    return 101, None
            except InvalidStatus as e:
                return e.response.status_code, e.response.headers.get("Retry-After")
        answers = await asyncio.gather(*(refused() for _ in range(300)))
        assert all(status == 503 for status, _ in answers), answers
        assert all(r is not None and int(r) >= 1 for _, r in answers), answers
        h = health(server)
        assert h["connections"]["open"] == 50
        assert h["status"] == "degraded", "at the limit"
        for ws in held[:5]:
            await ws.close()

        # Slots free again: a new client gets in.
        async def admitted():
            return (await refused())[0] == 101
        await eventually_async(5, admitted, "a slot is freed")
        for ws in held[5:]:
            await ws.close()
    run(go())
    m = metrics(server)
    assert m['pollcap_http_responses_total{status="503"}'] >= 300
    assert m["pollcap_breaker_opened_total"] == 0, "capacity is not a fault"
    still_serves(server)


def test_a_fragmented_message_that_never_ends_is_closed_1009_at_the_limit(server_factory):
    limit = 65536
    server = server_factory("--max-message", str(limit))
    sent = 0

    async def fragments():
        nonlocal sent
        while True:  # never the final fragment
            sent += 4096
            yield "x" * 4096
            await asyncio.sleep(0)

    async def go():
        async with connect(server) as ws:
            with pytest.raises(ConnectionClosed) as e:
                await ws.send(fragments())
                await asyncio.wait_for(ws.recv(), timeout=10)
            return e.value.rcvd
    rcvd = run(go())
    assert rcvd is not None and rcvd.code == 1009, rcvd
    assert rcvd.reason == "message too big"
    assert sent >= limit, "not closed before the limit"
    assert metrics(server)['pollcap_close_frames_sent_total{code="1009"}'] == 1
    still_serves(server)


def test_a_ping_flood_from_a_client_that_never_reads_is_closed_1008(server_factory):
    # Room for the test to start reading before the server gives up.
    server = server_factory("--max-message", "65536", "--max-outbound", "1048576",
                            WEBSOCKET_CLOSE_TIMEOUT="5")
    s = raw_upgrade(server, server.token())
    before = rss(server)
    batch = frame(0x9, b"p" * 125) * 100
    stop = threading.Event()
    pinged = [0]

    def flood():  # pings until the server stops taking them; never reads
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                s.sendall(batch)
                pinged[0] += 100
            except socket.timeout:
                pass
            except OSError:
                return
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    wait_metric(server, 'pollcap_close_frames_sent_total{code="1008"}', 1, limit=20)
    peak = rss(server)
    stop.set()
    t.join(timeout=5)
    # Reading now: the queued Pongs, then the Close the server queued.
    s.settimeout(10)
    pongs, close = 0, None
    while True:
        f = read_frame(s)
        if f is None:
            break
        if f[0] == 0xA:
            pongs += 1
        elif f[0] == 0x8:
            close = (struct.unpack(">H", f[1][:2])[0], f[1][2:].decode())
            break
    s.close()
    assert close == (1008, "backpressure"), (close, pongs, pinged[0])
    # Memory stayed bounded: the outbound limit (1 MiB) plus change, not
    # one Pong per Ping sent.
    print(f"{pinged[0]} pings, {pongs} pongs read, RSS +{(peak - before) / 2**20:.1f} MiB")
    assert peak - before < 16 * 2**20, (before, peak)
    still_serves(server)


def test_a_message_in_1_byte_frames_written_byte_by_byte_is_answered(server):
    s = raw_upgrade(server, server.token())
    text = json.dumps({"type": "user_message", "text": "one byte at a time", "pacing_ms": 0})
    data = text.encode()
    frames = [frame(0x1 if i == 0 else 0x0, data[i:i + 1], fin=i == len(data) - 1)
              for i in range(len(data))]
    for f in frames:
        for b in f:  # each frame split across writes too
            s.sendall(bytes([b]))
    events = []
    s.settimeout(10)
    while not events or events[-1]["type"] not in ("agent_completed", "error"):
        op, payload = read_frame(s)
        assert op == 0x1, (op, payload)
        events.append(json.loads(payload))
    check_run(events, "one byte at a time")
    s.sendall(frame(0x8, struct.pack(">H", 1000)))
    assert read_frame(s)[0] == 0x8
    s.close()
    m = metrics(server)
    assert m["pollcap_handler_runs_total"] == 1
    assert m["pollcap_upgrades_total"] == 1
    still_serves(server)


def test_requests_pipelined_after_an_error_are_discarded_not_reset(server):
    s = socket.create_connection(host_port(server), timeout=10)
    pipeline = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    while len(pipeline) < 256 * 1024:  # far more than one socket read
        pipeline += b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    s.sendall(pipeline)
    out = b""
    while True:
        chunk = s.recv(65536)  # a reset would raise here
        if not chunk:
            break
        out += chunk
    s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 "), out
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.startswith(b"Content-Length")))
    assert len(body) == length and out.count(b"HTTP/1.1 ") == 1, out
    assert metrics(server)['pollcap_http_responses_total{status="404"}'] == 1
    wait_metric(server, 'pollcap_lingering_closes_total{end="peer_closed"}', 1)
    assert metrics(server)["pollcap_linger_discarded_bytes_total"] > 100_000
    still_serves(server)
