"""permessage-deflate against the real binary (issue 20): Python
`websockets` with its default compression negotiates the extension, runs
agent_chat and receives fewer bytes than without it; the takeover mode
keeps a run's context; websocat (which offers nothing) is served
uncompressed; a deflate bomb closes 1009 while the server's memory stays
within twice --max-message. Every wait is bounded."""
import asyncio
import json
import os
import socket
import struct
import zlib

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from test_agent_chat import check_run, connect, one_run, run
from test_hostile import host_port, metrics, read_frame

# What pollcap answers Python's default offer (permessage-deflate;
# client_max_window_bits).
SHARED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TAKEOVER = "permessage-deflate; client_no_context_takeover"
# A prompt long enough for a run of about 30 events, most of them deltas.
PROMPT = ("Explain how pollcap keeps every wait bounded: the reactor caps the OS poller wait, "
          "every connection phase has a deadline, and runs outlive a lost connection so that a "
          "client can resume them. Summarise the trade-offs of the soft timers against the hard "
          "ones, and say what happens to a heartbeat when ten thousand connections are idle "
          "behind a load balancer that drops silent peers after sixty seconds.")


class Counting(ClientConnection):
    """A client connection that counts the bytes it receives from the socket."""
    received = 0

    def data_received(self, data):
        self.received += len(data)
        super().data_received(data)


async def run_bytes(server, **kw):
    """One agent_chat run: (negotiated extension, bytes received for it)."""
    async with connect(server, create_connection=Counting, **kw) as ws:
        before = ws.received
        events = await one_run(ws, PROMPT)
        check_run(events, PROMPT)
        return ws.response.headers.get("Sec-WebSocket-Extensions"), ws.received - before


def test_python_default_compression_negotiates_and_saves_bytes(server_factory):
    server = server_factory()
    ext, compressed = run(run_bytes(server))
    ext_off, plain = run(run_bytes(server, compression=None))
    assert ext == SHARED
    assert ext_off is None
    print(f"agent_chat run: {compressed} bytes compressed, {plain} uncompressed "
          f"({compressed / plain:.2f})")
    assert compressed < plain
    m = metrics(server)
    assert m["pollcap_deflate_negotiated_total"] == 1
    assert m['pollcap_deflate_messages_total{direction="out"}'] >= 1


def test_the_takeover_mode_keeps_the_run_context(server_factory):
    server = server_factory("--deflate", "takeover")
    ext, compressed = run(run_bytes(server))
    _, plain = run(run_bytes(server, compression=None))
    assert ext == TAKEOVER
    print(f"agent_chat run, takeover: {compressed} bytes compressed, {plain} uncompressed "
          f"({compressed / plain:.2f})")
    assert compressed < 0.6 * plain


def test_websocat_offers_nothing_and_is_served_uncompressed(server):
    from test_websocat import websocat, lines_until
    import subprocess
    msg = json.dumps({"type": "user_message", "text": PROMPT, "thread_id": "w"})
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
    check_run([json.loads(l) for l in lines], PROMPT)
    m = metrics(server)
    assert m["pollcap_deflate_negotiated_total"] == 0
    assert m["pollcap_deflate_declined_total"] == 0


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key}")


def deflate_bomb(size):
    """Raw deflate data (final tail removed) that inflates to `size` zeros:
    level 9 reaches deflate's ceiling of about 1030:1."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    out = [c.compress(chunk) for _ in range(size >> 20)]
    out.append(c.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(out)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def masked(b0, payload):
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    m = (mask * (n // 4 + 1))[:n]
    return head + mask + bytes(a ^ b for a, b in zip(payload, m))


def offer_upgrade(server):
    s = socket.create_connection(host_port(server), timeout=10)
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Extensions: permessage-deflate\r\n"
               f"Sec-WebSocket-Protocol: agent_chat\r\n"
               f"Authorization: Bearer {server.token()}\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        assert b, head
        head += b
    assert head.startswith(b"HTTP/1.1 101 ") and b"permessage-deflate" in head, head
    return s


@pytest.mark.parametrize("inflated_mib", [100, 1024])
def test_a_deflate_bomb_closes_1009_within_twice_max_message(server_factory, inflated_mib):
    """Deflate cannot beat about 1030:1, so a 100 KiB frame inflates to
    about 100 MiB, and 1 GiB takes a frame of about 1 MiB (still under the
    default --max-frame and --max-message of 1 MiB)."""
    max_message = 1 << 20
    server = server_factory()
    bomb = deflate_bomb(inflated_mib << 20)
    assert len(bomb) <= max_message, len(bomb)
    pid = server.proc.pid
    s = offer_upgrade(server)
    before = status(pid, "VmRSS")
    s.sendall(masked(0xC2, bomb))
    while True:
        f = read_frame(s)
        assert f is not None, "closed without a Close frame"
        op, payload = f
        if op == 0x8:
            break
    code = struct.unpack(">H", payload[:2])[0]
    assert (code, payload[2:]) == (1009, b"message too big")
    peak = status(pid, "VmHWM") - before
    print(f"{len(bomb)} bytes inflating to {inflated_mib} MiB: closed 1009, "
          f"peak RSS +{peak / 2**20:.2f} MiB")
    # Under twice --max-message: the output stops one byte past it. The
    # 1 MiB frame of the 1 GiB bomb is itself held while it inflates.
    limit = 2 * max_message + (len(bomb) if len(bomb) > max_message // 2 else 0)
    assert peak < limit, peak
    assert metrics(server)['pollcap_close_frames_sent_total{code="1009"}'] == 1
    assert metrics(server)['pollcap_deflate_refused_total{reason="too_big"}'] == 1
    assert any("compressed message refused" in l for l in server.log)
