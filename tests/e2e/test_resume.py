"""Resumable runs end to end (SPEC §5 "Resume"): the real binary, the real
Python `websockets` client, and a real redis-server (Debian package) started
here on a free loopback port and stopped after. Two server processes share
one Redis: a run started on A, dropped without a Close frame, is resumed on
B. Every wait is bounded."""
import asyncio
import json
import os
import shutil
import socket
import subprocess

import pytest
import websockets

from pollcap_server import eventually, free_port, health, metrics
from test_agent_chat import connect, run

REDIS = shutil.which("redis-server")


def ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """A private redis-server: no persistence, loopback only."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None
        self.start()

    def start(self):
        assert REDIS, "redis-server is not installed (scripts/test installs it)"
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers():
            assert self.proc.poll() is None, "redis-server exited"
            return ping(self.port)
        eventually(10, answers, "redis-server answers PING")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.stop()


async def recv(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))


async def start_run(ws, text, pacing_ms=60):
    await ws.send(json.dumps({"type": "user_message", "text": text, "thread_id": "t",
                              "pacing_ms": pacing_ms}))


async def until_end(ws):
    out = []
    while True:
        e = await recv(ws)
        out.append(e)
        if e["type"] in ("agent_completed", "error"):
            return out


async def resume(ws, run_id, after_seq):
    await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": after_seq}))


def check_whole(events, text):
    """One run, seq 1..n with no gap or repeat, final = the deltas."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    assert len({e["run_id"] for e in events}) == 1
    assert events[0]["type"] == "agent_started"
    assert events[-1]["type"] == "agent_completed", events[-1]
    deltas = "".join(e["delta"] for e in events if e["type"] == "agent_thinking")
    assert events[-1]["final"] == deltas and deltas.endswith("Echo: " + text)


async def drop_after(server, token, text, n):
    """Starts a run, reads n events, then leaves without a Close frame."""
    ws = await connect(server, token=token)
    await start_run(ws, text)
    first = [await recv(ws) for _ in range(n)]
    ws.transport.abort()  # TCP gone: no Close frame
    return first


async def assert_unavailable(ws, run_id):
    e = await recv(ws)
    assert e["type"] == "error" and e["code"] == "resume_unavailable", e
    assert e["run_id"] == run_id and "seq" not in e
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), timeout=0.5)  # nothing else follows


def test_dropped_run_resumes_on_the_same_instance_with_the_memory_store(server):
    async def go():
        text = "memory keeps it"
        first = await drop_after(server, server.token(), text, 3)
        async with connect(server) as ws:
            await resume(ws, first[0]["run_id"], 3)
            check_whole(first + await until_end(ws), text)
    run(go())


def test_dropped_run_resumes_on_another_instance_through_redis(redis, server_factory):
    a = server_factory("--store", redis.url)
    b = server_factory("--store", redis.url)
    assert health(a)["store"] == health(a)["store"] | {"kind": "redis", "up": True}

    async def go():
        text = "from A to B"
        token = a.token("carol")
        first = await drop_after(a, token, text, 3)
        run_id = first[0]["run_id"]
        async with connect(b, token=token) as ws:
            await resume(ws, run_id, 3)
            rest = await until_end(ws)
        whole = first + rest
        check_whole(whole, text)
        # Finished: replayed whole from 0 on either instance, within the window.
        for s in (a, b):
            async with connect(s, token=token) as ws:
                await resume(ws, run_id, 0)
                assert await until_end(ws) == whole
    run(go())
    assert health(b)["store"]["resumes"] == 2


def test_unknown_and_foreign_runs_get_resume_unavailable(redis, server_factory):
    a = server_factory("--store", redis.url)
    b = server_factory("--store", redis.url)

    async def go():
        async with connect(a, token=a.token("alice")) as ws:
            await start_run(ws, "alice only", pacing_ms=0)
            run_id = (await until_end(ws))[0]["run_id"]
        async with connect(b, token=b.token("mallory")) as ws:
            await resume(ws, run_id, 0)
            await assert_unavailable(ws, run_id)
            await resume(ws, "unknown-run-id", 0)
            await assert_unavailable(ws, "unknown-run-id")
    run(go())
    assert health(b)["store"]["resumes_unavailable"] == 2


def test_redis_killed_mid_test_then_back(redis, server_factory):
    a = server_factory("--store", redis.url)
    b = server_factory("--store", redis.url)
    token = a.token("dave")

    async def go():
        async with connect(a, token=token) as ws:
            await start_run(ws, "before", pacing_ms=0)
            old = (await until_end(ws))[0]["run_id"]
        redis.stop()
        # Chat keeps working without the store.
        async with connect(a, token=token) as ws:
            await start_run(ws, "while down", pacing_ms=0)
            check_whole(await until_end(ws), "while down")
        eventually(10, lambda: health(a)["status"] == "degraded", "/health degraded")
        assert health(a)["store"]["up"] is False
        # B, idle meanwhile, notices by its own PING.
        eventually(10, lambda: health(b)["status"] == "degraded", "B to notice")
        async with connect(b, token=token) as ws:
            await resume(ws, old, 0)
            await assert_unavailable(ws, old)
        redis.start()
        eventually(10, lambda: health(a)["status"] == "healthy", "A healthy again")
        eventually(10, lambda: health(b)["status"] == "healthy", "B healthy again")
        text = "after the outage"
        first = await drop_after(a, token, text, 3)
        async with connect(b, token=token) as ws:
            await resume(ws, first[0]["run_id"], 3)
            check_whole(first + await until_end(ws), text)
    run(go())
    for s in (a, b):
        log = "".join(s.log)
        assert "panicked" not in log
        # One log line per change of state.
        assert log.count("chat goes on, resume is unavailable") == 1, log
        assert log.count("reachable; resume available") == 1, log
        assert s.proc.poll() is None, "still running"
    m = metrics(a)
    assert m["pollcap_store_outages_total"] == 1
    assert m["pollcap_store_up"] == 1


def test_a_close_frame_cancels_the_run(server):
    async def go():
        token = server.token()
        async with connect(server, token=token) as ws:
            await start_run(ws, "cancel me", pacing_ms=50)
            first = [await recv(ws) for _ in range(2)]
        # The context manager sent a Close frame: the run was cancelled.
        async with connect(server, token=token) as ws:
            await resume(ws, first[0]["run_id"], 2)
            rest = await until_end(ws)
        assert rest[-1]["code"] == "cancelled", rest
        assert all(e["type"] != "agent_completed" for e in rest)
    run(go())
    assert health(server)["handlers"]["runs_cancelled"] == 1


def test_a_follower_is_told_when_redis_goes_away_mid_run(redis, server_factory):
    a = server_factory("--store", redis.url)
    b = server_factory("--store", redis.url)

    async def go():
        token = a.token("erin")
        ws_a = await connect(a, token=token)
        await start_run(ws_a, "a long one", pacing_ms=150)
        first = [await recv(ws_a) for _ in range(2)]
        ws_a.transport.abort()
        async with connect(b, token=token) as ws:
            await resume(ws, first[0]["run_id"], 2)
            e = await recv(ws)
            assert e["seq"] == 3, e  # tailing the live run through Redis
            redis.stop()
            while e["type"] != "error":
                e = await recv(ws)
            assert e["code"] == "resume_interrupted", e
            assert "seq" not in e, "no made-up event of the run"
            # The connection itself is fine, and chat goes on without the store.
            await start_run(ws, "no store needed", pacing_ms=0)
            check_whole(await until_end(ws), "no store needed")
    run(go())
