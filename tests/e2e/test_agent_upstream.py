"""Bring your own agent (SPEC §5, `--agent-url`) with a real upstream: a
FastAPI app (tests/e2e/agent_app.py) served by uvicorn in its own process
on a free loopback port, started and stopped here; the real binary in
front of it; the real Python `websockets` client; for resume across
instances, a real redis-server. Every wait is bounded."""
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import websockets

from pollcap_server import eventually, free_port, health, metrics
from test_agent_chat import run
from test_resume import redis  # noqa: F401 (the fixture)

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT_TOKEN = "agent-bearer-0123456789"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Agent:
    """`python -m uvicorn APP ARGS` from `app_dir` on a free loopback port,
    its output kept in a file for failure messages."""

    def __init__(self, app="agent_app:app", app_dir=HERE, args=("--timeout-graceful-shutdown", "1"),
                 env=None):
        self.port = free_port()
        self.out = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir), *args,
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
            stdout=self.out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

        def up():
            assert self.proc.poll() is None, "uvicorn exited:\n" + self.output()
            try:
                with urllib.request.urlopen(self.url("/openapi.json"), timeout=5):
                    return True
            except OSError:
                return False
        try:
            eventually(20, up, "uvicorn answers")
        except BaseException:
            self.stop()
            raise

    def url(self, path, **query):
        q = "?" + urllib.parse.urlencode(query) if query else ""
        return f"http://127.0.0.1:{self.port}{path}{q}"

    def get(self, path):
        with urllib.request.urlopen(self.url(path), timeout=5) as r:
            return json.loads(r.read())

    def run(self, run_id):
        """What the agent was asked for `run_id` and how its generator
        ended (agent_app.py)."""
        try:
            return self.get(f"/runs/{run_id}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def output(self):
        self.out.seek(0)
        return self.out.read()[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


@pytest.fixture(scope="module")
def agent():
    a = Agent()
    yield a
    a.stop()


def pollcap(server_factory, url, *args, **env):
    """A pollcap whose agent_chat runs come from `url`, with the bearer
    secret for the agent."""
    return server_factory("--agent-url", url, *args, POLLCAP_AGENT_TOKEN=AGENT_TOKEN, **env)


def connect(server, token=None, traceparent=None):
    headers = {"Authorization": f"Bearer {token or server.token()}"}
    if traceparent:
        headers["traceparent"] = traceparent
    return websockets.connect(server.url, additional_headers=headers,
                              subprotocols=["agent_chat"], open_timeout=10)


async def recv(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))


async def send(ws, text, thread_id="t1"):
    await ws.send(json.dumps({"type": "user_message", "text": text, "thread_id": thread_id}))


async def until_end(ws):
    out = []
    while True:
        e = await recv(ws)
        out.append(e)
        if e["type"] in ("agent_completed", "error"):
            return out


async def ask(ws, text, thread_id="t1"):
    await send(ws, text, thread_id)
    return await until_end(ws)


def check_run(events, text):
    """One whole run of agent_app's script for `text`: pollcap's own
    agent_started (the agent's is not relayed twice), every agent event in
    order with seq 1..N and pollcap's run_id and ts (the agent's forged ones
    replaced), the custom event type as the agent sent it, and `final`
    filled with the deltas since the agent left it out."""
    words = text.split()
    assert [e["type"] for e in events] == (
        ["agent_started"] + ["agent_thinking"] * len(words)
        + ["tool_executing", "tool_completed", "citation", "agent_completed"]), events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), events
    run_id = events[0]["run_id"]
    assert run_id != "forged" and all(e["run_id"] == run_id for e in events), events
    now_ms = time.time() * 1000
    assert all(isinstance(e["ts"], int) and abs(e["ts"] - now_ms) < 120_000 for e in events), events
    assert [e["delta"] for e in events if e["type"] == "agent_thinking"] == [w + " " for w in words]
    tool = events[-3]
    assert tool["tool"] == "count_words" and tool["result"] == len(words), tool
    citation = events[-2]
    assert citation["source"] == "agent_app" and citation["words"] == words, citation
    assert events[-1]["final"] == "".join(w + " " for w in words), events[-1]
    return run_id


SCRIPT_LEN = 5  # agent_app's events besides the deltas (its agent_started included)


@pytest.mark.parametrize("path", ["/sse", "/jsonl", "/native"])
def test_sse_and_json_lines_agents_relay_every_event_in_order(agent, server_factory, path):
    """/sse and /jsonl: StreamingResponse over a generator; /native:
    FastAPI's own EventSourceResponse path operation."""
    server = pollcap(server_factory, agent.url(path))

    async def go():
        async with connect(server) as ws:
            ids = []
            for text in ("hello from fastapi", "a second run"):
                ids.append(check_run(await ask(ws, text), text))
            return ids
    ids = run(go())
    assert ids[0] != ids[1]
    for run_id, text in zip(ids, ("hello from fastapi", "a second run")):
        got = agent.run(run_id)
        assert got["path"] == path and got["body"]["text"] == text
        # Every event the agent yielded, and its generator ran to the end.
        assert (got["sent"], got["end"]) == (SCRIPT_LEN + len(text.split()), "completed"), got
    assert metrics(server)["pollcap_agent_requests_total"] == 2


def test_the_agent_gets_the_run_id_as_idempotency_key_the_trace_the_token_and_the_body(
        agent, server_factory):
    server = pollcap(server_factory, agent.url("/jsonl"))

    async def go():
        token = server.token("alice")
        async with connect(server, token, traceparent=TRACEPARENT) as ws:
            traced = (await ask(ws, "trace me", thread_id="thread-7"))[0]["run_id"]
        async with connect(server, token) as ws:  # no traceparent of its own
            plain = [(await ask(ws, "untraced"))[0]["run_id"] for _ in range(2)]
        return traced, plain
    traced, plain = run(go())
    got = agent.run(traced)
    h = got["headers"]
    assert h["idempotency-key"] == traced
    assert h["authorization"] == f"Bearer {AGENT_TOKEN}"
    assert h["content-type"] == "application/json"
    assert "text/event-stream" in h["accept"] and "application/jsonl" in h["accept"]
    # The upgrade's trace continues, with a request (parent id) of its own.
    version, trace_id, parent, flags = h["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01"), h["traceparent"]
    assert re.fullmatch(r"[0-9a-f]{16}", parent) and parent != "00f067aa0ba902b7"
    b = got["body"]
    assert set(b) == {"run_id", "thread_id", "text", "subject", "deadline_ms"}, b
    assert (b["run_id"], b["thread_id"], b["text"], b["subject"]) == (
        traced, "thread-7", "trace me", "alice")
    execution_ms = 15_000  # the local profile's execution deadline
    assert 0 < b["deadline_ms"] <= execution_ms and b["deadline_ms"] > execution_ms - 5_000, b
    # Without a traceparent on the upgrade, each run is a new trace.
    traces = [agent.run(r)["headers"]["traceparent"].split("-")[1] for r in plain]
    assert traces[0] != traces[1] and TRACE_ID not in traces
    # pollcap logs the trace with the run: its logs and the agent's join.
    line = eventually(5, lambda: next((l for l in server.log if traced in l and TRACE_ID in l), None),
                      "a log line with the run id and the trace id")
    assert "agent run started" in line, line


@pytest.mark.parametrize("how, code", [
    ("refuse", "upstream_rejected"),  # HTTPException(403): FastAPI's `detail` is the message
    ("error", "agent_quota"),  # the agent's own error event ends the run, relayed as it is
    ("raise", "upstream_truncated"),  # an exception mid-stream: uvicorn cuts the body
])
def test_a_fastapi_agent_going_wrong_ends_the_run_with_an_error_and_the_connection_stays(
        agent, server_factory, how, code):
    server = pollcap(server_factory, agent.url("/fail", how=how))

    async def go():
        async with connect(server) as ws:
            first = await ask(ws, "one")
            second = await ask(ws, "two")  # the same connection, still usable
        return first, second
    for events in run(go()):
        e = events[-1]
        assert (e["type"], e["code"]) == ("error", code), events
        assert [x["seq"] for x in events] == list(range(1, len(events) + 1))
        if how == "refuse":
            assert len(events) == 1 and "not for you" in e["message"], events
        else:
            assert [x["type"] for x in events] == ["agent_started", "agent_thinking", "error"], events
        if how == "error":
            assert e["message"] == "out of tokens"
    m = metrics(server)
    assert m["pollcap_agent_requests_total"] == 2


async def drop_after(server, token, text, n):
    """Starts a run, reads n events, then leaves without a Close frame."""
    ws = await connect(server, token)
    await send(ws, text)
    first = [await recv(ws) for _ in range(n)]
    ws.transport.abort()  # TCP gone: no Close frame
    return first


PACED = "resume me after a drop please"  # 11 events, 80 ms apart


def still_live(agent, first):
    """The agent is still streaming the dropped run (8 events, 640 ms, to
    go): the resume gets stored events and then live ones."""
    got = agent.run(first[0]["run_id"])
    assert got["end"] is None and got["sent"] < SCRIPT_LEN + len(PACED.split()), got


def test_a_dropped_agent_run_resumes_on_the_same_instance(agent, server_factory):
    server = pollcap(server_factory, agent.url("/sse", pace_ms=80))

    async def go():
        token = server.token()
        first = await drop_after(server, token, PACED, 3)
        still_live(agent, first)
        async with connect(server, token) as ws:
            await ws.send(json.dumps({"type": "resume", "run_id": first[0]["run_id"],
                                      "after_seq": 3}))
            return first + await until_end(ws)
    whole = run(go())
    run_id = check_run(whole, PACED)  # every event exactly once, in order
    # A lost connection does not cancel: the agent's generator ran to its end.
    assert agent.run(run_id)["end"] == "completed"
    assert health(server)["store"]["resumes"] == 1


def test_a_dropped_agent_run_resumes_on_another_instance_through_redis(
        agent, redis, server_factory):  # noqa: F811
    url = agent.url("/jsonl", pace_ms=80)
    a = pollcap(server_factory, url, "--store", redis.url)
    b = pollcap(server_factory, url, "--store", redis.url)

    async def go():
        token = a.token("carol")
        first = await drop_after(a, token, PACED, 3)
        still_live(agent, first)
        run_id = first[0]["run_id"]
        async with connect(b, token) as ws:
            await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 3}))
            whole = first + await until_end(ws)
        check_run(whole, PACED)
        # Finished: replayed whole from 0 on either instance.
        for s in (a, b):
            async with connect(s, token) as ws:
                await ws.send(json.dumps({"type": "resume", "run_id": run_id, "after_seq": 0}))
                assert await until_end(ws) == whole
        return run_id
    run_id = run(go())
    got = agent.run(run_id)
    assert got["end"] == "completed", got
    assert metrics(a)["pollcap_agent_requests_total"] == 1
    assert metrics(b).get("pollcap_agent_requests_total", 0) == 0, "B only read the store"


def test_a_client_close_mid_run_cancels_the_fastapi_generator_within_a_second(
        agent, server_factory):
    server = pollcap(server_factory, agent.url("/sse", pace_ms=200))
    text = " ".join(f"w{i}" for i in range(40))  # 8 s of events if let run

    async def go():
        async with connect(server) as ws:
            await send(ws, text)
            first = [await recv(ws) for _ in range(3)]
            closing = time.monotonic()
            await ws.close()  # a Close frame: the client ends the session
        return first[0]["run_id"], closing
    run_id, closing = run(go())
    got = eventually(5, lambda: (r := agent.run(run_id)) and r["end"] and r,
                     "the agent's generator to end")
    assert got["end"] == "cancelled", got
    # CLOCK_MONOTONIC is system-wide: the agent's clock is the test's.
    took = got["cancelled_at"] - closing
    assert 0 <= took < 1.0, f"the generator saw its cancellation {took:.3f} s after the Close"
    assert got["sent"] < len(text.split()), got
    eventually(5, lambda: health(server)["handlers"]["runs_cancelled"] == 1, "runs_cancelled")


def test_the_execution_deadline_ends_the_run_and_cancels_the_generator(agent, server_factory):
    # Every agent deadline must be <= the execution deadline.
    server = pollcap(server_factory, agent.url("/sse", pace_ms=100), "--execution-timeout", "1",
                     *(f"--agent-{p}-timeout=1" for p in ("connect", "response", "idle")))
    text = " ".join(f"w{i}" for i in range(40))  # 4.5 s of events

    async def go():
        async with connect(server) as ws:
            started = time.monotonic()
            events = await ask(ws, text)
            ended = time.monotonic()
            # The connection is still usable: a short run completes.
            check_run(await ask(ws, "short"), "short")
        return events, started, ended
    events, started, ended = run(go())
    e = events[-1]
    assert (e["type"], e["code"], e["phase"]) == ("error", "upstream_timeout", "execution"), e
    assert e["seq"] == len(events) and [x["seq"] for x in events] == list(range(1, len(events) + 1))
    assert 1.0 <= ended - started < 1.0 + 1.5, "the deadline plus one cap and some slack"
    got = agent.run(e["run_id"])
    assert got["end"] == "cancelled" and abs(got["cancelled_at"] - ended) < 1.0, got


def test_a_drain_cancels_the_generator(agent, server_factory):
    server = pollcap(server_factory, agent.url("/jsonl", pace_ms=200))
    text = " ".join(f"w{i}" for i in range(40))

    async def go():
        async with connect(server) as ws:
            await send(ws, text)
            run_id = (await recv(ws))["run_id"]
            await recv(ws)  # the agent is streaming
            draining = time.monotonic()
            server.terminate()  # SIGTERM: the graceful drain
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await recv(ws)
            assert closed.value.rcvd.code == 1001, closed.value
        return run_id, draining
    run_id, draining = run(go())
    got = eventually(5, lambda: (r := agent.run(run_id)) and r["end"] and r,
                     "the agent's generator to end")
    assert got["end"] == "cancelled", got
    # The drain waits for runs up to the close timeout (1 s here), then
    # closes their upstream sockets.
    assert 0 <= got["cancelled_at"] - draining < 1.0 + 1.0, got
    assert server.proc.wait(timeout=10) == 0


def test_two_hundred_concurrent_agent_runs_through_one_instance_all_complete(
        agent, server_factory):
    n = 200
    # Each run is held by the agent until all 200 are in flight at once:
    # runs on 16 pool threads (or any cap under 200) could not get there.
    server = pollcap(server_factory, agent.url("/sse", pace_ms=20, gather=n))
    before = agent.get("/stats")["requests"]

    async def go():
        token = server.token()
        clients = await asyncio.gather(*(connect(server, token) for _ in range(n)))
        try:
            texts = [f"run {i} of many" for i in range(n)]
            runs = await asyncio.gather(*(ask(ws, t) for ws, t in zip(clients, texts)))
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))
        return [check_run(events, t) for events, t in zip(runs, texts)]
    ids = run(go())
    assert len(set(ids)) == n
    stats = agent.get("/stats")
    assert stats["requests"] - before == n
    assert stats["max_in_flight"] >= n, stats
    assert all(agent.run(r)["end"] == "completed" for r in ids)
    assert metrics(server)["pollcap_agent_requests_total"] == n


def readme_agent(tmp):
    """The FastAPI agent of README's "Bring your own agent", as printed
    there, written to `tmp`/agent.py."""
    readme = open(os.path.join(HERE, "..", "..", "README.md")).read()
    section = readme.split("### Bring your own agent: `--agent-url`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with open(os.path.join(tmp, "agent.py"), "w") as f:
        f.write(code)


def test_the_readme_agent_works_as_printed(tmp_path, server_factory):
    readme_agent(tmp_path)
    agent = Agent("agent:app", tmp_path, env={"AGENT_TOKEN": AGENT_TOKEN})
    try:
        # Its token check: a pollcap with another secret is refused, and
        # the run says so.
        wrong = server_factory("--agent-url", agent.url("/agent"),
                               POLLCAP_AGENT_TOKEN="not-the-agent-token")

        async def refused():
            async with connect(wrong) as ws:
                return await ask(ws, "hello")
        events = run(refused())
        assert events[-1]["type"] == "error", events
        assert events[-1]["code"] == "upstream_rejected", events
        assert "wrong agent token" in events[-1]["message"], events
        async def go(server):
            async with connect(server) as ws:
                return await ask(ws, "hello readme world")
        for url in (agent.url("/agent"), agent.url("/agent") + "?jsonl"):
            events = run(go(pollcap(server_factory, url)))
            assert [e["type"] for e in events] == (
                ["agent_started"] + ["agent_thinking"] * 3 + ["my_tool_result", "agent_completed"]), events
            assert [e["seq"] for e in events] == list(range(1, 7))
            assert events[-2]["words"] == 3
            assert events[-1]["final"] == "hello readme world "
    finally:
        agent.stop()
