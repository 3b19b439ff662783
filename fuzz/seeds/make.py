#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (fuzz/seeds/<target>/).

Each seed is a small program in the input format its target decodes (see
the target's source); the fuzzer mutates from here. Run it again after
changing a target's input format: `python3 fuzz/seeds/make.py`.

Files named `regress-*` are not made here: they are inputs that crashed a
target once (each has a regression test in the normal suite), kept so that
every run replays them first.
"""
import base64
import hashlib
import hmac
import json
import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def upgrade(path="/ws", extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\n{extra}\r\n")


def client_frame(first, payload, mask=b"\x01\x02\x03\x04"):
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# http_head: [limits, app+path, cut seed, cut size] + request bytes.
heads = {
    "upgrade": upgrade(),
    "upgrade-agent-chat": upgrade(extra="Sec-WebSocket-Protocol: agent_chat\r\n"),
    "upgrade-bearer-only": upgrade(extra="Sec-WebSocket-Protocol: bearer.abc.def.ghi\r\n"),
    "upgrade-auth": upgrade(extra="Authorization: Bearer tok\r\nSec-WebSocket-Protocol: x, agent_chat\r\n"),
    "upgrade-frame": upgrade() + "\x81\x82\x01\x02\x03\x04ik",
    "health": "GET /health?verbose=1 HTTP/1.1\r\nHost: fuzz\r\n\r\n",
    "head-health": "HEAD /health HTTP/1.1\r\nHost: fuzz\r\n\r\n",
    "no-host": "GET /metrics HTTP/1.1\r\n\r\n",
    "http10": "GET / HTTP/1.0\r\n\r\n",
    "post": "POST /ws HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 3\r\n\r\nabc",
    "bad-line": "\x01BAD / HTTP/1.1\r\n\r\n",
    "many-headers": "GET / HTTP/1.1\r\n" + "".join(f"X-{i}: y\r\n" for i in range(40)) + "\r\n",
    "bad-key": upgrade().replace(KEY, "short"),
    "version-8": upgrade().replace("Version: 13", "Version: 8"),
}
for i, (name, req) in enumerate(heads.items()):
    params = bytes([11, 0, 7 + i, 4 if i % 2 else 1])
    write("http_head", name, params + req.encode("latin-1"))

# conn: [profile, 6 limits, slack, jitter, worker, window(2), short reads]
# then ops (see fuzz_targets/conn.rs: 0 raw, 1 frame, 2 request, 3 readable,
# 4 writable, 5 both, 6 time, 7 peer reads, 8 EOF, 9 shutdown, 10 run
# event, 11 run end, 12 send, 13 decide, 14 transport, 15 timeout).
CONN_HEAD = bytes([0, 1, 1, 1, 1, 1, 2, 1, 128, 1, 0xFF, 0xFF, 0])
REQ, READ, TIME, PEER, FRAME = 2, 3, 6, 7, 1


def frame_op(first, sel, fill=0, burst=0):
    return bytes([FRAME, first, sel, fill, 1, 2, 3, 4, burst])


echo = bytes([REQ, 0, READ, 0, PEER, 0]) + frame_op(0x81, 5) + bytes([READ, 0, PEER, 0])
write("conn", "echo", CONN_HEAD + echo)
write("conn", "heartbeat", CONN_HEAD + echo + bytes([TIME, 0x80, PEER, 0, TIME, 0x80, PEER, 0, TIME, 0x80]))
write("conn", "run", CONN_HEAD + bytes([REQ, 1, READ, 0]) + frame_op(0x81, 30) +
      bytes([READ, 3, 10, 0, 0x40, 0, 10, 0, 0x10, 0, PEER, 0, 11, 0, 1, TIME, 0x80, PEER, 0]))
write("conn", "shutdown-with-run", CONN_HEAD + bytes([REQ, 0, READ, 0]) + frame_op(0x81, 3) +
      bytes([READ, 3, 9, TIME, 0x80, PEER, 0, TIME, 0x80]))
write("conn", "defer-then-timeout", CONN_HEAD + bytes([REQ, 4, READ, 7, TIME, 0x80, 13, 0, PEER, 0]))
write("conn", "big-frame", CONN_HEAD + bytes([REQ, 0, READ, 0]) + frame_op(0x82, 250) + bytes([READ, 0, PEER, 0]))
write("conn", "fragments", CONN_HEAD + bytes([REQ, 0, READ, 0]) + frame_op(0x01, 60) + frame_op(0x89, 2) +
      frame_op(0x80, 7) + bytes([READ, 0, PEER, 0]))
write("conn", "slow-reader", CONN_HEAD[:10] + bytes([0, 2, 0]) + bytes([REQ, 0, READ, 0, PEER, 0]) +
      bytes([12, 0xFF, 0xF0, 0]) * 6 + bytes([PEER, 4, 4, TIME, 0x80]))
write("conn", "trickled-head", CONN_HEAD + b"".join(bytes([0, 8]) + upgrade()[i:i + 8].encode()
                                                    + bytes([READ]) for i in range(0, len(upgrade()), 8)))
write("conn", "peer-close", CONN_HEAD + echo + frame_op(0x88, 2) + bytes([READ, PEER, 0]))
# permessage-deflate (request 12 offers it): a compressed text (RSV1, odd
# fill: the target compresses the payload), then RSV1 on a Ping. The last
# limits byte also picks the mode: 2 = on, threshold 0; 5 = takeover.
write("conn", "deflate-echo", CONN_HEAD + bytes([REQ, 12, READ, 0, PEER, 0]) + frame_op(0xC1, 40, fill=1) +
      bytes([READ, 0, PEER, 0]) + frame_op(0xC9, 1) + bytes([READ, 0, PEER, 0]))
TAKEOVER_HEAD = CONN_HEAD[:7] + bytes([5]) + CONN_HEAD[8:]
write("conn", "deflate-takeover-run", TAKEOVER_HEAD + bytes([REQ, 13, READ, 0]) + frame_op(0xC1, 30, fill=1) +
      bytes([READ, 3, 10, 0, 0x40, 0, 10, 0, 0x10, 0, PEER, 0, 11, 0, 1, TIME, 0x80, PEER, 0]))

# frame_boundary: [limits, cut seed, cut size] then frames (op, first, len
# selector, fill, mask) and raw bytes (op 7).
fb = bytes([0x15, 9, 1])
write("frame_boundary", "text-ping-binary", fb + bytes([0, 0x81, 10, 1, 1, 2, 3, 4, 0, 0x89, 4, 2, 1, 2, 3, 4,
                                                          0, 0x82, 205, 0, 1, 5, 1, 2, 3, 4]))
write("frame_boundary", "fragments", bytes([0x15, 3, 2]) + bytes([0, 0x01, 20, 1, 9, 9, 9, 9, 0, 0x8A, 0, 1, 9, 9, 9, 9,
                                                                   0, 0x00, 20, 1, 9, 9, 9, 9, 0, 0x80, 20, 1, 9, 9, 9, 9]))
write("frame_boundary", "long-lengths", bytes([0x2A, 5, 4]) + bytes([0, 0x82, 240, 0, 1, 2, 3, 4, 0, 0x82, 241, 0, 1, 2, 3, 4]))
write("frame_boundary", "unmasked-and-raw", fb + bytes([6, 0x81, 5, 0, 1, 2, 3, 4, 7, 4]) + b"\x81\x85ab")
write("frame_boundary", "close", fb + bytes([0, 0x81, 3, 0, 1, 1, 1, 1, 0, 0x88, 2, 0, 1, 1, 1, 1, 0, 0x81, 3, 0, 1, 1, 1, 1]))
# The limits byte's top bit turns permessage-deflate on: a compressed text
# (RSV1) in two fragments with a Ping between, a compressed binary, RSV1 on
# a continuation (refused), RSV1 on a Ping (refused).
fbd = bytes([0x95, 9, 1])
write("frame_boundary", "deflate-fragments", fbd + bytes([0, 0x41, 6, 1, 1, 2, 3, 4, 0, 0x89, 1, 1, 1, 2, 3, 4,
                                                        0, 0x80, 6, 1, 1, 2, 3, 4, 0, 0xC2, 12, 1, 5, 6, 7, 8]))
write("frame_boundary", "deflate-rsv1-continuation", fbd + bytes([0, 0x01, 4, 1, 1, 2, 3, 4, 0, 0xC0, 4, 1, 1, 2, 3, 4]))
write("frame_boundary", "deflate-rsv1-ping", fbd + bytes([0, 0xC1, 4, 1, 1, 2, 3, 4, 0, 0xC9, 1, 1, 1, 2, 3, 4,
                                                         0, 0x81, 2, 1, 1, 2, 3, 4]))


# deflate: [mode] then, inflate (even): [cap] + bytes; round trip (odd):
# [window/takeover, piece, seed] then messages (kind, length, bytes or a
# 4-byte unit, fragments, mask steps...).
import zlib
def raw_deflate(data, level=9):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    z = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return z[:-4]
write("deflate", "inflate-text", bytes([0, 4]) + raw_deflate(b'{"type":"agent_thinking","delta":"hello"}' * 20))
write("deflate", "inflate-bomb", bytes([0, 3]) + raw_deflate(bytes(4 << 20)))
write("deflate", "inflate-garbage", bytes([0, 5]) + b"\xff\xee\xdd\x07\x04\x00")
final = zlib.compressobj(6, zlib.DEFLATED, -15)
write("deflate", "inflate-final-then-junk", bytes([0, 2]) + final.compress(b"x") + final.flush() + b"junk")
write("deflate", "round-trip", bytes([1, 6, 2, 7]) + bytes([1, 40]) + b"hello hello deflate world, hello again!!" + bytes([2, 1]) +
      bytes([3, 250, 0x61, 0x62, 0x63, 0x64, 3, 5]) + bytes([0, 0, 0, 0]))
write("deflate", "round-trip-takeover", bytes([1, 0x86, 1, 9]) + bytes([1, 30]) + b'{"type":"agent_thinking","d":1}' +
      bytes([0, 0]) + bytes([1, 30]) + b'{"type":"agent_thinking","d":2}' + bytes([3, 1]) + bytes([2, 201, 1, 2, 3, 4, 1, 9]))


# auth: [mode, secret len, secret, now(2), ttl, sub, tamper(3),
# authorization, protocols, ttl text] + token.
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def jwt(secret, claims, alg="HS256"):
    h = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    s = b64(hmac.new(secret, h + b"." + p, hashlib.sha256).digest())
    return h + b"." + p + b"." + s


secret = b"0123456789abcdef-fuzz"
now = 1_700_000_000 + 1000 * 1000


def auth_seed(mode, token, sub=b"alice", authz=b"Bearer tok", protos=b"agent_chat, bearer.x",
              ttl_text=b"15m"):
    # The lifetime: one byte, none (3600 s), or eight, as the mode says.
    ttl = {0: b"\x3c", 1: b""}.get((mode >> 1) % 4, struct.pack("<Q", 86_400))
    out = bytes([mode, len(secret)]) + secret + struct.pack("<H", 1000) + ttl
    out += bytes([len(sub)]) + sub + b"\x05\x00" + b"A"
    if mode & 0x10:
        out += bytes([len(authz)]) + authz
    out += bytes([len(protos)]) + protos + bytes([len(ttl_text)]) + ttl_text
    return out + token


write("auth", "valid", auth_seed(0x30, jwt(secret, {"sub": "bob", "exp": now + 60, "nbf": now - 1})))
write("auth", "expired", auth_seed(0x20, jwt(secret, {"sub": "bob", "exp": now - 1})))
write("auth", "alg-none", auth_seed(0x32, jwt(secret, {"sub": "m", "exp": now + 60}, alg="none")))
write("auth", "no-exp", auth_seed(0x12, jwt(secret, {"sub": "x"}), authz=b"Basic abc"))
write("auth", "static", auth_seed(0x00, b"alice", sub=b"alice", ttl_text=b"7d"))


# settings: pairs of (selector, value); selector < 128 picks a variable,
# >= 128 a flag; value kinds: 0 raw, 1 u64, 2 shifted u64, 3 decimal,
# 4 exponent, 5 word.
def settings_vars():
    """The target's variable list, in its order: every declared setting's
    variable (src/settings/decl.rs, declaration order), then OTHER_VARS of
    the target. Read from the sources, so a new setting cannot shift the
    seeds' selectors onto other variables."""
    root = os.path.dirname(os.path.dirname(HERE))
    decl = open(os.path.join(root, "src", "settings", "decl.rs")).read()
    declared = [a or b for a, b in re.findall(
        r'env: Some\("([A-Z0-9_]+)"\)|^\s*"([A-Z][A-Z0-9_]+)",\s*$', decl, re.M)]
    target = open(os.path.join(HERE, "..", "fuzz_targets", "settings.rs")).read()
    other = re.search(r"const OTHER_VARS: \[&str; \d+\] = \[(.*?)\];", target, re.S).group(1)
    return declared + re.findall(r'"([A-Z0-9_]+)"', other)


VARS = settings_vars()
WORDS = ["local", "development", "testing", "staging", "production", "prod", "mio", "polling",
         "off", "unbounded", "spin", "none", "true", "false", "yes", "0", "1", "agent_chat", "echo"]


def var(name):
    return bytes([VARS.index(name)])


def raw(s):
    return bytes([0, len(s)]) + s.encode()


def word(w):
    return bytes([5, WORDS.index(w)])


def u64(n):
    return bytes([1]) + struct.pack("<Q", n)


def dec(a, b):
    return bytes([3]) + struct.pack("<H", a) + struct.pack("<Q", b)


write("settings", "production", var("ENVIRONMENT") + word("production"))
write("settings", "decimals", var("WEBSOCKET_PING_TIMEOUT") + dec(0, 5) + var("WEBSOCKET_CLOSE_TIMEOUT") + dec(2, 25))
write("settings", "cap-off", var("POLLCAP_POLL_CAP_MS") + word("off") + var("POLLCAP_BACKEND") + word("polling"))
write("settings", "limits", var("POLLCAP_MAX_MESSAGE") + u64(4096) + var("POLLCAP_MAX_OUTBOUND") + u64(65536)
      + var("POLLCAP_READ_BUFFER") + u64(1))
write("settings", "secret", var("POLLCAP_JWT_SECRET") + raw("0123456789abcdefXYZ") + var("LOCAL_DEVELOPMENT") + word("true"))
write("settings", "broken-rule", var("WEBSOCKET_CONNECT_TIMEOUT") + u64(9) + var("WEBSOCKET_HANDSHAKE_TIMEOUT") + u64(3))
write("settings", "listen", var("PORT") + raw("8080") + var("K_SERVICE") + raw("svc") + var("POLLCAP_WS_PATH") + raw("/chat"))


# events_as_written: one set-up byte (bit 0: SSE 0 / JSON Lines 1; the
# rest: piece size - 1), then an agent's response body.
def events_seed(sse, step, events):
    setup = (0 if sse else 1) | ((step - 1) << 1)
    if sse:
        body = "".join(f"data: {e}\n\n" for e in events)
    else:
        body = "".join(f"{e}\n" for e in events)
    return bytes([setup]) + body.encode()


AGENT = [
    '{"type":"agent_started","seq":40}',
    '{"type":"agent_thinking","delta":"Hel","t_us":1.5e15,"i":0}',
    '{"type":"agent_thinking","delta":"lo\\n","run_id":"theirs"}',
    '{"type":"tool_completed","tool":"s","result":{"run_id":"x","hits":[1,-0,2.50,null]}}',
    '{"type":"agent_completed"}',
]
write("events_as_written", "sse", events_seed(True, 128, AGENT))
write("events_as_written", "jsonl-split", events_seed(False, 7, AGENT))
write("events_as_written", "rewritten", events_seed(True, 64, [
    '{ "type":"x","a":1,"a":2}', '{"a":1,"type":"x"}', '{"type":"agent\\u005fcompleted","final":"f"}',
    '{"type":"x","seq":1,"ts":2}', '{"type":"agent_completed","final":"given"}']))
write("events_as_written", "refused", events_seed(False, 3, ['{"type":"x","n":1e400}', '{"type":"x","s":"\\ud800"}']))
