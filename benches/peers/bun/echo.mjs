// Echo server on Bun (uWebSockets), a peer for scripts/bench-peers:
//   bun benches/peers/bun/echo.mjs PORT [--tls CERT KEY] [--ping-seconds N] [--deflate]
// Listens on 127.0.0.1 only. Text and binary messages are echoed as they
// came; uWebSockets answers pings and the closing handshake itself.
// Bun.serve() refuses a `websocket` handler alone (it needs `fetch` or
// `routes`): `fetch` upgrades, anything else gets 400 + Connection: close.
// Its listen backlog is uSockets' fixed 512 (ss -ltn); Bun.serve has no option.
// Install Bun with scripts/peers-install (npm's bun@1 into .cache/bun).
//
// --deflate: `perMessageDeflate: true`, Bun's documented switch: uWebSockets'
// shared compressor and decompressor, answering `client_no_context_takeover;
// server_no_context_takeover` (no memory per socket). Without it Bun declines
// the extension.
//
// Heartbeat. Bun has no ping interval: it has `idleTimeout` (seconds, default
// 120, at most 960) and `sendPings` (default true). What uWebSockets does with
// them (packages/bun-uws/src/WebSocketContext.h, WebSocketContextData.h):
// - it subtracts a margin from idleTimeout when sendPings is on: 4 s if
//   idleTimeout < 16, 8 s if < 32, else 16 s;
// - the timer is re-armed to (idleTimeout - margin) whenever data arrives
//   (and, with resetIdleTimeoutOnSend, on every successful send);
// - when it fires, a Ping is sent and the timer re-armed to `margin`; any
//   frame from the client (its Pong) re-arms it to (idleTimeout - margin);
//   if nothing arrives within `margin` the connection is closed (1006);
// - uSockets' timers tick every 4 s, so every deadline is rounded to 4 s.
// So an idle connection is pinged every (idleTimeout - margin) s plus the
// round trip, in 4 s steps. --ping-seconds N picks idleTimeout so that
// idleTimeout - margin = N (N is rounded up to a multiple of 4). Without
// it, Bun's defaults apply: a ping after ~104 s of silence.

const args = process.argv.slice(2);
const usage = "usage: echo.mjs PORT [--tls CERT KEY] [--ping-seconds N] [--deflate]";
const port = Number(args[0]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(usage);
  process.exit(2);
}
let tls;
let pingSeconds;
let deflate = false;
for (let i = 1; i < args.length; i++) {
  if (args[i] === "--tls" && i + 2 < args.length) {
    tls = { cert: Bun.file(args[i + 1]), key: Bun.file(args[i + 2]) };
    i += 2;
  } else if (args[i] === "--deflate") {
    deflate = true;
  } else if (args[i] === "--ping-seconds" && i + 1 < args.length) {
    pingSeconds = Number(args[++i]);
    if (!(pingSeconds > 0)) {
      console.error(usage);
      process.exit(2);
    }
  } else {
    console.error(usage);
    process.exit(2);
  }
}

// idleTimeout such that idleTimeout - margin(idleTimeout) = n (see above).
function idleTimeoutFor(seconds) {
  const n = Math.max(4, Math.ceil(seconds / 4) * 4);
  if (n + 4 < 16) return n + 4;
  if (n + 8 < 32) return n + 8;
  return Math.min(n + 16, 960);
}

// Bun compresses a message only when `send` is asked to (its second
// argument), whatever perMessageDeflate says.
const websocket = {
  message(ws, m) {
    ws.send(m, deflate);
  },
  perMessageDeflate: deflate,
};
if (pingSeconds !== undefined) {
  websocket.idleTimeout = idleTimeoutFor(pingSeconds);
  websocket.sendPings = true;
}

const server = Bun.serve({
  port,
  hostname: "127.0.0.1",
  tls,
  fetch(req, server) {
    if (server.upgrade(req)) return;
    return new Response("not a WebSocket upgrade\n", {
      status: 400,
      headers: { Connection: "close" },
    });
  },
  websocket,
});

const scheme = tls ? "wss" : "ws";
const ping = websocket.idleTimeout
  ? `, idleTimeout ${websocket.idleTimeout} s with sendPings`
  : "";
console.error(`bun echo: ${scheme}://127.0.0.1:${server.port}${ping}${deflate ? ", perMessageDeflate" : ""}`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.stop(true);
    process.exit(0);
  });
}
