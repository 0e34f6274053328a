#!/usr/bin/env node
// A keyshade-like API for tether's integration tests and benchmark: the REST calls of
// `keyshade run` and the Socket.IO v4 gateway `/change-notifier`, with the real `socket.io`
// 4.8 and `eccrypto` 1.1.6, plus a control API under /_test/ that tests use to change the state and
// misbehave on purpose. It prints its port on stdout once listening, then exits when stdin
// closes or on SIGTERM/SIGINT.
//
// Flags:
//   --host H                 address to listen on (default 127.0.0.1)
//   --port N                 port (default 0: any free port)
//   --ping-interval MS       Engine.IO ping interval (default 25000)
//   --ping-timeout MS        Engine.IO ping timeout (default 20000)
//   --workspace SLUG         the one workspace (default "tether")
//   --token TOKEN[=USER]     a valid x-keyshade-token and its user (repeatable; default
//                            ks.pat.test=tester); one live registered socket per user
//   --project SLUG:KEY:ENVS  a project, its private key (hex, the public key is derived) and
//                            its comma-separated environments (repeatable)
//   --cert FILE --key FILE   serve https/wss instead of http/ws; the control API is then
//                            also served over plain http on a second port, printed as a
//                            second line `control PORT`
//   --keep-stdin             do not exit when stdin closes
//
// Control API (JSON bodies, no auth; every answer is JSON):
//   POST /_test/project     {slug, privateKey, environments}
//   POST /_test/secret      {project, environment, name, value, emit=true, times=1}
//   POST /_test/variable    {project, environment, name, value, emit=true, times=1}
//   POST /_test/delete      {project, environment, name}        (emits nothing, like keyshade)
//   POST /_test/emit        {project, environment, payload, event="configuration-updated", times=1}
//   POST /_test/disconnect  {mode="server"|"destroy"}           every connected socket
//   POST /_test/refuse      {times, message?}  refuse the next registrations ("already connected")
//   POST /_test/rest-fail   {times, status=503}  fail the next snapshot requests
//   POST /_test/close-mid-frame {project, environment, name, value, isPlaintext}
//                           store the change, write the first half of its event frame to every
//                           registered socket of that environment, then destroy the TCP socket
//   POST /_test/mute        stop pinging the current connections (a silent server)
//   GET  /_test/state       counters (see `state()` below)
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");
const { Server } = require("socket.io");

// eccrypto announces its JS fallback on stdout with console.info; stdout carries the port.
const eccrypto = (() => {
  const info = console.info;
  console.info = (...a) => console.error(...a);
  try {
    return require("eccrypto");
  } finally {
    console.info = info;
  }
})();

const NAMESPACE = "/change-notifier";

// ---- flags ----
const opts = {
  host: "127.0.0.1",
  port: 0,
  pingInterval: 25000,
  pingTimeout: 20000,
  workspace: "tether",
  tokens: new Map(),
  projects: [],
  cert: null,
  key: null,
  keepStdin: false,
};
{
  const argv = process.argv.slice(2);
  const next = (i) => {
    if (i + 1 >= argv.length) fail(`${argv[i]} needs a value`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case "--host": opts.host = next(i++); break;
      case "--port": opts.port = Number(next(i++)); break;
      case "--ping-interval": opts.pingInterval = Number(next(i++)); break;
      case "--ping-timeout": opts.pingTimeout = Number(next(i++)); break;
      case "--workspace": opts.workspace = next(i++); break;
      case "--token": {
        const [token, user] = next(i++).split("=");
        opts.tokens.set(token, user || token);
        break;
      }
      case "--project": {
        const [slug, key, envs] = next(i++).split(":");
        opts.projects.push({ slug, privateKey: key, environments: (envs || "").split(",").filter(Boolean) });
        break;
      }
      case "--cert": opts.cert = next(i++); break;
      case "--key": opts.key = next(i++); break;
      case "--keep-stdin": opts.keepStdin = true; break;
      default: fail(`unknown flag ${a}`);
    }
  }
  if (opts.tokens.size === 0) opts.tokens.set("ks.pat.test", "tester");
}

function fail(msg) {
  console.error(`keyshade test server: ${msg}`);
  process.exit(64);
}

// ---- state ----
// slug → {publicKey: Buffer, environments: Map(env → {secrets: Map, variables: Map})}
const projects = new Map();
const counters = {
  upgrades: 0, // websocket upgrades accepted
  upgradesRefused: 0, // upgrades refused for the token
  connections: 0, // namespace connections
  registrations: 0, // successful registrations
  refusals: 0, // refused registrations
  pings: 0,
  pongs: 0,
  rest: { health: 0, liveUpdates: 0, secret: 0, variable: 0 },
  events: 0, // configuration-updated frames sent (per socket, per copy)
};
const closeReasons = [];
let refuseNext = { times: 0, message: "" };
let restFail = { times: 0, status: 503 };
let lastRegistration = null;
// socket.id → {socket, user, project, environment} for registered sockets
const registered = new Map();

function addProject({ slug, privateKey, environments }) {
  if (!slug) throw new Error("a project needs a slug");
  const priv = Buffer.from(privateKey || "", "hex");
  if (priv.length !== 32) throw new Error(`project ${slug}: privateKey must be 32 bytes of hex`);
  const envs = new Map();
  for (const e of environments || []) envs.set(e, { secrets: new Map(), variables: new Map() });
  projects.set(slug, { publicKey: eccrypto.getPublic(priv), environments: envs });
}
for (const p of opts.projects) addProject(p);

/** The environment's store, or an {status, message} error as keyshade would answer it. */
function lookup(project, environment) {
  const p = projects.get(project);
  if (!p) return { error: { status: 404, message: `Project ${project} not found` } };
  const env = p.environments.get(environment);
  if (!env) return { error: { status: 404, message: `Environment ${environment} not found` } };
  return { project: p, env };
}

function mustLookup(project, environment) {
  const l = lookup(project, environment);
  if (l.error) throw new Error(l.error.message);
  return l;
}

/** eccrypto ciphertext as keyshade stores it: JSON of {iv, ephemPublicKey, ciphertext, mac}. */
async function encrypt(publicKey, value) {
  return JSON.stringify(await eccrypto.encrypt(publicKey, Buffer.from(String(value), "utf8")));
}

function socketsOf(project, environment) {
  return [...registered.values()].filter(
    (r) => r.socket.connected && r.project === project && r.environment === environment,
  );
}

function emit(project, environment, event, payload, times) {
  let sent = 0;
  for (const r of socketsOf(project, environment)) {
    for (let i = 0; i < times; i++) {
      r.socket.emit(event, payload);
      counters.events++;
      sent++;
    }
  }
  return sent;
}

function state() {
  const ns = io.of(NAMESPACE);
  return {
    connected: ns.sockets.size,
    registered: [...registered.values()].filter((r) => r.socket.connected).length,
    ...counters,
    closeReasons,
    lastRegistration,
  };
}

// ---- HTTP: keyshade's REST calls and the control API ----
function send(res, status, body) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": typeof body === "string" ? "text/plain" : "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

function sendError(res, status, message) {
  const error = { 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found" }[status]
    || "Service Unavailable";
  send(res, status, { message, error, statusCode: status });
}

function tokenUser(req) {
  const t = req.headers["x-keyshade-token"];
  return typeof t === "string" ? opts.tokens.get(t) : undefined;
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString("utf8");
  return text ? JSON.parse(text) : {};
}

async function api(req, res, url) {
  if (req.method === "GET" && url.pathname === "/api/health") {
    counters.rest.health++;
    return send(res, 200, "UP");
  }
  if (!tokenUser(req)) return sendError(res, 401, "Unauthorized");
  if (req.method === "GET" && url.pathname === "/api/api-key/access/live-updates") {
    counters.rest.liveUpdates++;
    return send(res, 200, {});
  }
  const m = /^\/api\/(secret|variable)\/([^/]+)\/([^/]+)\/?$/.exec(url.pathname);
  if (req.method !== "GET" || !m) return sendError(res, 404, `Cannot ${req.method} ${url.pathname}`);
  const [, kind, project, environment] = m.map(decodeURIComponent);
  counters.rest[kind]++;
  if (restFail.times > 0) {
    restFail.times--;
    return sendError(res, restFail.status, "the test server fails this request on purpose");
  }
  const l = lookup(project, environment);
  if (l.error) return sendError(res, l.error.status, l.error.message);
  if (kind === "secret") {
    return send(res, 200, [...l.env.secrets].map(([name, value]) => ({ name, value })));
  }
  return send(res, 200, [...l.env.variables].map(([name, value]) => ({ name, value, isPlaintext: true })));
}

async function control(req, res, url) {
  const b = req.method === "POST" ? await readJson(req) : {};
  const times = b.times === undefined ? 1 : Number(b.times);
  switch (`${req.method} ${url.pathname}`) {
    case "GET /_test/state":
      return send(res, 200, state());
    case "POST /_test/project":
      addProject(b);
      return send(res, 200, { ok: true });
    case "POST /_test/secret":
    case "POST /_test/variable": {
      const secret = url.pathname.endsWith("secret");
      const { project, env } = mustLookup(b.project, b.environment);
      const value = secret ? await encrypt(project.publicKey, b.value) : String(b.value);
      (secret ? env.secrets : env.variables).set(b.name, value);
      (secret ? env.variables : env.secrets).delete(b.name);
      const sent = b.emit === false
        ? 0
        : emit(b.project, b.environment, "configuration-updated", { name: b.name, value, isPlaintext: !secret }, times);
      return send(res, 200, { ok: true, sent, value });
    }
    case "POST /_test/delete": {
      const { env } = mustLookup(b.project, b.environment);
      const deleted = env.secrets.delete(b.name) | env.variables.delete(b.name);
      return send(res, 200, { ok: true, deleted: Boolean(deleted) });
    }
    case "POST /_test/emit": {
      const sent = emit(b.project, b.environment, b.event || "configuration-updated", b.payload, times);
      return send(res, 200, { ok: true, sent });
    }
    case "POST /_test/disconnect": {
      let n = 0;
      for (const s of io.of(NAMESPACE).sockets.values()) {
        n++;
        if (b.mode === "destroy") rawSocket(s).destroy();
        else s.disconnect(true);
      }
      return send(res, 200, { ok: true, disconnected: n });
    }
    case "POST /_test/refuse":
      refuseNext = { times, message: b.message || "User tester is already connected" };
      return send(res, 200, { ok: true });
    case "POST /_test/rest-fail":
      restFail = { times, status: Number(b.status || 503) };
      return send(res, 200, { ok: true });
    case "POST /_test/close-mid-frame":
      return send(res, 200, { ok: true, closed: await closeMidFrame(b) });
    case "POST /_test/mute": {
      let n = 0;
      for (const s of io.of(NAMESPACE).sockets.values()) {
        clearTimeout(s.conn.pingIntervalTimer);
        clearTimeout(s.conn.pingTimeoutTimer);
        n++;
      }
      return send(res, 200, { ok: true, muted: n });
    }
    default:
      return sendError(res, 404, `no control ${req.method} ${url.pathname}`);
  }
}

/** The TCP socket under a Socket.IO socket (websocket transport, the `ws` engine). */
function rawSocket(s) {
  return s.conn.transport.socket._socket;
}

/** Store a change, then cut its event frame in half on the wire and drop the connection. */
async function closeMidFrame(b) {
  const { project, env } = mustLookup(b.project, b.environment);
  const plain = b.isPlaintext !== false;
  const value = plain ? String(b.value) : await encrypt(project.publicKey, b.value);
  (plain ? env.variables : env.secrets).set(b.name, value);
  const text = `42${NAMESPACE},${JSON.stringify(["configuration-updated", { name: b.name, value, isPlaintext: plain }])}`;
  const payload = Buffer.from(text, "utf8");
  // A server frame is unmasked: FIN + text opcode, then the 7-bit or 16-bit length.
  const header = payload.length < 126
    ? Buffer.from([0x81, payload.length])
    : Buffer.from([0x81, 126, payload.length >> 8, payload.length & 0xff]);
  const partial = Buffer.concat([header, payload.subarray(0, Math.floor(payload.length / 2))]);
  const targets = socketsOf(b.project, b.environment);
  await Promise.all(targets.map((r) => new Promise((resolve) => {
    const raw = rawSocket(r.socket);
    raw.write(partial, () => {
      raw.destroy();
      resolve();
    });
  })));
  return targets.length;
}

async function onRequest(req, res) {
  const url = new URL(req.url, "http://x");
  try {
    if (url.pathname.startsWith("/_test/")) await control(req, res, url);
    else await api(req, res, url);
  } catch (e) {
    sendError(res, 400, String(e && e.message ? e.message : e));
  }
}

const server = opts.cert
  ? https.createServer({ cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) }, onRequest)
  : http.createServer(onRequest);

// ---- Socket.IO: websocket only, token checked on the upgrade ----
const io = new Server(server, {
  transports: ["websocket"],
  serveClient: false,
  pingInterval: opts.pingInterval,
  pingTimeout: opts.pingTimeout,
});

// Engine.IO answers a refused upgrade with a plain 400; keyshade's clients should see a 401
// with its JSON error, so the token is checked before Engine.IO sees the upgrade.
{
  const engineUpgrade = server.listeners("upgrade");
  server.removeAllListeners("upgrade");
  server.on("upgrade", (req, socket, head) => {
    if (!tokenUser(req)) {
      counters.upgradesRefused++;
      const body = JSON.stringify({ message: "Unauthorized", error: "Unauthorized", statusCode: 401 });
      socket.on("error", () => {});
      socket.end(
        "HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Type: application/json\r\n"
          + `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      return;
    }
    counters.upgrades++;
    for (const l of engineUpgrade) l.call(server, req, socket, head);
  });
}

io.engine.on("connection", (conn) => {
  conn.on("packetCreate", (p) => { if (p.type === "ping") counters.pings++; });
  conn.on("heartbeat", () => counters.pongs++);
  conn.on("close", (reason) => closeReasons.push(reason));
});

io.of(NAMESPACE).on("connection", (socket) => {
  counters.connections++;
  const user = opts.tokens.get(socket.handshake.headers["x-keyshade-token"]);
  socket.on("disconnect", () => registered.delete(socket.id));
  socket.on("register-client-app", (data) => {
    const reply = (success, message) => socket.emit("client-registered", { success, message });
    lastRegistration = data;
    const d = data || {};
    if (refuseNext.times > 0) {
      refuseNext.times--;
      counters.refusals++;
      return reply(false, refuseNext.message);
    }
    const live = [...registered.values()].find(
      (r) => r.user === user && r.socket.id !== socket.id && r.socket.connected,
    );
    if (live) {
      counters.refusals++;
      return reply(false, `User ${user} is already connected`);
    }
    if (d.workspaceSlug !== opts.workspace) {
      counters.refusals++;
      return reply(false, `Workspace ${d.workspaceSlug} not found`);
    }
    const l = lookup(d.projectSlug, d.environmentSlug);
    if (l.error) {
      counters.refusals++;
      return reply(false, l.error.message);
    }
    registered.set(socket.id, { socket, user, project: d.projectSlug, environment: d.environmentSlug });
    counters.registrations++;
    reply(true, "Registration Successful");
  });
});

server.listen(opts.port, opts.host, () => {
  process.stdout.write(`${server.address().port}\n`);
  if (opts.cert) {
    const plain = http.createServer((req, res) => {
      const url = new URL(req.url, "http://x");
      if (!url.pathname.startsWith("/_test/")) return sendError(res, 404, "control API only");
      onRequest(req, res);
    });
    plain.listen(0, opts.host, () => process.stdout.write(`control ${plain.address().port}\n`));
  }
});

function stop() {
  io.close();
  server.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
if (!opts.keepStdin) {
  process.stdin.on("end", stop);
  process.stdin.on("close", stop);
  process.stdin.resume();
}
