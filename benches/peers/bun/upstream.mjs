// The agent every relay in scripts/bench-relay streams from: one Bun
// (uWebSockets) HTTP server answering each POST with Server-Sent Events.
//   bun benches/peers/bun/upstream.mjs PORT
// Listens on 127.0.0.1 only. Per POST (any path): E events, one every P ms
// (query `?events=E&period_ms=P`, defaults 50 and 100), each one JSON object
//   {"type":"agent_thinking","delta":"tok ","i":K,"t_us":T}
// and the last one {"type":"agent_completed","final":"done","i":E,"t_us":T}.
// `t_us` is the emit time in µs since the Unix epoch
// (performance.timeOrigin + performance.now(): CLOCK_REALTIME with µs
// resolution), read just before the event is queued, so a load client on
// the same machine computes the latency a relay added as its receive time
// minus t_us. `i` lets it check that every event arrived once, in order.
// The request body (pollcap's {"run_id",...}) is read and ignored. A
// client that goes away cancels the stream (its timer stops).
//
// Bun.serve's own idle timeout (10 s by default) would close a quiet
// stream: it is turned off. Install Bun with scripts/peers-install.

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: upstream.mjs PORT");
  process.exit(2);
}

const origin = performance.timeOrigin;
const nowUs = () => Math.round((origin + performance.now()) * 1000);
const enc = new TextEncoder();
const headers = {
  "content-type": "text/event-stream",
  "cache-control": "no-cache",
};
let streams = 0;

const server = Bun.serve({
  port,
  hostname: "127.0.0.1",
  idleTimeout: 0,
  async fetch(req) {
    if (req.method !== "POST") {
      return new Response(`streams started: ${streams}\n`);
    }
    const q = new URL(req.url).searchParams;
    const events = Number(q.get("events") ?? 50);
    const period = Number(q.get("period_ms") ?? 100);
    await req.arrayBuffer();
    streams++;
    let timer;
    const body = new ReadableStream({
      start(c) {
        let i = 0;
        timer = setInterval(() => {
          i++;
          const last = i >= events;
          const ev = last
            ? { type: "agent_completed", final: "done", i, t_us: nowUs() }
            : { type: "agent_thinking", delta: "tok ", i, t_us: nowUs() };
          try {
            c.enqueue(enc.encode(`data: ${JSON.stringify(ev)}\n\n`));
            if (last) {
              clearInterval(timer);
              c.close();
            }
          } catch {
            clearInterval(timer); // the client went away
          }
        }, period);
      },
      cancel() {
        clearInterval(timer);
      },
    });
    return new Response(body, { headers });
  },
});

console.error(`bun upstream: http://127.0.0.1:${server.port}/`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.stop(true);
    process.exit(0);
  });
}
