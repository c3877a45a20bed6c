/* kvpaxos live dashboard: plain JavaScript, no build step, no external files.
 *
 * Data sources (all on the cluster's own nodes):
 *  - GET /v1/status of every member, twice a second: up or down, role, ballot,
 *    leader, chosen and applied slot. A member that does not answer is shown
 *    down at once.
 *  - The members are those of the configuration (the "members" part of the
 *    snapshots below, as each node applied it; the node that applied the most
 *    slots has the newest), plus the serving node and its status "peers". A
 *    node that joins is polled from then on; a removed node is shown as removed
 *    for a short while, then dropped, and no longer polled.
 *  - GET /v1/events (server-sent events) of one node, a few times a second:
 *    that node's full view (its log window with batches, its counters, its
 *    write statistics). It starts on the node that served this page and moves
 *    to another live node when that one stops answering.
 *  - GET /v1/dashboard of every other live member, once a second: the same
 *    view, so the log strip can show what each node's acceptor holds.
 * The "try it" panel sends GET/PUT/DELETE /v1/kv/KEY to the server picked and
 * asks that server (GET /v1/dashboard/find) which slot the write landed in.
 *
 * Client token: on a cluster started with `kv serve --token-file`, the data
 * routes answer 401 without `Authorization: Bearer <token>`. The page is then
 * opened as http://HOST:PORT/#token=<token>: the fragment never reaches a
 * server or its logs; the page moves the token to sessionStorage (this tab
 * only), takes it out of the address bar, and sends it with every request. As
 * EventSource cannot send a header, the event stream is then read with fetch()
 * (see fetchEvents). A 401 shows a note saying how to open the page.
 */
"use strict";

(() => {
  const POLL_STATUS_MS = 500;
  const STATUS_TIMEOUT_MS = 1000;
  const POLL_VIEW_MS = 1000;
  const VIEW_TIMEOUT_MS = 1500;
  const STREAM_STALE_MS = 1600;
  const STREAM_FIRST_EVENT_MS = 3000;
  const HOME_AGAIN_AFTER_MS = 3000;
  const TRY_TIMEOUT_MS = 15000;
  const RATE_POINTS = 120;
  const SERIES_SECONDS = 300;
  const STRIP_SLOTS = 24;
  const TIMELINE_MAX = 80;
  const LAT_BASE_MS = 0.25;
  const REMOVED_SHOWN_MS = 20000;  // a removed node's card stays, greyed, this long
  const STREAM_RETRY_MS = 1000;   // as the server's "retry:" (what EventSource would wait)
  const REFUSED_RETRY_MS = 5000;  // a node that answered 401: ask again this often, not faster
  const TOKEN_KEY = "kvpaxos-token";
  const CONFIG_HISTORY_SHOWN = 12;
  const MSG_TYPES = [
    ["Prepare", "phase 1a"], ["Promise", "phase 1b"], ["Accept", "phase 2a"],
    ["Accepted", "phase 2b"], ["Commit", "chosen"], ["Heartbeat", "leader alive"],
    ["HeartbeatAck", ""], ["Reject", "ballot too low"], ["CatchUpRequest", "fetch log"],
    ["ClientRequest", "forwarded write"],
  ];
  // Counted where sent, except forwarded writes, which are counted where they arrive.
  const COUNTER_OF = { ClientRequest: "recv_ClientRequest" };
  const STATE_RANK = { applied: 4, chosen: 3, accepted: 2, proposed: 1, none: 0, unknown: 0, down: 0 };

  const $ = (id) => document.getElementById(id);
  const S = {
    members: new Map(),
    homeId: null,
    streamId: null,
    es: null,              // the event stream: an EventSource, or fetchEvents' stream with a token
    token: null,           // the client token (from #token=..., kept in sessionStorage), or null
    auth: null,            // null, or "missing" / "refused" after a 401: {why, node}
    lastEventAt: 0,
    streamOpenedAt: 0,
    offsetMs: 0,
    leader: null,
    lastLeader: null,
    leaderChanges: 0,
    rateHist: new Map(MSG_TYPES.map(([t]) => [t, []])),
    fsyncRate: 0,
    timeline: [],
    highlight: null,
    highlightUntil: 0,
    tryServer: null,
    clientId: "dashboard-" + randHex(12),
    seq: 0,
    busy: false,
    renderQueued: false,
    config: null,          // the newest configuration seen: a /v1/members document plus "from" (node id)
    removed: new Set(),    // ids removed from the configuration: never polled or shown again once dropped
    changesSeen: null,     // Set of "slot:what" of changes already reported in the timeline
    effectiveSeen: new Set(),
  };

  // -- helpers ---------------------------------------------------------------

  function randHex(n) {
    const bytes = new Uint8Array(n);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("").slice(0, n);
  }

  function esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

  // -- the client token -----------------------------------------------------------

  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: the token lasts as long as the page */ }
  }

  // The token from the address's fragment (#token=...), moved to sessionStorage and out of
  // the address bar (and so out of the history and of bookmarks); else the one stored earlier.
  function takeToken() {
    const found = /^#(?:.*&)?token=([^&]*)/.exec(location.hash);
    if (found) {
      let token = found[1];
      try { token = decodeURIComponent(token); } catch (e) { /* use it as written */ }
      token = token.trim();
      storeToken(token);
      const rest = location.hash.slice(1).split("&").filter((p) => !p.startsWith("token=")).join("&");
      history.replaceState(history.state, "", location.pathname + location.search + (rest ? "#" + rest : ""));
      return token || null;
    }
    try { return sessionStorage.getItem(TOKEN_KEY) || null; } catch (e) { return S.token; }
  }

  function withToken(headers = {}) {
    return S.token ? { ...headers, Authorization: "Bearer " + S.token } : headers;
  }

  // A node answered 401: say how to open the page (never the token itself).
  function authRefused(m) {
    const why = S.token ? "refused" : "missing";
    const node = m ? m.id : null;
    if (S.auth && S.auth.why === why && S.auth.node === node) return;
    if (!S.auth) addEvent("down", S.token ? `node ${node ?? "?"} refused this page's token (401)` : `node ${node ?? "?"} needs a client token (401)`);
    S.auth = { why, node };
    renderAuth();
    renderConn();
  }

  function authOk() {
    if (!S.auth) return;
    S.auth = null;
    renderAuth();
  }

  function renderAuth() {
    const box = $("auth-note");
    if (!S.auth) {
      box.hidden = true;
      delete box.dataset.auth;
      return;
    }
    const page = `${location.protocol}//${location.host}${location.pathname}`;
    const who = S.auth.node != null ? `Node ${S.auth.node}` : "This node";
    const how = `open this page as <code>${esc(page)}#token=&lt;token&gt;</code>, with the client token ` +
      `(the text of the file given to <code>kv serve --token-file</code>). The part after # is not sent ` +
      `to the server; the page keeps the token for this browser tab only.`;
    box.innerHTML = S.auth.why === "refused"
      ? `<b>${who} refused this page's client token</b> (401 unauthorized), so there is no live data. To use another token, ${how}`
      : `<b>${who} requires a client token</b> (401 unauthorized): this cluster was started with one, ` +
        `so there is no live data without it. To see it, ${how}`;
    box.dataset.auth = S.auth.why;
    box.hidden = false;
  }

  function onHashChange() {
    if (!/^#(?:.*&)?token=/.test(location.hash)) return;
    S.token = takeToken();
    S.auth = null;
    renderAuth();
    if (S.streamId != null) connectStream(S.streamId);
  }

  // -- requests ------------------------------------------------------------------

  async function fetchT(url, opts = {}, ms = STATUS_TIMEOUT_MS, m = null) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), ms);
    try {
      const resp = await fetch(url, { cache: "no-store", ...opts, headers: withToken(opts.headers), signal: ctl.signal });
      if (resp.status === 401) authRefused(m);
      return resp;
    } finally {
      clearTimeout(timer);
    }
  }

  async function getJSON(url, ms, m = null) {
    const resp = await fetchT(url, {}, ms, m);
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    return resp.json();
  }

  function url(m, path) { return `${location.protocol}//${m.addr}${path}`; }

  function ballotKey(b) {
    const [r, n] = String(b || "0.0").split(".").map((x) => parseInt(x, 10) || 0);
    return r * 1e6 + n;
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function fmtRate(v) {
    if (!isFinite(v) || v <= 0) return "0";
    return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString();
  }

  function fmtMs(ms) {
    if (ms == null || !isFinite(ms)) return "–";
    if (ms < 1) return ms.toFixed(2) + " ms";
    if (ms < 10) return ms.toFixed(1) + " ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(2) + " s";
  }

  function sorted() { return [...S.members.values()].sort((a, b) => a.id - b.id); }

  function serverNowMs() { return Date.now() + S.offsetMs; }

  // -- members -----------------------------------------------------------------

  function getMember(id, addr) {
    let m = S.members.get(id);
    if (!m) {
      m = {
        id, addr, up: null, upSince: 0, downSince: 0, status: null, view: null, viewAt: 0,
        series: new Map(), seriesSec: null, sample: null, rates: {}, boot: null,
        elections: null, preVotes: null, polling: false, viewPolling: false, member: null, removedAt: 0,
      };
      S.members.set(id, m);
      scheduleRender();
    }
    return m;
  }

  function isRemoved(m) { return m.member === "removed"; }

  function live() { return sorted().filter((m) => !isRemoved(m)); }

  function adoptPeers(st) {
    for (const [pid, peer] of Object.entries(st.peers || {})) {
      const id = parseInt(pid, 10);
      if (Number.isInteger(id) && peer && peer.address && !S.removed.has(id)) getMember(id, peer.address);
    }
  }

  // -- the configuration ---------------------------------------------------------

  function whatText(what) {
    const [verb, id] = String(what || "").split(" ");
    if (verb === "initial") return "initial configuration";
    if (verb === "add") return `add node ${id} as a learner`;
    if (verb === "promote") return `promote node ${id} to voter`;
    if (verb === "remove") return `remove node ${id}`;
    return String(what || "?");
  }

  function idList(ids) { return ids && ids.length ? ids.join(", ") : "none"; }

  function configText(c) {
    return `voters ${idList(c.voters)}` + (c.learners && c.learners.length ? ` · learner${c.learners.length > 1 ? "s" : ""} ${idList(c.learners)}` : "");
  }

  // The configuration that decides `slot`: the newest change whose effective slot is at or below it.
  function configAt(slot) {
    const hist = S.config ? S.config.history || [] : [];
    let found = null;
    for (const c of hist) if (c.effective <= slot) found = c;
    return found || hist[0] || null;
  }

  function onMembers(m, doc) {
    if (!doc || typeof doc !== "object" || !Array.isArray(doc.members)) return;
    const cur = S.config;
    // Every node applies the same changes at the same slots: the furthest-applied view is the newest.
    if (cur && (doc.applied < cur.applied || (doc.applied === cur.applied && cur.from !== m.id))) return;
    S.config = { ...doc, from: m.id };
    applyConfig();
  }

  function applyConfig() {
    const c = S.config;
    const now = Date.now();
    const inConfig = new Set();
    for (const e of c.members) {
      inConfig.add(e.id);
      if (S.removed.has(e.id)) continue;
      const m = e.address ? getMember(e.id, e.address) : S.members.get(e.id);
      if (!m) continue;
      if (e.address && m.addr !== e.address && m.id !== S.homeId) m.addr = e.address;
      if (m.member !== e.role) {
        m.member = e.role;
        scheduleRender();
      }
    }
    // A node still deciding slots of the window though gone from the newest configuration.
    const governing = configAt(c.applied + 1);
    for (const id of (c.removed || [])) {
      S.removed.add(id);
      const m = S.members.get(id);
      if (!m || isRemoved(m)) continue;
      if (governing && governing.voters.includes(id)) {
        m.member = "leaving";  // it still votes on the slots of the α window
      } else {
        m.member = "removed";
        m.removedAt = now;
      }
      scheduleRender();
    }
    for (const m of S.members.values()) {
      if (!inConfig.has(m.id) && !S.removed.has(m.id) && m.status && m.status.member) m.member = m.status.member;
    }
    reportChanges();
    updateLeader();
  }

  // A change governs from its effective slot: in effect once that is the next slot to apply.
  function inEffect(h, applied) { return h.effective <= applied + 1; }

  function reportChanges() {
    const c = S.config;
    const hist = c.history || [];
    const first = S.changesSeen == null;
    if (first) S.changesSeen = new Set();
    for (const h of hist) {
      const key = `${h.slot}:${h.what}`;
      if (S.changesSeen.has(key)) continue;
      S.changesSeen.add(key);
      if (h.slot === 0) continue;
      if (inEffect(h, c.applied)) S.effectiveSeen.add(key);
      if (first) continue;  // what happened before the page opened is in the history panel
      addEvent("config", `chosen in slot ${h.slot}: ${whatText(h.what)}; it governs from slot ${h.effective}` +
        ` (α = ${c.alpha} slots later)`);
    }
    for (const h of hist) {
      const key = `${h.slot}:${h.what}`;
      if (h.slot === 0 || S.effectiveSeen.has(key) || !inEffect(h, c.applied)) continue;
      S.effectiveSeen.add(key);
      addEvent("config", `slot ${h.effective} on is decided by the new configuration: ${configText(h)}`);
    }
  }

  // Removed nodes: greyed for REMOVED_SHOWN_MS, then gone from the page.
  function pruneRemoved() {
    const now = Date.now();
    for (const m of [...S.members.values()]) {
      if (!isRemoved(m) || now - m.removedAt < REMOVED_SHOWN_MS) continue;
      S.members.delete(m.id);
      document.querySelector(`#nodes .node[data-node="${m.id}"]`)?.remove();
      document.querySelector(`#try-servers button[data-server="${m.id}"]`)?.remove();
      if (S.tryServer === m.id) S.tryServer = S.members.has(S.homeId) ? S.homeId : (S.leader ?? null);
      if (S.streamId === m.id) switchStream();
      scheduleRender();
    }
  }

  function onStatus(m, st) {
    const now = Date.now();
    if (m.up !== true) {
      if (m.up === false) addEvent("up", `node ${m.id} is up again`);
      m.up = true;
      m.upSince = now;
    }
    if (m.elections != null && st.elections > m.elections) {
      addEvent("election", `node ${m.id} started an election` + (st.elections - m.elections > 1 ? ` (${st.elections - m.elections}×)` : ""));
    } else if (m.preVotes != null && st.pre_votes > m.preVotes) {
      // Asked whether it may run, and no majority said yes (yet): a live leader, or a partition.
      addPreVotes(m.id, st.pre_votes - m.preVotes);
    }
    m.elections = st.elections;
    m.preVotes = st.pre_votes;
    m.status = st;
    if (st.member === "removed" && !isRemoved(m)) {
      S.removed.add(m.id);
      m.member = "removed";
      m.removedAt = now;
    } else if (!m.member || (m.member === "joining" && st.member)) {
      m.member = st.member || m.member;
    }
    adoptPeers(st);
    updateLeader();
    scheduleRender();
  }

  function markDown(m, why) {
    if (m.up !== false) {
      const never = m.up === null;
      m.up = false;
      m.downSince = Date.now();
      if (isRemoved(m)) addEvent("config", `node ${m.id} stopped: it was removed from the configuration`);
      else if (never) addEvent("down", `node ${m.id} does not answer yet (${why})`);
      else addEvent("down", `node ${m.id} is down (${why})`);
      updateLeader();
      if (S.streamId === m.id) switchStream();
      scheduleRender();
    }
  }

  function updateLeader() {
    let best = null;
    for (const m of S.members.values()) {
      if (isRemoved(m)) continue;
      if (m.up === true && m.status && m.status.role === "leader" && m.status.leader === m.id) {
        if (!best || ballotKey(m.status.ballot) > ballotKey(best.status.ballot)) best = m;
      }
    }
    const id = best ? best.id : null;
    if (id === S.leader) return;
    S.leader = id;
    if (id == null) {
      addEvent("election", "no leader right now");
      return;
    }
    if (S.lastLeader != null && S.lastLeader !== id) S.leaderChanges += 1;
    if (S.lastLeader !== id) addEvent("leader", `node ${id} is the leader (ballot ${best.status.ballot})`);
    S.lastLeader = id;
  }

  async function pollStatus(m) {
    if (m.polling || (isRemoved(m) && m.up === false)) return;
    m.polling = true;
    try {
      const st = await getJSON(url(m, "/v1/status"), STATUS_TIMEOUT_MS, m);
      onStatus(m, st);
    } catch (err) {
      markDown(m, err.name === "AbortError" ? "no answer in 1 s" : "connection refused");
    } finally {
      m.polling = false;
    }
  }

  function pollStatuses() { for (const m of S.members.values()) pollStatus(m); }

  async function pollView(m) {
    if (m.viewPolling || m.up !== true || m.id === S.streamId || isRemoved(m)) return;
    m.viewPolling = true;
    try {
      const since = m.seriesSec == null ? "" : `?series_since=${Math.max(0, m.seriesSec - 3)}`;
      onView(m, await getJSON(url(m, "/v1/dashboard" + since), VIEW_TIMEOUT_MS, m), false);
    } catch (err) {
      // the status poll decides whether the node is down
    } finally {
      m.viewPolling = false;
    }
  }

  function pollViews() { for (const m of S.members.values()) pollView(m); }

  function onView(m, doc, fromStream) {
    if (!doc || typeof doc !== "object") return;
    authOk();  // a data route answered
    if (fromStream) S.offsetMs = doc.now_ms - Date.now();
    if (doc.boot !== m.boot) {
      m.boot = doc.boot;
      m.sample = null;  // a restarted node counts from zero again
    }
    m.view = doc;
    m.viewAt = Date.now();
    for (const [sec, ok, failed, hist] of doc.series || []) {
      m.series.set(sec, { ok, failed, hist });
      if (m.seriesSec == null || sec > m.seriesSec) m.seriesSec = sec;
    }
    const horizon = Math.floor(doc.now_ms / 1000) - SERIES_SECONDS - 10;
    for (const sec of m.series.keys()) if (sec < horizon) m.series.delete(sec);
    const sample = { t: doc.now_ms, c: doc.counters || {} };
    if (!m.sample) {
      m.sample = sample;
    } else if (sample.t - m.sample.t >= 900) {
      const dt = (sample.t - m.sample.t) / 1000;
      const rates = {};
      for (const [key, val] of Object.entries(sample.c)) {
        const d = val - (m.sample.c[key] || 0);
        rates[key] = d >= 0 ? d / dt : 0;
      }
      m.rates = rates;
      m.ratesAt = Date.now();
      m.sample = sample;
    }
    if (doc.status) onStatus(m, doc.status);
    if (doc.members) onMembers(m, doc.members);
  }

  // -- the event stream --------------------------------------------------------

  // A parser of the text/event-stream format, fed text as it arrives: calls
  // dispatch(type, data) for each event and retry(ms) for a "retry:" field.
  // Lines end in CRLF, LF or CR; a blank line ends an event; "data:" lines are
  // joined with LF; a line starting with ":" is a comment; "id:" is not used
  // (the server does not resume from Last-Event-ID).
  function eventParser(dispatch, retry) {
    let rest = "";
    let data = [];
    let type = "";
    let first = true;
    const line = (l) => {
      if (l === "") {
        if (data.length) dispatch(type || "message", data.join("\n"));
        data = [];
        type = "";
        return;
      }
      if (l[0] === ":") return;
      const colon = l.indexOf(":");
      const field = colon < 0 ? l : l.slice(0, colon);
      let value = colon < 0 ? "" : l.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") type = value;
      else if (field === "retry" && /^[0-9]+$/.test(value)) retry(parseInt(value, 10));
    };
    return (text) => {
      let buf = rest + text;
      if (first && buf) {
        if (buf[0] === "\ufeff") buf = buf.slice(1);
        first = false;
      }
      // A CR at the end may be the first half of a CRLF: keep it for the next piece.
      const held = buf.endsWith("\r");
      const lines = (held ? buf.slice(0, -1) : buf).split(/\r\n|\r|\n/);
      rest = lines.pop() + (held ? "\r" : "");
      for (const l of lines) line(l);
    };
  }

  // The event stream through fetch(), which can send the token (EventSource cannot), and
  // with EventSource's behaviour: on.event(type, data) per event; when the connection
  // fails or ends, it connects again after the "retry:" time; an answer other than
  // 200 text/event-stream ends it for good with on.failed(status). close() ends it.
  function fetchEvents(target, on) {
    let closed = false;
    let ctl = null;
    let timer = null;
    let retryMs = STREAM_RETRY_MS;
    const stream = {
      close() {
        closed = true;
        clearTimeout(timer);
        if (ctl) ctl.abort();
      },
    };
    const run = async () => {
      if (closed) return;
      ctl = new AbortController();
      try {
        const resp = await fetch(target, {
          cache: "no-store", headers: withToken({ Accept: "text/event-stream" }), signal: ctl.signal,
        });
        const type = resp.headers.get("Content-Type") || "";
        if (!resp.ok || !type.startsWith("text/event-stream") || !resp.body) {
          ctl.abort();
          if (!closed) {
            closed = true;
            on.failed(resp.status);
          }
          return;
        }
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        const feed = eventParser((ev, data) => { if (!closed) on.event(ev, data); }, (ms) => { retryMs = ms; });
        for (;;) {
          const { value, done } = await reader.read();
          if (done || closed) break;
          feed(decoder.decode(value, { stream: true }));
        }
      } catch (e) {
        // a network error, or close(): as EventSource, connect again unless closed
      }
      if (!closed) timer = setTimeout(run, retryMs);
    };
    run();
    return stream;
  }

  function connectStream(id) {
    if (S.es) S.es.close();
    const m = S.members.get(id);
    S.streamId = id;
    S.streamOpenedAt = Date.now();
    S.lastEventAt = 0;
    let stream = null;
    const onSnapshot = (data) => {
      if (S.es !== stream) return;
      S.lastEventAt = Date.now();
      let doc;
      try { doc = JSON.parse(data); } catch (e) { return; }
      onView(m, doc, true);
    };
    if (S.token) {
      stream = fetchEvents(url(m, "/v1/events"), {
        event: (type, data) => { if (type === "snapshot") onSnapshot(data); },
        failed: (status) => {
          if (S.es !== stream) return;
          // another node would refuse the token too: watchStream asks this one again later
          if (status === 401) authRefused(m); else switchStream();
        },
      });
    } else {
      const es = new EventSource(url(m, "/v1/events"));
      stream = es;
      es.addEventListener("snapshot", (ev) => onSnapshot(ev.data));
      es.onerror = () => {
        if (S.es !== es || es.readyState !== EventSource.CLOSED) return;
        // EventSource does not tell why it failed: a node that wants a token answers 401
        // (fetchT then shows how to give the page one), and switching would not help.
        fetchT(url(m, "/v1/dashboard?slots=1"), {}, STATUS_TIMEOUT_MS, m).then(
          (resp) => { if (S.es === es && resp.status !== 401) switchStream(); },
          () => { if (S.es === es) switchStream(); });
      };
    }
    S.es = stream;
    scheduleRender();
  }

  function switchStream() {
    const candidates = live().filter((m) => m.up === true && m.id !== S.streamId);
    const home = candidates.find((m) => m.id === S.homeId);
    const pick = home || candidates.find((m) => m.id === S.leader) || candidates[0];
    if (!pick) {
      // nobody else answers: keep (re)trying the current node
      if (Date.now() - S.streamOpenedAt > STREAM_FIRST_EVENT_MS && S.streamId != null) connectStream(S.streamId);
      return;
    }
    addEvent("stream", `live data now from node ${pick.id}`);
    connectStream(pick.id);
  }

  function watchStream() {
    const now = Date.now();
    const m = S.members.get(S.streamId);
    if (S.auth && !S.lastEventAt && m && m.up !== false) {
      // refused (401): every node would refuse; ask the same one again now and then
      if (now - S.streamOpenedAt > REFUSED_RETRY_MS) connectStream(S.streamId);
      renderConn();
      return;
    }
    const stale = S.lastEventAt ? now - S.lastEventAt > STREAM_STALE_MS : now - S.streamOpenedAt > STREAM_FIRST_EVENT_MS;
    if (!m || m.up === false || stale || (isRemoved(m) && live().some((o) => o.up === true))) {
      switchStream();
      return;
    }
    const home = S.members.get(S.homeId);
    if (home && !isRemoved(home) && S.streamId !== S.homeId && home.up === true && now - home.upSince > HOME_AGAIN_AFTER_MS) {
      addEvent("stream", `live data back on node ${home.id}, which served this page`);
      connectStream(home.id);
    }
    renderConn();
  }

  // -- timeline ----------------------------------------------------------------

  function addEvent(kind, text, extra) {
    S.timeline.unshift({ t: Date.now(), kind, text, ...extra });
    if (S.timeline.length > TIMELINE_MAX) S.timeline.length = TIMELINE_MAX;
    renderTimeline();
  }

  // A node cut off by a partition asks every election timeout: one line that counts up,
  // not a line a second pushing everything else off the timeline.
  function addPreVotes(node, n) {
    const last = S.timeline[0];
    const count = (last && last.kind === "prevote" && last.node === node ? last.count : 0) + n;
    if (count > n) S.timeline.shift();
    addEvent("prevote", `node ${node} asked the voters whether it may run for leader` +
      (count > 1 ? ` (${count}×)` : ""), { node, count });
  }

  function renderTimeline() {
    const ol = $("timeline");
    if (!ol) return;
    ol.innerHTML = S.timeline.map((e) => `<li class="${esc(e.kind)}"><span class="ic"></span><time>${clock(e.t)}</time><span>${esc(e.text)}</span></li>`).join("");
  }

  // -- rendering -----------------------------------------------------------------

  function scheduleRender() {
    if (S.renderQueued) return;
    S.renderQueued = true;
    const run = () => { S.renderQueued = false; render(); };
    if (document.hidden) setTimeout(run, 250); else requestAnimationFrame(run);
  }

  function render() {
    renderSummary();
    renderConn();
    renderNodes();
    renderConfig();
    renderServers();
    renderStrip();
  }

  function upMembers() { return live().filter((m) => m.up === true && m.status); }

  function renderSummary() {
    const all = live();
    const up = upMembers();
    $("sum-up").textContent = `${up.length} / ${all.length}`;
    const leader = S.members.get(S.leader);
    $("leader-id").textContent = leader ? `node ${leader.id}` : "none";
    $("leader-id").dataset.leader = leader ? String(leader.id) : "";
    $("sum-ballot").textContent = leader ? leader.status.ballot : "–";
    const chosen = Math.max(0, ...up.map((m) => m.status.chosen || 0));
    $("sum-chosen").textContent = up.length ? String(chosen) : "–";
    $("tile-changes").textContent = String(S.leaderChanges);
    const voters = votersNow();
    const learners = S.config ? S.config.learners || [] : [];
    $("sum-voters").textContent = voters ? `${voters.length}` + (learners.length ? ` + ${learners.length} learner${learners.length > 1 ? "s" : ""}` : "") : "–";
  }

  // The voters deciding the next slot (from the configuration; else from any status).
  function votersNow() {
    if (S.config) {
      const c = configAt((S.config.applied || 0) + 1);
      if (c) return c.voters;
    }
    const st = upMembers().map((m) => m.status).find((x) => Array.isArray(x.voters) && x.voters.length);
    return st ? st.voters : null;
  }

  function renderConn() {
    const live = S.lastEventAt && Date.now() - S.lastEventAt < STREAM_STALE_MS;
    $("conn").dataset.live = live ? "true" : "false";
    $("conn-text").textContent = live ? "live"
      : S.auth ? (S.auth.why === "refused" ? "token refused" : "token required")
      : (S.members.size ? "reconnecting…" : "connecting…");
    $("stream-node").textContent = S.streamId ?? "–";
  }

  function roleOf(m) {
    if (isRemoved(m)) return "removed";
    if (m.up === false) return "down";
    if (!m.status) return "unknown";
    if (m.status.deciding) return "deciding";
    if (m.status.voting === false) return "rebuilding";
    return m.status.role;
  }

  function renderQuorum() {
    const all = live();
    if (!all.length) return;
    const voterIds = votersNow() || all.map((m) => m.id);
    const up = voterIds.filter((id) => S.members.get(id)?.up === true).length;
    const need = Math.floor(voterIds.length / 2) + 1;
    const ok = up >= need;
    const learners = all.filter((m) => !voterIds.includes(m.id));
    const box = $("quorum");
    box.dataset.ok = ok ? "true" : "false";
    box.innerHTML = `<span class="q-dot"></span><b>${up} of ${voterIds.length}</b> voters up · a majority is ${need} · ` +
      (ok ? (S.leader != null ? `node ${S.leader} leads; writes and linearizable reads go through`
                              : "electing a leader…")
          : "no majority: writes and linearizable reads wait until enough voters are back") +
      (learners.length ? ` · ${learners.map((m) => "node " + m.id).join(", ")} ${learners.length > 1 ? "follow" : "follows"} the log without voting` : "");
  }

  function renderNodes() {
    renderQuorum();
    const box = $("nodes");
    const all = sorted();
    for (const el of [...box.children]) if (!S.members.has(parseInt(el.dataset.node, 10))) el.remove();
    const top = Math.max(1, ...all.filter((m) => m.up && m.status).map((m) => m.status.chosen || 0));
    const leaderChosen = S.leader != null && S.members.get(S.leader).status ? S.members.get(S.leader).status.chosen : null;
    for (const m of all) {
      let el = box.querySelector(`.node[data-node="${m.id}"]`);
      if (!el) {
        el = document.createElement("div");
        el.className = "node";
        el.dataset.node = String(m.id);
        el.innerHTML = `
          <div class="node-top"><div class="node-id">${m.id}</div>
            <div class="node-name"><b>node ${m.id}<span class="mtag"></span></b><span class="addr"></span></div>
            <span class="badge"></span></div>
          <dl class="kv-grid">
            <dt>ballot</dt><dd class="f-ballot"></dd><dt>leader</dt><dd class="f-leader"></dd>
            <dt>chosen</dt><dd class="f-chosen"></dd><dt>applied</dt><dd class="f-applied"></dd>
            <dt>promised</dt><dd class="f-promised"></dd><dt>elections</dt><dd class="f-elections" title="elections started (pre-votes asked)"></dd>
          </dl>
          <div class="progress"><div class="chosen-bar"></div><div class="applied-bar"></div></div>
          <div class="node-foot"></div>`;
        const next = [...box.children].find((c) => parseInt(c.dataset.node, 10) > m.id);
        box.insertBefore(el, next || null);
      }
      const st = m.status || {};
      const role = roleOf(m);
      el.dataset.role = role;
      el.dataset.member = m.member || "";
      el.querySelector(".mtag").textContent = m.member || "";
      el.dataset.up = m.up === true ? "true" : m.up === false ? "false" : "unknown";
      el.dataset.leader = S.leader === m.id ? "true" : "false";
      el.classList.toggle("stream", S.streamId === m.id && m.up === true);
      el.querySelector(".addr").textContent = m.addr;
      const badge = el.querySelector(".badge");
      badge.textContent = role;
      badge.className = "badge " + role;
      const set = (cls, v) => { el.querySelector(cls).textContent = v == null ? "–" : String(v); };
      set(".f-ballot", st.ballot);
      set(".f-leader", st.leader);
      set(".f-chosen", st.chosen);
      set(".f-applied", st.applied);
      set(".f-promised", st.promised);
      set(".f-elections", st.pre_votes == null ? st.elections : `${st.elections} (${st.pre_votes})`);
      el.querySelector(".chosen-bar").style.width = `${Math.min(100, 100 * (st.chosen || 0) / top)}%`;
      el.querySelector(".applied-bar").style.width = `${Math.min(100, 100 * (st.applied || 0) / top)}%`;
      const foot = el.querySelector(".node-foot");
      if (isRemoved(m)) {
        foot.textContent = "removed from the configuration; it stops and its id is never reused";
      } else if (m.up === false && !m.upSince) {
        foot.innerHTML = `<span class="warn">no answer yet</span>` + (m.member === "learner" ? " · a new learner starts once it has a snapshot" : "");
      } else if (m.up === false) {
        const secs = Math.max(0, Math.round((Date.now() - m.downSince) / 1000));
        foot.innerHTML = `<span class="warn">no answer for ${secs} s</span>${m.status ? " · last seen as " + esc(m.status.role) : ""}`;
      } else if (!m.status) {
        foot.textContent = "asking…";
      } else if (m.view && m.view.leading && role === "leader") {
        const l = m.view.leading;
        foot.textContent = `leading · ${l.in_flight} slot${l.in_flight === 1 ? "" : "s"} in flight · ${l.queued} queued`;
      } else if (leaderChosen != null && st.applied != null) {
        const behind = Math.max(0, leaderChosen - st.applied);
        foot.textContent = behind === 0 ? "in sync with the leader" : `${behind} slot${behind === 1 ? "" : "s"} behind the leader`;
      } else {
        foot.textContent = st.leader == null ? "looking for a leader" : "";
      }
    }
  }

  function renderConfig() {
    const c = S.config;
    if (!c) return;
    $("cfg-alpha").textContent = String(c.alpha);
    $("cfg-source").textContent = `as node ${c.from} applied it, through slot ${c.applied}`;
    const governing = configAt(c.applied + 1) || { voters: c.voters, learners: c.learners };
    const pending = c.pending;

    // members now: the newest configuration, plus voters leaving with a change in flight
    const rows = c.members.map((e) => ({ ...e }));
    for (const id of governing.voters) {
      if (!rows.some((r) => r.id === id)) rows.push({ id, address: S.members.get(id)?.addr, role: "leaving" });
    }
    rows.sort((a, b) => a.id - b.id);
    const list = $("config-members");
    const html = rows.map((r) => {
      const m = S.members.get(r.id);
      const up = m ? (m.up === true ? "true" : m.up === false ? "false" : "unknown") : "unknown";
      const leader = S.leader != null ? S.leader === r.id : c.leader === r.id;
      const notes = [];
      if (leader) notes.push(`<span class="lead">★ leader</span>`);
      if (pending && r.role === "voter" && !governing.voters.includes(r.id)) notes.push(`votes from slot ${pending.effective}`);
      if (pending && r.role === "learner" && !governing.voters.includes(r.id) && !(governing.learners || []).includes(r.id)) notes.push(`member from slot ${pending.effective}`);
      if (r.role === "leaving") notes.push(`votes until slot ${pending ? pending.effective - 1 : "?"}`);
      if (r.role === "learner") notes.push("catching up; promoted once it has the log");
      if (up === "false") notes.push(`<span class="warn">${m && m.upSince ? "down" : "no answer yet"}</span>`);
      return `<li class="member" data-node="${r.id}" data-member="${r.role}" data-leader="${leader}" data-up="${up}"` +
        (r.role === "leaving" ? ` data-leaving="true"` : "") + `>` +
        `<span class="m-id">${r.id}</span><span class="m-name"><b>node ${r.id}</b><span class="addr">${esc(r.address || "")}</span></span>` +
        `<span class="m-note">${notes.join(" · ")}</span><span class="mrole ${r.role}">${r.role}</span></li>`;
    }).join("");
    if (list._html !== html) { list.innerHTML = html; list._html = html; }
    const nv = governing.voters.length;
    $("config-summary").innerHTML = `<b>${nv}</b> voter${nv === 1 ? "" : "s"} decide each slot now; a majority is <b>${Math.floor(nv / 2) + 1}</b>.` +
      ` Learners receive every chosen slot but never vote, so adding one cannot stall the cluster.` +
      (c.removed && c.removed.length ? ` Removed for good (ids never reused): ${idList(c.removed)}.` : "");

    // the change in flight, or else the last one, on its α window
    const box = $("config-change");
    const hist = c.history || [];
    const last = pending || [...hist].reverse().find((h) => h.slot > 0);
    let inner;
    if (!last) {
      box.dataset.state = "none";
      inner = `<div class="c-what">no change yet</div>` +
        `<p>The cluster still runs its initial configuration: ${configText(hist[0] || c)}.</p>`;
    } else {
      box.dataset.state = pending ? "pending" : "settled";
      const before = configAt(last.slot) || hist[0];
      const done = Math.max(0, Math.min(c.alpha, c.applied - last.slot));
      const pct = (100 * done / c.alpha).toFixed(1);
      inner = `<div><span class="c-what">${esc(whatText(last.what))}</span><span class="c-state">${pending ? "in flight" : "in effect"}</span></div>` +
        `<p>chosen in <span class="slotref">slot ${last.slot}</span> · governs from <span class="slotref">slot ${last.effective}</span> = ${last.slot} + α ${c.alpha}</p>` +
        `<div class="alpha" title="the α window: slots ${last.slot + 1}–${last.effective - 1}"><div class="a-fill" style="width:${pct}%"></div>` +
        `<span class="a-tick start">slot ${last.slot}</span><span class="a-tick mid">applied: ${c.applied}</span><span class="a-tick end">slot ${last.effective}</span></div>` +
        (pending
          ? `<p>Slots ${last.slot + 1}–${last.effective - 1} are still decided by the old configuration (${configText(before)}); ` +
            `from slot ${last.effective} on: ${configText(last)}.</p>`
          : `<p>Slots up to ${last.effective - 1} were decided by ${configText(before)}; from slot ${last.effective} on: ${configText(last)}.</p>`) +
        `<p class="why">Why wait α slots? A leader proposes slot i only once it knows every value chosen up to i − α, ` +
        `so it always knows which voters decide a slot it proposes; each slot is plain Paxos among one set of voters. ` +
        `One change at a time: the next waits until this one governs.</p>`;
    }
    if (box._html !== inner) { box.innerHTML = inner; box._html = inner; }

    // recent changes, newest first
    const ol = $("config-history");
    const items = [...hist].reverse().slice(0, CONFIG_HISTORY_SHOWN).map((h) => {
      const state = inEffect(h, c.applied) ? "done" : "pending";
      const slots = h.slot === 0 ? "start" : `slot ${h.slot} → ${h.effective}`;
      return `<li data-slot="${h.slot}" data-what="${esc(h.what)}" data-state="${state}">` +
        `<span class="h-slot">${slots}</span><span class="h-what">${esc(whatText(h.what))}${state === "pending" ? " (in flight)" : ""}</span>` +
        `<span class="h-cfg">${esc(configText(h))}</span></li>`;
    }).join("");
    if (ol._html !== items) { ol.innerHTML = items; ol._html = items; }
  }

  function renderServers() {
    const box = $("try-servers");
    const all = sorted();
    if (S.tryServer == null && S.homeId != null) S.tryServer = S.homeId;
    for (const m of all) {
      let b = box.querySelector(`button[data-server="${m.id}"]`);
      if (!b) {
        b = document.createElement("button");
        b.type = "button";
        b.dataset.server = String(m.id);
        b.textContent = String(m.id);
        b.addEventListener("click", () => { S.tryServer = m.id; renderServers(); });
        const next = [...box.children].find((c) => parseInt(c.dataset.server, 10) > m.id);
        box.insertBefore(b, next || null);
      }
      b.setAttribute("aria-pressed", S.tryServer === m.id ? "true" : "false");
      b.dataset.up = m.up === false || isRemoved(m) ? "false" : "true";
      b.dataset.leader = S.leader === m.id ? "true" : "false";
      b.title = `server ${m.id} · ${m.addr} · ${isRemoved(m) ? "removed" : m.up === false ? "down" : (m.status ? m.status.role : "?")}` +
        (m.member === "learner" ? " · learner (forwards writes to the leader; does not vote)" : "");
    }
  }

  // -- the log strip -----------------------------------------------------------

  function slotStates() {
    const members = live();
    let top = 0;
    const index = new Map();  // member id -> Map(slot -> entry)
    const viewTop = new Map();  // member id -> the newest slot its last view covered
    for (const m of members) {
      const slots = m.up === true && m.view && m.view.log ? m.view.log.slots : [];
      const byslot = new Map(slots.map((e) => [e.slot, e]));
      index.set(m.id, byslot);
      viewTop.set(m.id, slots.length ? slots[slots.length - 1].slot : 0);
      for (const e of slots) top = Math.max(top, e.slot);
      if (m.up === true && m.status) top = Math.max(top, m.status.chosen || 0);
    }
    const out = [];
    for (let slot = Math.max(1, top - STRIP_SLOTS + 1); slot <= top; slot++) {
      const nodes = [];
      let batch = null;
      let ballot = null;
      const votes = new Set();
      for (const m of members) {
        const e = index.get(m.id).get(slot);
        if (e && e.votes) e.votes.forEach((v) => votes.add(v));
        if (e && e.batch && (!batch || m.id === S.streamId)) batch = e.batch;
        if (e && e.ballot && (!ballot || ballotKey(e.ballot) > ballotKey(ballot))) ballot = e.ballot;
      }
      for (const m of members) {
        const e = index.get(m.id).get(slot);
        let v;
        if (m.up === false) v = "down";
        else if (m.status && m.status.applied >= slot) v = "applied";
        else if (e) v = e.state === "unknown" ? "none" : e.state;
        else v = m.view && slot <= viewTop.get(m.id) ? "none" : "unknown";  // not reported yet
        if (votes.has(m.id) && STATE_RANK[v] < STATE_RANK.accepted) v = "accepted";
        nodes.push({ id: m.id, v, holds: !!(e && e.ballot), ballot: e ? e.ballot : null, compacted: !!(e && e.compacted) });
      }
      let state = "unknown";
      for (const n of nodes) if (STATE_RANK[n.v] > STATE_RANK[state]) state = n.v;
      if (state === "none" || state === "down") state = "unknown";
      const cfg = configAt(slot);
      if (cfg && S.config) for (const n of nodes) n.learner = !cfg.voters.includes(n.id);
      const starts = S.config ? (S.config.history || []).find((h) => h.slot > 0 && h.effective === slot) : null;
      out.push({ slot, state, nodes, batch, ballot, starts });
    }
    return out;
  }

  const MEMBER_VERBS = { member_add: "add", member_promote: "promote", member_remove: "remove" };
  const LEASE_VERBS = { lease_grant: "grant", lease_keepalive: "keepalive", lease_revoke: "revoke" };

  function cmdHTML(c) {
    const k = `<span class="k">${esc(c.key)}</span>`;
    if (MEMBER_VERBS[c.op]) {
      return `<span class="op member">${MEMBER_VERBS[c.op]}</span> <span class="k">node ${esc(c.key)}</span>` +
        (c.value != null ? `<span class="v"> @${esc(c.value)}</span>` : "");
    }
    if (c.op === "del") return `<span class="op del">del</span> ${k}`;
    const ttl = c.ttl_ms != null ? `<span class="v"> ttl ${c.ttl_ms / 1000}s</span>` :
      c.lease != null ? `<span class="v"> lease ${esc(c.lease)}</span>` : "";
    if (LEASE_VERBS[c.op]) {
      return `<span class="op lease">${LEASE_VERBS[c.op]}</span> <span class="k">lease ${c.key === "0" ? "(new)" : esc(c.key)}</span>${ttl}`;
    }
    if (c.op === "refresh") return `<span class="op put">refresh</span> ${k}${ttl}`;
    if (c.op === "txn") return `<span class="op cas">txn</span> ${k}<span class="v"> ${esc(c.value ?? "")}</span>`;
    if (c.op === "delete_prefix") return `<span class="op del">del</span> ${k}<span class="v">* (up to ${esc(c.value ?? "")})</span>`;
    if (c.if_value != null || c.if_version != null) {
      const cond = c.if_value != null ? esc(c.if_value) : `v${c.if_version}`;
      return `<span class="op cas">cas</span> ${k} <span class="v">${cond}→${esc(c.value ?? "")}</span>${ttl}`;
    }
    return `<span class="op put">put</span> ${k}<span class="v">=${esc(c.value ?? "")}</span>${ttl}`;
  }

  function cmdText(c) {
    if (MEMBER_VERBS[c.op]) return `${MEMBER_VERBS[c.op]} node ${c.key}` + (c.value != null ? ` at ${c.value}` : "") + " (configuration change)";
    if (c.op === "del") return `del ${c.key}`;
    const ttl = c.ttl_ms != null ? ` (ttl ${c.ttl_ms / 1000} s)` : c.lease != null ? ` (lease ${c.lease})` : "";
    if (LEASE_VERBS[c.op]) return `${LEASE_VERBS[c.op]} lease ${c.key === "0" ? "(a new id)" : c.key}${ttl}`;
    if (c.op === "refresh") return `refresh ${c.key}${ttl}`;
    if (c.op === "txn") return `transaction on ${c.key}…: ${c.value}`;
    if (c.op === "delete_prefix") return `delete up to ${c.value} keys under ${JSON.stringify(c.key)}`;
    if (c.if_value != null || c.if_version != null) return `cas ${c.key}: ${c.if_value ?? "v" + c.if_version} → ${c.value}${ttl}`;
    return `put ${c.key} = ${c.value}${ttl}`;
  }

  function slotTitle(s) {
    const lines = [`slot ${s.slot}: ${s.state}` + (s.ballot ? ` (ballot ${s.ballot})` : "")];
    for (const n of s.nodes) {
      lines.push(`node ${n.id}: ${n.v}` + (n.learner ? " (learner here: no vote)" : "") + (n.holds ? `, acceptor holds it (ballot ${n.ballot})` : ""));
    }
    if (s.starts) lines.push(`first slot governed by: ${configText(s.starts)} (${whatText(s.starts.what)}, chosen in slot ${s.starts.slot})`);
    if (s.batch) {
      if (s.batch.lead) {
        lines.push("new leader: its first slot above all phase 1 found; once chosen, its reads go through, "
          + "and applied, it starts every lease's ttl again");
      } else if (!s.batch.n) {
        lines.push(s.batch.ts_ms ? "clock: an empty slot that carries the leader's clock into the log, so that keys "
          + "whose time to live ran out expire with no writes" : "no-op (a new leader's filler)");
      }
      for (const c of s.batch.cmds) lines.push(cmdText(c) + (c.client ? `   [${c.client} #${c.seq}]` : ""));
      if (s.batch.n > s.batch.cmds.length) lines.push(`… and ${s.batch.n - s.batch.cmds.length} more`);
    }
    return lines.join("\n");
  }

  function slotHTML(s) {
    let body;
    if (!s.batch) {
      body = s.nodes.some((n) => n.compacted) ? `<span class="noop-label">in a snapshot</span>` : `<span class="noop-label">not known here</span>`;
    } else if (!s.batch.n) {
      body = `<span class="noop-label">${s.batch.lead ? "new leader" : s.batch.ts_ms ? "clock" : "no-op"}</span>`;
    } else {
      const shown = s.batch.cmds.slice(0, 3);
      body = shown.map((c) => `<div class="cmd">${cmdHTML(c)}</div>`).join("");
      if (s.batch.n > shown.length) body += `<div class="more">+${s.batch.n - shown.length} more</div>`;
    }
    if (s.starts) body = `<div class="cfg-from">▶ new config from here</div>` + body;
    const votes = s.nodes.map((n) => `<span class="vote${n.holds ? " holds" : ""}${n.learner ? " learner" : ""}" data-node="${n.id}" data-v="${n.v}">${n.id}</span>`).join("");
    return `<div class="slot-head"><span class="slot-num">${s.slot}</span><span class="slot-ballot">${esc(s.ballot || "")}</span></div>
      <div class="cmds">${body}</div><div class="votes">${votes}</div>`;
  }

  function renderStrip() {
    const strip = $("log-strip");
    const slots = slotStates();
    if (!slots.length) {
      if (!strip.querySelector(".log-empty")) strip.innerHTML = `<div class="log-empty">No slots yet: write something with “Try it”.</div>`;
      return;
    }
    strip.querySelector(".log-empty")?.remove();
    const keep = new Set(slots.map((s) => String(s.slot)));
    for (const el of [...strip.children]) if (!keep.has(el.dataset.slot)) el.remove();
    const highlight = Date.now() < S.highlightUntil ? S.highlight : null;
    slots.forEach((s, i) => {
      let el = strip.querySelector(`.slot[data-slot="${s.slot}"]`);
      if (!el) {
        el = document.createElement("div");
        el.className = "slot";
        el.dataset.slot = String(s.slot);
      }
      if (strip.children[i] !== el) strip.insertBefore(el, strip.children[i] || null);
      const html = slotHTML(s);
      if (el._html !== html) { el.innerHTML = html; el._html = html; }
      el.dataset.state = s.state;
      el.classList.toggle("noop", !!(s.batch && !s.batch.n));
      el.classList.toggle("config", !!(s.batch && s.batch.cmds.some((c) => MEMBER_VERBS[c.op])));
      el.classList.toggle("effective", !!s.starts);
      el.classList.toggle("highlight", s.slot === highlight);
      el.title = slotTitle(s);
    });
  }

  // -- protocol rates -----------------------------------------------------------

  function sampleRates() {
    const fresh = upMembers().filter((m) => m.ratesAt && Date.now() - m.ratesAt < 4000);
    for (const [type] of MSG_TYPES) {
      const key = COUNTER_OF[type] || "sent_" + type;
      const total = fresh.reduce((acc, m) => acc + (m.rates[key] || 0), 0);
      const hist = S.rateHist.get(type);
      hist.push(total);
      if (hist.length > RATE_POINTS) hist.shift();
    }
    S.fsyncRate = fresh.reduce((acc, m) => acc + (m.rates.fsyncs || 0), 0);
    renderRates();
  }

  function sparkline(values, w, h) {
    const max = Math.max(1, ...values);
    const n = RATE_POINTS;
    const step = w / (n - 1);
    const off = n - values.length;
    const pts = values.map((v, i) => `${((off + i) * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
    if (!pts.length) return "";
    const first = ((off) * step).toFixed(1);
    return `<path d="M${first},${h} L${pts.join(" L")} L${w},${h} Z" fill="rgba(88,166,255,.15)"/>` +
      `<polyline points="${pts.join(" ")}" fill="none" stroke="#58a6ff" stroke-width="1.4" vector-effect="non-scaling-stroke"/>`;
  }

  function renderRates() {
    const table = $("rates");
    const rows = MSG_TYPES.map(([type, note]) => {
      const hist = S.rateHist.get(type);
      const now = hist.length ? hist[hist.length - 1] : 0;
      return `<tr class="${now > 0 ? "" : "quiet"}" data-type="${type}"><td class="name">${type} <small>${esc(note)}</small></td>` +
        `<td class="rate">${fmtRate(now)}/s</td>` +
        `<td class="spark"><svg viewBox="0 0 200 22" preserveAspectRatio="none">${sparkline(hist, 200, 22)}</svg></td></tr>`;
    });
    table.innerHTML = rows.join("");
    const elections = upMembers().reduce((acc, m) => acc + (m.status.elections || 0), 0);
    $("tile-elections").textContent = String(elections);
    $("tile-changes").textContent = String(S.leaderChanges);
    $("tile-fsync").textContent = fmtRate(S.fsyncRate);
  }

  // -- write charts ----------------------------------------------------------------

  function mergedSeries() {
    const lastSec = Math.floor(serverNowMs() / 1000) - 1;
    const secs = [];
    for (let sec = lastSec - SERIES_SECONDS + 1; sec <= lastSec; sec++) {
      let ok = 0, failed = 0;
      const hist = new Map();
      for (const m of S.members.values()) {
        const b = m.series.get(sec);
        if (!b) continue;
        ok += b.ok;
        failed += b.failed;
        for (const [bin, n] of Object.entries(b.hist)) hist.set(+bin, (hist.get(+bin) || 0) + n);
      }
      secs.push({ sec, ok, failed, hist });
    }
    return secs;
  }

  function percentile(hist, q) {
    let total = 0;
    for (const n of hist.values()) total += n;
    if (!total) return null;
    const bins = [...hist.keys()].sort((a, b) => a - b);
    let seen = 0;
    for (const bin of bins) {
      seen += hist.get(bin);
      if (seen >= q * total) return LAT_BASE_MS * Math.pow(2, (bin - 0.5) / 2);
    }
    return LAT_BASE_MS * Math.pow(2, (bins[bins.length - 1] - 0.5) / 2);
  }

  function niceMax(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const k of [1, 2, 2.5, 5, 10]) if (k * p >= v) return k * p;
    return 10 * p;
  }

  function chartFrame(svg) {
    const W = Math.max(200, Math.round(svg.clientWidth || 480));
    const H = Math.max(80, Math.round(svg.clientHeight || 130));
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    return { W, H, x0: 44, x1: W - 8, y0: 8, y1: H - 20 };
  }

  function timeAxis(f) {
    let s = "";
    for (let m = 5; m >= 0; m--) {
      const x = f.x0 + (f.x1 - f.x0) * (1 - m / 5);
      s += `<line class="grid" x1="${x}" y1="${f.y0}" x2="${x}" y2="${f.y1}"/>`;
      s += `<text class="axis" x="${x}" y="${f.H - 6}" text-anchor="${m === 0 ? "end" : m === 5 ? "start" : "middle"}">${m ? "-" + m + "m" : "now"}</text>`;
    }
    return s;
  }

  function renderCharts() {
    const secs = mergedSeries();
    const total = secs.map((s) => s.ok + s.failed);
    const last = secs[secs.length - 1];
    const lastTotal = last ? last.ok + last.failed : 0;
    const recent = secs.slice(-10);
    const recentSum = recent.reduce((a, s) => a + s.ok + s.failed, 0);
    $("sum-wps").textContent = fmtRate(recentSum / 10);
    $("wps-now").textContent = `· ${fmtRate(recentSum / 10)}/s over the last 10 s, ${fmtRate(lastTotal)} in the last second`;

    // throughput
    {
      const svg = $("chart-wps");
      const f = chartFrame(svg);
      const max = niceMax(Math.max(...total, 1));
      const bw = (f.x1 - f.x0) / SERIES_SECONDS;
      const y = (v) => f.y1 - (v / max) * (f.y1 - f.y0);
      let ok = "", bad = "";
      secs.forEach((s, i) => {
        const x = (f.x0 + i * bw).toFixed(2);
        const w = Math.max(bw, 1).toFixed(2);
        if (s.ok) ok += `M${x},${f.y1}V${y(s.ok).toFixed(2)}h${w}V${f.y1}Z`;
        if (s.failed) bad += `M${x},${y(s.ok).toFixed(2)}V${y(s.ok + s.failed).toFixed(2)}h${w}V${y(s.ok).toFixed(2)}Z`;
      });
      let g = timeAxis(f);
      for (const v of [0, max / 2, max]) {
        g += `<line class="grid" x1="${f.x0}" y1="${y(v)}" x2="${f.x1}" y2="${y(v)}"/>`;
        g += `<text class="axis" x="${f.x0 - 6}" y="${y(v) + 3}" text-anchor="end">${fmtRate(v)}/s</text>`;
      }
      g += `<path class="bars" d="${ok}"/><path class="failed" d="${bad}"/>`;
      if (!total.some((v) => v > 0)) g += `<text class="empty" x="${(f.x0 + f.x1) / 2}" y="${(f.y0 + f.y1) / 2}" text-anchor="middle">no writes in the last 5 minutes</text>`;
      svg.innerHTML = g;
    }

    // latency (log scale)
    {
      const svg = $("chart-lat");
      const f = chartFrame(svg);
      const p50 = secs.map((s) => percentile(s.hist, 0.5));
      const p99 = secs.map((s) => percentile(s.hist, 0.99));
      const vals = [...p50, ...p99].filter((v) => v != null);
      const lo = Math.pow(10, Math.floor(Math.log10(Math.max(0.1, Math.min(...vals, 1)))));
      const hi = Math.max(lo * 10, Math.pow(10, Math.ceil(Math.log10(Math.max(...vals, 10)))));
      const y = (v) => f.y1 - (Math.log10(v / lo) / Math.log10(hi / lo)) * (f.y1 - f.y0);
      const bw = (f.x1 - f.x0) / SERIES_SECONDS;
      const line = (arr, cls) => {
        let d = "", dots = "";
        arr.forEach((v, i) => {
          if (v == null) return;
          const x = (f.x0 + (i + 0.5) * bw).toFixed(2);
          d += `${arr[i - 1] == null ? "M" : "L"}${x},${y(v).toFixed(2)}`;
          if (arr[i - 1] == null && arr[i + 1] == null) dots += `<circle class="dot ${cls}" cx="${x}" cy="${y(v).toFixed(2)}" r="2.2"/>`;
        });
        return `<path class="line ${cls}" d="${d}"/>${dots}`;
      };
      let g = timeAxis(f);
      for (let v = lo; v <= hi * 1.001; v *= 10) {
        g += `<line class="grid" x1="${f.x0}" y1="${y(v)}" x2="${f.x1}" y2="${y(v)}"/>`;
        g += `<text class="axis" x="${f.x0 - 6}" y="${y(v) + 3}" text-anchor="end">${v >= 1000 ? v / 1000 + "s" : v + "ms"}</text>`;
      }
      g += line(p99, "p99") + line(p50, "p50");
      if (!vals.length) g += `<text class="empty" x="${(f.x0 + f.x1) / 2}" y="${(f.y0 + f.y1) / 2}" text-anchor="middle">no writes in the last 5 minutes</text>`;
      svg.innerHTML = g;
      const recentHist = new Map();
      for (const s of secs.slice(-10)) for (const [b, n] of s.hist) recentHist.set(b, (recentHist.get(b) || 0) + n);
      const r50 = percentile(recentHist, 0.5), r99 = percentile(recentHist, 0.99);
      $("lat-now").textContent = r50 == null ? "" : `· last 10 s: p50 ${fmtMs(r50)}, p99 ${fmtMs(r99)}`;
    }
  }

  // -- try it ------------------------------------------------------------------

  function setResult(status, html, slot) {
    const box = $("try-result");
    box.dataset.status = status;
    if (slot != null) box.dataset.slot = String(slot); else delete box.dataset.slot;
    box.innerHTML = html;
  }

  function addHistory(text, bad) {
    const ol = $("try-history");
    const li = document.createElement("li");
    if (bad) li.className = "bad";
    li.textContent = `${clock(Date.now())}  ${text}`;
    ol.insertBefore(li, ol.firstChild);
    while (ol.children.length > 6) ol.lastChild.remove();
  }

  function onOpChange() {
    const op = $("try-op").value;
    $("try-value").hidden = op === "get" || op === "delete";
    $("try-old").hidden = op !== "cas";
    $("try-value").placeholder = op === "cas" ? "new value" : "value";
  }

  async function findSlot(m, seq) {
    const q = `/v1/dashboard/find?client_id=${encodeURIComponent(S.clientId)}&seq=${seq}`;
    for (let i = 0; i < 5; i++) {
      try {
        const resp = await fetchT(url(m, q), {}, 2000, m);
        if (resp.ok) return (await resp.json()).slot;
      } catch (e) { /* try again */ }
      await sleep(200);
    }
    return null;
  }

  async function sendTry(ev) {
    ev.preventDefault();
    if (S.busy) return;
    const m = S.members.get(S.tryServer);
    if (!m) return;
    const op = $("try-op").value;
    const key = $("try-key").value;
    const value = $("try-value").value;
    const old = $("try-old").value;
    if (!key) { setResult("error", `<span class="err">a key is needed</span>`); return; }
    const path = "/v1/kv/" + encodeURIComponent(key);
    const what = op === "put" ? `put ${key} = ${JSON.stringify(value)}` : op === "cas" ? `cas ${key}: ${JSON.stringify(old)} → ${JSON.stringify(value)}` : `${op} ${key}`;
    let opts = {};
    let seq = null;
    if (op !== "get") {
      seq = ++S.seq;
      const body = { client_id: S.clientId, seq };
      if (op === "put" || op === "cas") body.value = value;
      if (op === "cas") body.if_value = old;
      opts = { method: op === "delete" ? "DELETE" : "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    }
    S.busy = true;
    $("try-send").disabled = true;
    setResult("pending", `sending <span class="big">${esc(what)}</span> through server ${m.id}…`);
    const t0 = performance.now();
    let resp, doc;
    try {
      resp = await fetchT(url(m, path), opts, TRY_TIMEOUT_MS, m);
      doc = await resp.json().catch(() => ({}));
    } catch (err) {
      const why = err.name === "AbortError" ? "no answer in 15 s" : "it does not answer";
      setResult("error", `<span class="err">server ${m.id} (${esc(m.addr)}) is down</span>: ${why}. Pick another server.`);
      addHistory(`${what} @${m.id} → server down`, true);
      pollStatus(m);
      S.busy = false;
      $("try-send").disabled = false;
      return;
    }
    const ms = performance.now() - t0;
    try {
      if (op === "get") {
        if (resp.ok) {
          setResult("ok", `<span class="big">${esc(key)} = ${esc(JSON.stringify(doc.value))}</span> · version ${doc.version} · read through server ${m.id} in ${fmtMs(ms)} <span class="muted">(linearizable read: the leader confirms it still leads; no slot is used)</span>`);
          addHistory(`get ${key} @${m.id} → ${JSON.stringify(doc.value)} (v${doc.version}, ${fmtMs(ms)})`);
        } else {
          setResult("error", `<span class="err">${esc(doc.error || "HTTP " + resp.status)}</span>: ${esc(doc.message || "")} <span class="muted">(server ${m.id}, ${fmtMs(ms)})</span>`);
          addHistory(`get ${key} @${m.id} → ${doc.error || resp.status}`, true);
        }
        return;
      }
      const applied = resp.ok || resp.status === 404 || resp.status === 412;
      const head = resp.ok
        ? `<span class="big">${esc(what)}</span> → version ${doc.version}`
        : `<span class="err">${esc(doc.error || "HTTP " + resp.status)}</span>: ${esc(doc.message || "")}`;
      setResult(resp.ok ? "ok" : "error", `${head} · through server ${m.id} in ${fmtMs(ms)}` + (applied ? " · finding its slot…" : ""));
      if (!applied) { addHistory(`${what} @${m.id} → ${doc.error || resp.status}`, true); return; }
      const slot = await findSlot(m, seq);
      const where = slot == null ? "slot not found in the recent log" : `landed in <span class="slotref">slot ${slot}</span>`;
      setResult(resp.ok ? "ok" : "error", `${head} · through server ${m.id} in ${fmtMs(ms)} · ${where}`, slot);
      addHistory(`${what} @${m.id} → ${resp.ok ? "v" + doc.version : doc.error}${slot != null ? ", slot " + slot : ""} (${fmtMs(ms)})`, !resp.ok);
      if (slot != null) {
        S.highlight = slot;
        S.highlightUntil = Date.now() + 8000;
        scheduleRender();
      }
    } finally {
      S.busy = false;
      $("try-send").disabled = false;
    }
  }

  // -- start -------------------------------------------------------------------

  async function start() {
    S.token = takeToken();
    window.addEventListener("hashchange", onHashChange);
    $("try-op").addEventListener("change", onOpChange);
    $("try-form").addEventListener("submit", sendTry);
    onOpChange();
    renderRates();
    renderCharts();
    let st = null;
    while (!st) {
      try {
        st = await getJSON(`${location.protocol}//${location.host}/v1/status`, 3000);
      } catch (e) {
        $("conn-text").textContent = "this node does not answer; retrying…";
        await sleep(1000);
      }
    }
    S.homeId = st.id;
    const home = getMember(st.id, location.host);
    $("home-node").textContent = String(st.id);
    $("home-addr").textContent = location.host;
    addEvent("stream", `page opened on node ${st.id} (${location.host})`);
    onStatus(home, st);
    connectStream(st.id);
    pollStatuses();
    setInterval(pollStatuses, POLL_STATUS_MS);
    setInterval(pollViews, POLL_VIEW_MS);
    setInterval(watchStream, 500);
    setInterval(sampleRates, 1000);
    setInterval(renderCharts, 1000);
    setInterval(scheduleRender, 1000);  // "down for N s" and highlight expiry
    setInterval(pruneRemoved, 1000);
  }

  start();
})();
