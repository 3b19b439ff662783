"""A relay on FastAPI + httpx under uvicorn, a peer for scripts/bench-relay
(the stack pollcap's `serve --agent-url` replaces):

    python relay.py PORT AGENT_URL [--client per-run|shared]

A FastAPI WebSocket endpoint at /ws (choosing the `agent_chat` subprotocol
when offered) that turns each agent_chat `user_message` into one httpx POST
to the agent and relays the Server-Sent Events it streams back: the POST
carries {"run_id","thread_id","text","subject","deadline_ms"}; an
`agent_started` goes to the client when the agent answers 2xx; every
`data:` field is parsed as a JSON event, stamped with `run_id`, `seq` and
`ts` and sent as one text message; `agent_completed` or `error` ends the
run; a non-2xx answer, a bad event or a stream cut short becomes an `error`
event. Each run is a task, so the socket keeps being read meanwhile, and a
client that goes away cancels its runs (httpx then closes the upstream
connection).

One process, one thread, one event loop, on uvicorn's defaults otherwise:
with `uvicorn[standard]` installed that is uvloop, httptools and the
websockets sans-I/O protocol. No timeouts (neither peer has deadlines).

The httpx client (--client):
- `per-run` (default): one `AsyncClient` per run, closed when the run
  ends, sharing one SSL context (building one per client costs
  milliseconds). Each pool then holds one connection.
- `shared`: one `AsyncClient` for the process, its pool unbounded (the
  default of 100 connections would queue every other run), as httpx's
  documentation recommends. httpcore 1.0's pool rescans every connection
  for every queued request (`_assign_requests_to_connections`, O(N x M);
  encode/httpcore#1035): with 10 000 runs started together it relayed no
  event within 90 s here, so the benchmark measures `per-run`.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import ssl
import sys
import time

import httpx
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

DEADLINE_MS = 60_000
agent_url = ""
mode = "per-run"
client: httpx.AsyncClient | None = None
ssl_context = ssl.create_default_context()


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI):
    global client
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    if mode == "shared":
        async with httpx.AsyncClient(timeout=None, limits=limits) as c:
            client = c
            yield
    else:
        yield


app = FastAPI(lifespan=lifespan)
run_ids = itertools.count(1)
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


async def relay(ws: WebSocket, msg: dict) -> None:
    run_id = f"run-{next(run_ids)}"
    seq = 0

    async def send(ev: dict) -> None:
        nonlocal seq
        seq += 1
        ev["run_id"] = run_id
        ev["seq"] = seq
        ev["ts"] = int(time.time() * 1000)
        await ws.send_text(dumps(ev))

    body = {
        "run_id": run_id,
        "thread_id": msg.get("thread_id", ""),
        "text": msg.get("text", ""),
        "subject": None,
        "deadline_ms": DEADLINE_MS,
    }
    headers = {
        "accept": "text/event-stream, application/jsonl",
        "idempotency-key": run_id,
    }
    try:
        async with contextlib.AsyncExitStack() as stack:
            http = client
            if http is None:
                http = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=None, verify=ssl_context))
            res = await stack.enter_async_context(
                http.stream("POST", agent_url, json=body, headers=headers))
            if res.status_code // 100 != 2:
                await send({"type": "error", "code": "upstream_unavailable",
                            "message": f"the agent answered {res.status_code}"})
                return
            await send({"type": "agent_started", "thread_id": body["thread_id"]})
            data = []
            async for line in res.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                    continue
                if line or not data:
                    continue  # another field, a comment, a keep-alive
                text, data = "\n".join(data), []
                try:
                    ev = json.loads(text)
                except ValueError:
                    await send({"type": "error", "code": "upstream_invalid",
                                "message": "an event is not JSON"})
                    return
                if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
                    await send({"type": "error", "code": "upstream_invalid",
                                "message": "an event has no string type"})
                    return
                await send(ev)
                if ev["type"] in ("agent_completed", "error"):
                    return
            await send({"type": "error", "code": "upstream_truncated",
                        "message": "the agent's stream ended before agent_completed"})
    except (WebSocketDisconnect, asyncio.CancelledError):
        raise
    except Exception as e:  # the upstream failed: an error event
        try:
            await send({"type": "error", "code": "upstream_unavailable",
                        "message": f"{type(e).__name__}: {e}"})
        except Exception:
            pass


@app.websocket("/ws")
async def endpoint(ws: WebSocket) -> None:
    offered = ws.headers.get("sec-websocket-protocol", "")
    protocols = [p.strip() for p in offered.split(",")]
    await ws.accept(subprotocol="agent_chat" if "agent_chat" in protocols else None)
    runs: set[asyncio.Task] = set()
    try:
        while True:
            try:
                msg = json.loads(await ws.receive_text())
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("type") == "user_message":
                t = asyncio.create_task(relay(ws, msg))
                runs.add(t)
                t.add_done_callback(runs.discard)
    except WebSocketDisconnect:
        pass
    finally:
        for t in runs:
            t.cancel()




def main() -> None:
    global agent_url, mode
    args = sys.argv[1:]
    if len(args) == 4 and args[2] == "--client" and args[3] in ("per-run", "shared"):
        mode = args[3]
        args = args[:2]
    if len(args) != 2:
        print("usage: relay.py PORT AGENT_URL [--client per-run|shared]", file=sys.stderr)
        sys.exit(2)
    port, agent_url = int(args[0]), args[1]
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                backlog=4096, ws_per_message_deflate=False)


if __name__ == "__main__":
    main()
