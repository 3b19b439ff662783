"""End-to-end: the Python `websockets` 17 client against the real binary
serving agent_chat (SPEC §4, §5). Every wait is bounded by a timeout."""
import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from conftest import SECRET
from pollcap_server import eventually_async, health, metrics

TYPES = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def connect(server, token=None, subprotocols=("agent_chat",), **kw):
    headers = {"Authorization": f"Bearer {token or server.token()}"}
    return websockets.connect(server.url, additional_headers=headers,
                              subprotocols=list(subprotocols), open_timeout=10, **kw)


async def one_run(ws, text, **extra):
    """Sends one user_message; returns that run's events, up to the last."""
    await ws.send(json.dumps({"type": "user_message", "text": text, "thread_id": "t1", **extra}))
    events = []
    while True:
        e = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        events.append(e)
        if e["type"] in ("agent_completed", "error"):
            return events


def check_run(events, text):
    types = [e["type"] for e in events]
    # started, thinking+, tool_executing, tool_completed, completed
    assert types[0] == "agent_started"
    assert types[-3:] == ["tool_executing", "tool_completed", "agent_completed"]
    assert set(types[1:-3]) == {"agent_thinking"} and len(types) >= 6
    seqs = [e["seq"] for e in events]
    assert all(b > a for a, b in zip(seqs, seqs[1:])), seqs
    assert len({e["run_id"] for e in events}) == 1
    assert all(isinstance(e["ts"], int) for e in events)
    deltas = "".join(e["delta"] for e in events if e["type"] == "agent_thinking")
    assert events[-1]["final"] == deltas
    assert deltas.endswith("Echo: " + text)


def jwt(payload, secret=SECRET, alg="HS256"):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = enc(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = enc(json.dumps(payload).encode())
    sig = enc(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def test_connect_selects_agent_chat(server):
    async def go():
        async with connect(server) as ws:
            assert ws.subprotocol == "agent_chat"
    run(go())


def test_one_message_gets_all_five_event_types_in_order(server):
    async def go():
        async with connect(server) as ws:
            events = await one_run(ws, "hello there")
            check_run(events, "hello there")
            assert [t for t in TYPES if t in {e["type"] for e in events}] == TYPES
    run(go())


def test_streaming_deltas_arrive_before_completion(server):
    async def go():
        async with connect(server) as ws:
            await ws.send(json.dumps({"type": "user_message", "text": "stream me please", "pacing_ms": 30}))
            arrivals = []
            while True:
                e = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
                arrivals.append((time.monotonic(), e))
                if e["type"] == "agent_completed":
                    break
            thinking = [(t, e) for t, e in arrivals if e["type"] == "agent_thinking"]
            assert len(thinking) >= 2
            done_at = arrivals[-1][0]
            # Streamed: the deltas were received well before the final event
            # (pacing 30 ms between events), not in one burst at the end.
            assert done_at - thinking[0][0] >= 0.1
            assert arrivals[-1][1]["final"] == "".join(e["delta"] for _, e in thinking)
    run(go())


def test_ten_concurrent_clients_five_messages_each(server):
    async def client(i):
        async with connect(server) as ws:
            texts = [f"client {i} message {j}" for j in range(5)]
            for t in texts:  # all five in flight at once
                await ws.send(json.dumps({"type": "user_message", "text": t}))
            runs, done = {}, 0
            while done < 5:
                e = json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
                runs.setdefault(e["run_id"], []).append(e)
                done += e["type"] == "agent_completed"
            finals = set()
            for events in runs.values():
                text = events[-1]["final"].split("Echo: ", 1)[1]
                check_run(events, text)
                finals.add(text)
            assert finals == set(texts), "every run complete and none mixed"
            return len(runs)

    async def go():
        counts = await asyncio.gather(*(client(i) for i in range(10)))
        assert counts == [5] * 10
    run(go())


def test_invalid_expired_and_missing_tokens_get_401(server):
    now = int(time.time())
    bad = [
        "not-a-token",
        jwt({"sub": "x", "exp": now - 100}),                      # expired (past the 30 s leeway)
        jwt({"sub": "x", "exp": now + 600, "nbf": now + 300}),    # not yet valid
        jwt({"sub": "x", "exp": now + 600}, secret="wrong-secret-0123456789"),
        jwt({"sub": "x", "exp": now + 600}, alg="none"),
    ]

    async def go():
        for token in bad:
            with pytest.raises(InvalidStatus) as e:
                async with connect(server, token=token):
                    pass
            assert e.value.response.status_code == 401, token
        with pytest.raises(InvalidStatus) as e:
            async with websockets.connect(server.url, subprotocols=["agent_chat"], open_timeout=10):
                pass
        assert e.value.response.status_code == 401
        assert b"missing bearer token" in e.value.response.body
    run(go())


def test_browser_form_bearer_subprotocol_is_accepted_and_not_echoed(server):
    async def go():
        token = server.token()
        async with websockets.connect(server.url, subprotocols=["agent_chat", "bearer." + token],
                                      open_timeout=10) as ws:
            assert ws.subprotocol == "agent_chat"
            check_run(await one_run(ws, "from a browser"), "from a browser")
    run(go())


def test_bearer_only_subprotocol_list_gets_400_naming_agent_chat(server):
    # A browser page that sends only its token as a subprotocol would get
    # a 101 selecting none and abort with 1006: it gets a clear 400 instead.
    async def go():
        with pytest.raises(InvalidStatus) as e:
            async with websockets.connect(server.url, subprotocols=["bearer." + server.token()],
                                          open_timeout=10):
                pass
        assert e.value.response.status_code == 400
        assert b"supported: agent_chat" in e.value.response.body
    run(go())


def test_unknown_only_subprotocol_gets_400_naming_agent_chat(server):
    async def go():
        with pytest.raises(InvalidStatus) as e:
            async with connect(server, subprotocols=["chat.v2", "mqtt"]):
                pass
        assert e.value.response.status_code == 400
        assert b"agent_chat" in e.value.response.body
    run(go())


def test_execution_deadline_then_the_connection_still_works(server_factory):
    server = server_factory(AGENT_EXECUTION_TIMEOUT="0.4")

    async def go():
        async with connect(server) as ws:
            events = await one_run(ws, "slow one", pacing_ms=300)
            err = events[-1]
            assert err["type"] == "error" and err["code"] == "execution_timeout", events
            assert err["run_id"] == events[0]["run_id"]
            assert len(events) >= 2, "agent_started came before the deadline"
            assert err["seq"] == events[-2]["seq"] + 1, "the error continues the run's sequence"
            check_run(await one_run(ws, "fast one", pacing_ms=0), "fast one")
    run(go())
    assert metrics(server)['pollcap_timeouts_total{phase="execution"}'] == 1


def test_malformed_json_gets_bad_request_and_connection_works(server):
    async def go():
        async with connect(server) as ws:
            for bad in ["{nope", json.dumps({"type": "telepathy"})]:
                await ws.send(bad)
                e = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
                assert e["type"] == "error" and e["code"] == "bad_request", e
            check_run(await one_run(ws, "still here"), "still here")
    run(go())


def test_breaker_opens_on_failing_opens_then_recovers(server_factory):
    server = server_factory("--app", "flaky-open", "--fail-opens", "3",
                            "--breaker-threshold", "3", "--breaker-recovery", "1")

    async def status_of_connect():
        try:
            async with connect(server):
                return 101, None
        except InvalidStatus as e:
            return e.response.status_code, e.response.headers.get("Retry-After")

    async def go():
        for _ in range(3):
            assert (await status_of_connect())[0] == 500
        status, retry_after = await status_of_connect()
        assert status == 503 and retry_after is not None and int(retry_after) >= 1
        assert health(server)["breaker"]["state"] == "open"

        # Waiting out the recovery timer (1 s) is the point: poll, bounded.
        async def recovered():
            return (await status_of_connect())[0] == 101
        await eventually_async(5, recovered, "the breaker recovers")
        h = health(server)
        assert h["breaker"]["state"] == "closed"
        assert h["breaker"]["opened_total"] == 1
    run(go())
