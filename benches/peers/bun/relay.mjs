// A relay on Bun, a peer for scripts/bench-relay: a `Bun.serve` WebSocket
// (uWebSockets) that turns each agent_chat `user_message` into one `fetch`
// POST to the agent and relays the Server-Sent Events it streams back.
//   bun benches/peers/bun/relay.mjs PORT AGENT_URL
// Listens on 127.0.0.1 only; `/ws` upgrades (choosing the `agent_chat`
// subprotocol when offered), anything else gets 400.
//
// It does the job pollcap's `serve --agent-url` does, minus the deadlines,
// the breaker and the resume store: the POST carries {"run_id",
// "thread_id","text","subject","deadline_ms"}; an `agent_started` goes to
// the client when the agent answers 2xx; every `data:` field is parsed as
// a JSON event, stamped with `run_id`, `seq` and `ts` and sent as one text
// message; `agent_completed` or `error` ends the run; a non-2xx answer, a
// bad event or a stream cut short becomes an `error` event. A client that
// closes aborts its runs' requests.
//
// Bun's `fetch` runs at most 256 requests at once unless the environment
// sets BUN_CONFIG_MAX_HTTP_REQUESTS (scripts/bench-relay raises it above
// the run count); it keeps its upstream connections alive and reuses them.

const [portArg, agentUrl] = process.argv.slice(2);
const port = Number(portArg);
if (!Number.isInteger(port) || port <= 0 || port > 65535 || !agentUrl) {
  console.error("usage: relay.mjs PORT AGENT_URL");
  process.exit(2);
}

const DEADLINE_MS = 60_000;
let nextRun = 0;

function stamp(ws, run, ev) {
  ev.run_id = run.id;
  ev.seq = ++run.seq;
  ev.ts = Date.now();
  ws.send(JSON.stringify(ev));
}

async function relay(ws, msg) {
  const run = { id: `run-${++nextRun}`, seq: 0, abort: new AbortController() };
  ws.data.runs.add(run);
  const fail = (code, message) => stamp(ws, run, { type: "error", code, message });
  try {
    const res = await fetch(agentUrl, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "text/event-stream, application/jsonl",
        "idempotency-key": run.id,
      },
      body: JSON.stringify({
        run_id: run.id,
        thread_id: msg.thread_id ?? "",
        text: msg.text ?? "",
        subject: null,
        deadline_ms: DEADLINE_MS,
      }),
      signal: run.abort.signal,
    });
    if (!res.ok) {
      await res.body?.cancel();
      return fail("upstream_unavailable", `the agent answered ${res.status}`);
    }
    stamp(ws, run, { type: "agent_started", thread_id: msg.thread_id ?? "" });
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of res.body) {
      buf += dec.decode(chunk, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(5).trimStart();
        }
        if (!data) continue; // a comment or keep-alive
        let ev;
        try {
          ev = JSON.parse(data);
        } catch {
          run.abort.abort();
          return fail("upstream_invalid", "an event is not JSON");
        }
        if (typeof ev !== "object" || ev === null || typeof ev.type !== "string") {
          run.abort.abort();
          return fail("upstream_invalid", "an event has no string type");
        }
        stamp(ws, run, ev);
        if (ev.type === "agent_completed" || ev.type === "error") {
          run.abort.abort();
          return;
        }
      }
    }
    fail("upstream_truncated", "the agent's stream ended before agent_completed");
  } catch (e) {
    if (!run.abort.signal.aborted) fail("upstream_unavailable", String(e));
  } finally {
    ws.data.runs.delete(run);
  }
}

const server = Bun.serve({
  port,
  hostname: "127.0.0.1",
  fetch(req, server) {
    const offered = (req.headers.get("sec-websocket-protocol") ?? "")
      .split(",")
      .map((p) => p.trim());
    const headers = offered.includes("agent_chat") ? { "Sec-WebSocket-Protocol": "agent_chat" } : {};
    if (server.upgrade(req, { data: { runs: new Set() }, headers })) return;
    return new Response("not a WebSocket upgrade\n", {
      status: 400,
      headers: { Connection: "close" },
    });
  },
  websocket: {
    message(ws, m) {
      let msg;
      try {
        msg = JSON.parse(m);
      } catch {
        return;
      }
      if (msg?.type === "user_message") relay(ws, msg);
    },
    close(ws) {
      for (const run of ws.data.runs) run.abort.abort();
    },
  },
});

console.error(
  `bun relay: ws://127.0.0.1:${server.port}/ws -> ${agentUrl} ` +
    `(BUN_CONFIG_MAX_HTTP_REQUESTS=${process.env.BUN_CONFIG_MAX_HTTP_REQUESTS ?? "256"})`,
);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.stop(true);
    process.exit(0);
  });
}
