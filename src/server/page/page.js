
'use strict';
// pollcap's built-in agent_chat client. No dependencies, nothing fetched
// from other hosts; every wait it makes is bounded, like the server's.
(() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  };
  const now = () => performance.now();
  const ms = (v) => (v < 10 ? v.toFixed(1) : Math.round(v)) + ' ms';
  const dur = (s) => (s < 60 ? Math.floor(s) + ' s' : s < 3600
    ? Math.floor(s / 60) + ' m ' + Math.floor(s % 60) + ' s'
    : Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' m');

  const WS_PATH = document.querySelector('meta[name="pollcap-ws-path"]').content || '/ws';
  const WS_URL = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + WS_PATH;
  const THREAD = 'page-' + Math.random().toString(36).slice(2, 10);
  // Handshake deadline of our own: a browser may wait minutes for a
  // silent server before giving up on its own.
  const OPEN_DEADLINE_MS = 10000;
  const FETCH_DEADLINE_MS = 1500;
  const HEALTH_EVERY_MS = 2000;
  // Reconnect backoff: exponential from 0.5 s, capped at 30 s, with
  // jitter over the upper half, so a fleet of tabs that lost one server
  // does not come back in lockstep, and no retry ever comes at once.
  const BACKOFF_BASE_S = 0.5;
  const BACKOFF_MAX_S = 30;
  // A subprotocol entry must be an HTTP token (RFC 7230).
  const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

  const ui = {
    status: $('status'), token: $('token'), pace: $('pace'), connect: $('connect'),
    transcript: $('transcript'), message: $('message'), send: $('send'), health: $('health'),
  };

  // ---- connection -------------------------------------------------------
  const conn = {
    ws: null, opened: false, token: '', tConnect: 0, tOpen: 0,
    purposeClose: false, attempt: 0, retryAt: 0, retryTimer: 0, retryWhy: '',
    openTimer: 0, authOn: null,
  };
  let run = null; // the run in flight (one at a time, as in a chat)

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
    ui.connect.textContent = state === 'open' ? 'disconnect' : state === 'retrying' ? 'retry now' : 'connect';
  }

  function isOpen() {
    return conn.ws && conn.ws.readyState === WebSocket.OPEN;
  }

  function connect() {
    clearTimeout(conn.retryTimer);
    conn.retryTimer = 0;
    if (conn.ws) return;
    const token = ui.token.value.trim();
    if (token && !TOKEN_CHARS.test(token)) {
      return fail('token has characters a subprotocol entry cannot carry');
    }
    // The token travels as a subprotocol entry next to agent_chat: a
    // browser cannot set Authorization on a WebSocket, and the server
    // refuses a list that offers no protocol it speaks.
    const protocols = ['agent_chat'];
    if (token) protocols.push('bearer.' + token);
    let ws;
    try {
      ws = new WebSocket(WS_URL, protocols);
    } catch (e) {
      return fail('cannot open ' + WS_URL + ': ' + e.message);
    }
    conn.ws = ws;
    conn.opened = false;
    conn.token = token;
    conn.purposeClose = false;
    conn.tConnect = now();
    setStatus('connecting', conn.attempt ? `${conn.retryWhy} (attempt ${conn.attempt + 1})` : 'connecting');
    conn.openTimer = setTimeout(() => {
      if (ws.readyState === WebSocket.CONNECTING) ws.close();
    }, OPEN_DEADLINE_MS);
    ws.onopen = () => onOpen(ws);
    ws.onmessage = (m) => onMessage(ws, m.data);
    ws.onclose = (e) => onClose(ws, e);
  }

  function disconnect(why) {
    clearTimeout(conn.retryTimer);
    conn.retryTimer = 0;
    if (!conn.ws) return;
    conn.purposeClose = true;
    conn.ws.close(1000, why);
  }

  function onOpen(ws) {
    if (ws !== conn.ws) return;
    clearTimeout(conn.openTimer);
    conn.opened = true;
    conn.tOpen = now();
    conn.attempt = 0;
    conn.retryWhy = '';
    const hs = conn.tOpen - conn.tConnect;
    // What the browser and the server agreed (permessage-deflate when both
    // compress), shown and kept for scripts on #status.
    ui.status.dataset.extensions = ws.extensions;
    const compressed = ws.extensions.startsWith('permessage-deflate') ? ' · compressed' : '';
    setStatus('open', `connected · handshake ${ms(hs)}${compressed}` + (ws.protocol === 'agent_chat' ? '' : ' · no agent_chat selected'));
    if (run && !run.finished) {
      if (!run.sentAt) transmit(run);
      else if (run.id) resume(run);
      else finishRun(run, 'error', 'the connection dropped before the run started, so it has no id to resume: send it again');
    }
    updateControls();
  }

  function onClose(ws, e) {
    if (ws !== conn.ws) return;
    clearTimeout(conn.openTimer);
    conn.ws = null;
    if (conn.purposeClose) {
      setStatus('idle', 'disconnected');
      // A Close frame from the client ends its runs on the server.
      if (run && !run.finished) finishRun(run, 'error', 'stopped: you closed the connection (a Close frame cancels the runs it started)');
    } else if (!conn.opened) {
      diagnose();
    } else if (e.code === 1001 && /shutting down/.test(e.reason)) {
      retry('server shutting down, reconnecting');
    } else if (e.code === 1001 && e.reason === 'idle' && !(run && !run.finished)) {
      setStatus('idle', 'closed by the server after an idle spell · reconnects when you send');
    } else {
      retry(`connection lost (${e.code}${e.reason ? ' ' + e.reason : ''}), reconnecting`);
    }
    updateControls();
  }

  function retry(why) {
    const cap = Math.min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** conn.attempt);
    const delay = cap / 2 + Math.random() * cap / 2;
    conn.attempt += 1;
    conn.retryWhy = why;
    conn.retryAt = now() + delay * 1000;
    clearTimeout(conn.retryTimer);
    conn.retryTimer = setTimeout(connect, delay * 1000);
    tickRetry();
  }

  function tickRetry() {
    if (!conn.retryTimer) return;
    const left = Math.max(0, (conn.retryAt - now()) / 1000);
    setStatus('retrying', `${conn.retryWhy} in ${left.toFixed(1)} s` + (conn.attempt > 1 ? ` · attempt ${conn.attempt}` : ''));
  }
  setInterval(tickRetry, 200);

  function fail(text) {
    setStatus('error', text);
    if (run && !run.finished) finishRun(run, 'error', (run.sentAt ? 'interrupted: ' : 'not sent: ') + text);
    updateControls();
  }

  // A refused upgrade reaches a page only as close code 1006: the browser
  // hides the HTTP status and body of a failed handshake. So ask the same
  // server why: /health names draining, an open breaker or a full house
  // (503), and /auth checks the token exactly as the upgrade does (401).
  async function diagnose() {
    setStatus('connecting', 'handshake failed · asking the server why');
    const h = await getJSON('/health');
    if (!h) return retry('server unreachable, retrying');
    if (h.status === 503 || h.body.status === 'draining') return retry('503: server draining, retrying');
    if (h.body.breaker && h.body.breaker.state === 'open') return retry('503: circuit breaker open, retrying');
    const app = h.body.app;
    if (app && app !== 'agent_chat' && app !== 'flaky-open') {
      return fail(`400: this server runs the ${app} application, not agent_chat`);
    }
    const c = h.body.connections;
    if (c && c.open >= c.max) return retry('503: too many connections, retrying');
    if (h.body.auth) {
      const a = await getJSON('/auth', conn.token);
      if (a && a.status === 401) {
        const why = a.body && a.body.error ? ' (' + a.body.error + ')' : '';
        // A refused token does not improve by retrying: wait for a new one.
        return fail(conn.token ? '401: token rejected' + why : '401: token required · paste a token');
      }
    }
    retry('handshake failed (1006), retrying');
  }

  async function getJSON(path, token) {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), FETCH_DEADLINE_MS);
    try {
      const headers = token ? { Authorization: 'Bearer ' + token } : {};
      const r = await fetch(path, { cache: 'no-store', headers, signal: ctl.signal });
      let body = null;
      try { body = await r.json(); } catch (_) { /* not JSON: status alone */ }
      return { status: r.status, body: body || {} };
    } catch (_) {
      return null;
    } finally {
      clearTimeout(t);
    }
  }

  // ---- runs -------------------------------------------------------------
  function send() {
    const text = ui.message.value.trim();
    if (!text || (run && !run.finished)) return;
    ui.message.value = '';
    run = newRun(text);
    if (isOpen() && conn.token !== ui.token.value.trim()) {
      disconnect('token changed'); // no run in flight: nothing is cancelled
      conn.ws = null;
    }
    if (isOpen()) transmit(run);
    else connect();
    updateControls();
  }

  function newRun(text) {
    const empty = $('empty');
    if (empty) empty.remove();
    const user = el('div', 'user', text);
    user.dataset.type = 'user_message';
    const box = el('article', 'run live');
    const timings = el('div', 'timings');
    box.append(timings);
    ui.transcript.append(user, box);
    scroll();
    return {
      text, box, timings, id: null, lastSeq: 0, deltas: [], dups: 0, missing: 0, resumes: 0,
      stream: null, thinking: null, tool: null, t: {}, sentAt: 0, finished: false,
    };
  }

  function transmit(r) {
    const msg = { type: 'user_message', text: r.text, thread_id: THREAD };
    if (ui.pace.value) msg.pacing_ms = Number(ui.pace.value);
    r.t = { connect: conn.tConnect, open: conn.tOpen, sent: now() };
    r.sentAt = r.t.sent;
    conn.ws.send(JSON.stringify(msg));
    renderTimings(r);
  }

  function resume(r) {
    r.resumes += 1;
    const n = el('div', 'note', `connection lost · resumed ${r.id} after seq ${r.lastSeq} (resume #${r.resumes})`);
    n.dataset.type = 'resume';
    n.dataset.afterSeq = r.lastSeq;
    insert(r, n);
    conn.ws.send(JSON.stringify({ type: 'resume', run_id: r.id, after_seq: r.lastSeq }));
  }

  function onMessage(ws, data) {
    if (ws !== conn.ws) return;
    let ev;
    try { ev = JSON.parse(data); } catch (_) { ev = { type: 'error', code: 'client', message: 'unreadable frame from the server' }; }
    const r = run;
    if (!r || r.finished || (ev.run_id && r.id && ev.run_id !== r.id)) {
      // Not for the run in flight (e.g. a late error of an earlier one).
      const other = el('div', 'note', `${ev.type}${ev.run_id ? ' for ' + ev.run_id : ''}: ${ev.message || ev.code || ''}`);
      other.dataset.type = ev.type || 'unknown';
      ui.transcript.append(other);
      return scroll();
    }
    if (ev.run_id && !r.id) r.id = ev.run_id;
    if (typeof ev.seq === 'number') {
      // seq grows by exactly one per event of a run: a repeat is dropped
      // (and counted), a jump is a gap (and shown).
      if (ev.seq <= r.lastSeq) { r.dups += 1; return renderTimings(r); }
      if (ev.seq !== r.lastSeq + 1) {
        r.missing += ev.seq - r.lastSeq - 1;
        insert(r, el('div', 'note', `gap: events ${r.lastSeq + 1}–${ev.seq - 1} never arrived`));
      }
      r.lastSeq = ev.seq;
    }
    if (!r.t.first) r.t.first = now();
    render(r, ev);
    renderTimings(r);
    scroll();
  }

  function tag(e, ev) {
    e.dataset.type = ev.type;
    if (ev.seq != null) e.dataset.seq = ev.seq;
    return e;
  }

  function insert(r, node) {
    r.box.insertBefore(node, r.timings);
  }

  const ERRORS = {
    bad_request: 'the server could not read the message',
    overloaded: 'the server is busy; try again in a moment',
    draining: 'the server is shutting down; send again once reconnected',
    execution_timeout: 'the agent did not finish within the execution deadline',
    resume_unavailable: 'the server no longer has this run (expired, unknown, or started elsewhere without a shared store), so it cannot continue',
    resume_interrupted: 'the server lost the run while replaying it (its store failed); send the message again',
    cancelled: 'the run was cancelled: its connection was closed by the client',
    handler_failure: 'the agent failed while answering',
  };

  function render(r, ev) {
    switch (ev.type) {
      case 'agent_started': {
        insert(r, tag(el('div', 'ev started', `agent started · run ${ev.run_id}`), ev));
        break;
      }
      case 'agent_thinking': {
        if (!r.stream) {
          r.thinking = el('details', 'thinking');
          r.thinking.open = true;
          r.thinking.append(el('summary', '', 'thinking'));
          r.stream = el('p', 'stream');
          r.thinking.append(r.stream);
          insert(r, r.thinking);
        }
        r.deltas.push(ev.delta || '');
        r.stream.append(tag(el('span', '', ev.delta || ''), ev));
        r.thinking.firstChild.textContent = `thinking · ${r.deltas.length} deltas`;
        break;
      }
      case 'tool_executing': {
        const t = tag(el('div', 'ev tool running'), ev);
        t.append(el('span', 'chip', `⚙ ${ev.tool}`), el('span', 'dim', 'running…'));
        insert(r, t);
        r.tool = t;
        break;
      }
      case 'tool_completed': {
        if (r.tool) { r.tool.classList.remove('running'); r.tool.lastChild.textContent = 'ran'; }
        const t = tag(el('div', 'ev tool doneTool'), ev);
        t.append(el('span', 'chip', `✓ ${ev.tool}`));
        const res = ev.result;
        if (res && typeof res === 'object') {
          for (const [k, v] of Object.entries(res)) t.append(el('span', 'chip mono', `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`));
        } else if (res != null) {
          t.append(el('span', 'chip mono', String(res)));
        }
        insert(r, t);
        break;
      }
      case 'agent_completed': {
        r.t.done = now();
        const f = tag(el('div', 'ev final'), ev);
        const streamed = r.deltas.join('');
        const check = ev.final === streamed ? '' : ' · differs from the streamed text';
        f.append(el('div', 'label', 'final answer' + check), el('p', '', ev.final == null ? '' : ev.final));
        insert(r, f);
        if (r.thinking) r.thinking.open = false;
        finishRun(r);
        break;
      }
      case 'error': {
        const words = ERRORS[ev.code] || 'the server reported an error';
        const detail = ev.message && ev.message !== words ? ` (${ev.message})` : '';
        insert(r, tag(el('div', 'ev error', `${words}${detail} · ${ev.code || 'error'}`), ev));
        finishRun(r);
        break;
      }
      default:
        insert(r, tag(el('div', 'ev note', `${ev.type}: ${JSON.stringify(ev)}`), ev));
    }
  }

  function finishRun(r, kind, text) {
    if (text) insert(r, el('div', kind === 'error' ? 'ev error' : 'note', text));
    r.finished = true;
    r.box.classList.remove('live');
    renderTimings(r);
    updateControls();
    scroll();
  }

  // connect → open (the connection's handshake) → first event → completed
  // (both counted from sending the message).
  function renderTimings(r) {
    const t = r.t;
    const box = r.timings;
    box.textContent = '';
    const parts = [];
    const set = (k, v) => { if (v != null) box.dataset[k] = Math.round(v); };
    const open = t.open && t.connect ? t.open - t.connect : null;
    const first = t.first && t.sent ? t.first - t.sent : null;
    const done = t.done && t.sent ? t.done - t.sent : null;
    set('openMs', open); set('firstMs', first); set('doneMs', done);
    box.dataset.dups = r.dups; box.dataset.missing = r.missing; box.dataset.resumes = r.resumes;
    if (open != null) parts.push(`connect→open ${ms(open)}`);
    parts.push(first != null ? `first event ${ms(first)}` : r.sentAt ? 'waiting for the first event' : 'not sent yet');
    if (done != null) parts.push(`completed ${ms(done)}`);
    if (r.lastSeq) parts.push(`seq 1–${r.lastSeq}`);
    if (r.resumes) parts.push(`resumed ×${r.resumes}`);
    if (r.dups || r.missing) parts.push(`${r.dups} duplicate, ${r.missing} missing`);
    const bars = el('div', 'bars');
    const seg = [open, first, done != null && first != null ? done - first : null];
    seg.forEach((v, i) => {
      if (v == null) return;
      const s = el('i', 'b' + i);
      s.style.flexGrow = Math.max(v, 1); // CSSOM, allowed by the policy
      s.title = ['connect → open', 'sent → first event', 'first event → completed'][i] + ': ' + ms(v);
      bars.append(s);
    });
    box.append(el('span', '', parts.join(' · ')), bars);
  }

  function scroll() {
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  function updateControls() {
    ui.send.disabled = !!(run && !run.finished);
    ui.send.textContent = ui.send.disabled ? 'Streaming…' : 'Send';
  }

  ui.send.addEventListener('click', send);
  ui.message.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  ui.token.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); reconnectNow(); }
  });
  ui.connect.addEventListener('click', () => {
    if (isOpen()) disconnect('user');
    else reconnectNow();
  });
  function reconnectNow() {
    if (isOpen()) { disconnect('token changed'); conn.ws = null; }
    conn.attempt = 0;
    connect();
  }

  // ---- health -----------------------------------------------------------
  const CAUSES = [['by_io', 'I/O ready'], ['by_waker', 'waker'], ['by_deadline', 'hard deadline'],
    ['by_soft_deadline', 'soft deadline'], ['by_cap', 'cap'], ['busy', 'busy turn'], ['interrupted', 'interrupted']];
  // The order a connection meets them (the JSON object is sorted by name).
  const PHASES = ['connect', 'handshake', 'ping', 'heartbeat', 'stale', 'lifetime', 'close', 'execution',
    'linger', 'agent_connect', 'agent_response', 'agent_idle'];
  const HISTORY = 150; // 5 minutes at one sample per 2 s
  const samples = [];
  let last = null;

  function show(key, text) {
    for (const e of ui.health.querySelectorAll(`[data-k="${key}"]`)) {
      e.textContent = text;
      e.dataset.v = text;
    }
  }

  function rows(table, list) {
    const body = table.tBodies[0];
    body.textContent = '';
    const top = Math.max(1, ...list.map((x) => x.bar || 0));
    for (const x of list) {
      const tr = el('tr', x.hot ? 'hot' : '');
      tr.dataset.row = x.key;
      const name = el('td', '', x.name);
      if (x.bar != null) {
        const m = el('span', 'meter');
        m.style.width = (100 * x.bar / top).toFixed(1) + '%';
        name.append(m);
      }
      tr.append(name, el('td', '', x.value));
      body.append(tr);
    }
  }

  async function health() {
    const h = await getJSON('/health');
    setTimeout(health, HEALTH_EVERY_MS);
    if (!h || !h.body.reactor) {
      ui.health.classList.add('stale');
      return show('status', 'unreachable');
    }
    ui.health.classList.remove('stale');
    const b = h.body;
    conn.authOn = b.auth;
    show('status', b.status);
    show('profile', b.profile);
    show('backend', b.backend);
    show('poll_cap', b.poll_cap);
    show('uptime', dur(b.uptime_s));
    if (b.store) {
      show('store', b.store.kind + (b.store.up ? '' : ' (down)'));
      show('resumes', `${b.store.resumes} served, ${b.store.resumes_unavailable} refused`);
    }
    show('connections.open', String(b.connections.open));
    show('handshake.p50', ms(b.handshake_latency_ms.p50));
    show('handshake.p99', ms(b.handshake_latency_ms.p99));
    show('breaker.state', b.breaker.state.replace('_', '-'));
    const r = b.reactor;
    const dt = last ? b.uptime_s - last.uptime_s : 0;
    const rate = (k) => (dt > 0 ? Math.max(0, (r[k] - last.reactor[k]) / dt) : 0);
    if (dt > 0) {
      samples.push({ w: rate('waits'), c: b.connections.open });
      if (samples.length > HISTORY) samples.shift();
      chart();
    }
    rows($('wakeups'), CAUSES.map(([k, name]) => ({
      key: k, name, bar: rate(k), value: `${r[k]} · ${dt > 0 ? rate(k).toFixed(1) : '–'}/s`,
    })));
    const phases = PHASES.filter((p) => p in b.timeouts)
      .concat(Object.keys(b.timeouts).filter((p) => !PHASES.includes(p)));
    rows($('timeouts'), phases.map((phase) => ({
      key: phase, name: phase, value: String(b.timeouts[phase]),
      hot: last && b.timeouts[phase] > last.timeouts[phase],
    })));
    last = b;
  }

  // The line fills the width with what it has, up to the last 5 minutes.
  function chart() {
    const W = 300, H = 96, pad = 6;
    const step = W / Math.max(1, samples.length - 1);
    const y = (v, max) => (H - pad - (H - 2 * pad) * v / max).toFixed(1);
    const fmt = (v, int) => (int || v >= 10 ? String(Math.round(v)) : v.toFixed(1));
    const line = (id, pick, int) => {
      const vals = samples.map(pick);
      const max = Math.max(1, ...vals);
      const top = max * 1.15; // headroom: the line stays off the frame
      const pts = vals.map((v, i) => `${(i * step).toFixed(1)},${y(v, top)}`);
      $(id).setAttribute('points', pts.join(' '));
      return { pts, max: fmt(max, int), cur: fmt(vals[vals.length - 1], int) };
    };
    const w = line('line-wakeups', (s) => s.w, false);
    $('area-wakeups').setAttribute('points', `0,${H} ${w.pts.join(' ')} ${W},${H}`);
    const c = line('line-conns', (s) => s.c, true);
    show('rate.wakeups', w.cur); show('max.wakeups', w.max);
    show('rate.conns', c.cur); show('max.conns', c.max);
    show('window', 'last ' + dur((samples.length * HEALTH_EVERY_MS) / 1000));
  }

  // ---- start ------------------------------------------------------------
  (async () => {
    await health();
    updateControls();
    if (conn.authOn && !ui.token.value.trim()) {
      setStatus('idle', 'authentication is on · paste a token, then connect or send');
    } else {
      connect();
    }
  })();
})();
