"""A real FastAPI agent for tests/e2e/test_agent_upstream.py, served by
uvicorn in a process of its own (`python -m uvicorn agent_app:app`).

It streams the same script of events as Server-Sent Events (`POST /sse`)
or JSON Lines (`POST /jsonl`), as an agent written with FastAPI would:
one `StreamingResponse` over an async generator; or with FastAPI's own
`EventSourceResponse` (`POST /native`). `POST /fail?how=` goes wrong as a
FastAPI app does (refuses, sends its own error, raises). The query string sets
the pace between events (`pace_ms`) and can hold every run until `gather`
runs are in flight at once. What each run was asked and how its generator
ended (completed, or cancelled and when, on `time.monotonic()`: the
system-wide CLOCK_MONOTONIC, comparable with the test's) is kept in memory
and read back with `GET /runs/{run_id}` and `GET /stats`."""
import asyncio
import json
import time

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel

app = FastAPI()

RUNS = {}  # run_id -> what the agent was asked and how the run ended
STATS = {"in_flight": 0, "max_in_flight": 0, "requests": 0}
GATHERED = asyncio.Event()


def script(run):
    """The events of a run: the agent's own agent_started (pollcap sends its
    own and must not relay this one), a delta per word, a tool, a custom
    event carrying made-up run_id/seq/ts (pollcap's replace them), and an
    agent_completed without `final` (pollcap fills it with the deltas)."""
    words = run["text"].split()
    yield {"type": "agent_started"}
    for w in words:
        yield {"type": "agent_thinking", "delta": w + " "}
    yield {"type": "tool_executing", "tool": "count_words"}
    yield {"type": "tool_completed", "tool": "count_words", "result": len(words)}
    yield {"type": "citation", "source": "agent_app", "words": words,
           "run_id": "forged", "seq": 99, "ts": 0}
    yield {"type": "agent_completed"}


async def events(request, run, pace_ms, gather, keepalive):
    """The run's events, one per pace, recording how the generator ends.
    `keepalive` is what the stream sends while it waits for the others."""
    rec = RUNS[run["run_id"]]
    STATS["in_flight"] += 1
    STATS["max_in_flight"] = max(STATS["max_in_flight"], STATS["in_flight"])
    try:
        if gather:
            # Hold until `gather` runs are in flight at once (bounded: a
            # keep-alive each 0.2 s, at most 10 s), so the test can tell
            # real concurrency from runs that merely all finished.
            if STATS["in_flight"] >= gather:
                GATHERED.set()
            deadline = time.monotonic() + 10
            while not GATHERED.is_set() and time.monotonic() < deadline:
                yield keepalive
                try:
                    await asyncio.wait_for(GATHERED.wait(), timeout=0.2)
                except asyncio.TimeoutError:
                    pass
        todo = list(script(run))
        for i, e in enumerate(todo):
            if i and pace_ms:
                await asyncio.sleep(pace_ms / 1000)
            rec["sent"] += 1
            if i == len(todo) - 1:
                # Handed over: pollcap may close the socket on this one, so
                # nothing of the agent's waits after it.
                rec["end"] = "completed"
            yield e
    except asyncio.CancelledError:
        # How a proxy's cancellation reaches a Python agent: uvicorn saw the
        # socket close, Starlette cancelled this generator at its await.
        rec["end"] = "cancelled"
        rec["cancelled_at"] = time.monotonic()
        raise
    finally:
        STATS["in_flight"] -= 1


def record(request, run):
    STATS["requests"] += 1
    RUNS[run["run_id"]] = {"headers": dict(request.headers), "body": run,
                           "path": request.url.path, "sent": 0, "end": None,
                           "cancelled_at": None}


async def start(request):
    run = await request.json()  # run_id, thread_id, text, subject, deadline_ms
    record(request, run)
    return run


@app.post("/sse")
async def sse(request: Request, pace_ms: int = 0, gather: int = 0):
    run = await start(request)

    async def body():
        yield ": a comment first, as keep-alives are\n\n"
        async for e in events(request, run, pace_ms, gather, ": waiting\n\n"):
            if isinstance(e, str):
                yield e
            else:
                # Fields pollcap ignores (`event`, `id`), data over two lines.
                head, _, tail = json.dumps(e).partition(", ")
                data = f"data: {head},\ndata: {tail}" if tail else f"data: {head}"
                yield f"event: {e['type']}\nid: {run['run_id']}\n{data}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


@app.post("/jsonl")
async def jsonl(request: Request, pace_ms: int = 0, gather: int = 0):
    run = await start(request)

    async def body():
        # Each event is split over two chunks: its first half goes with the
        # second half of the one before, its second half with the next.
        rest = ""
        async for e in events(request, run, pace_ms, gather, "\n"):
            if isinstance(e, str):
                yield e
            else:
                line = json.dumps(e) + "\n"
                yield rest + line[: len(line) // 2]
                rest = line[len(line) // 2:]
        yield rest

    return StreamingResponse(body(), media_type="application/jsonl")


@app.get("/runs/{run_id}")
async def runs(run_id: str):
    if run_id not in RUNS:
        raise HTTPException(404, "no such run")
    return RUNS[run_id]


@app.get("/stats")
async def stats():
    return STATS


class RunRequest(BaseModel):
    """pollcap's request body, as a FastAPI app would declare it."""
    run_id: str
    thread_id: str
    text: str
    subject: str | None
    deadline_ms: int


@app.post("/native", response_class=EventSourceResponse)
async def native(request: Request, body: RunRequest):
    """FastAPI's own SSE: a path operation that yields; each item is sent
    as one `data:` field of JSON (with a keep-alive comment every 15 s).
    The body comes parsed: the request stream is the response's by now."""
    run = body.model_dump()
    record(request, run)
    rec, todo = RUNS[run["run_id"]], list(script(run))
    for i, e in enumerate(todo):
        rec["sent"] += 1
        if i == len(todo) - 1:
            rec["end"] = "completed"
        yield e


@app.post("/fail")
async def fail(request: Request, how: str):
    """An agent that goes wrong the ways a FastAPI app does: refusing the
    request (HTTPException), its own `error` event, an exception raised in
    the middle of its stream."""
    run = await start(request)
    if how == "refuse":
        raise HTTPException(403, "not for you")

    async def body():
        yield json.dumps({"type": "agent_thinking", "delta": "so far "}) + "\n"
        if how == "error":
            yield json.dumps({"type": "error", "code": "agent_quota", "message": "out of tokens"}) + "\n"
            yield json.dumps({"type": "agent_thinking", "delta": "never relayed"}) + "\n"
        elif how == "raise":
            await asyncio.sleep(0)
            raise RuntimeError("the agent's bug")

    return StreamingResponse(body(), media_type="application/x-ndjson")
