// Browser-test harness: what the wasm tests cannot do from inside the browser.
//
// - runs the real server (`--dev`) as a child on a free port (scripts/server.mjs), and
//   restarts it on demand on the same port (SIGTERM, so it closes sockets with 1012, then
//   a pause, then start); with `redis` as the backend, on a redis-server of its own on a
//   free port, stopped by its pid on exit;
// - runs a WebSocket proxy in front of it that can be "cut" (every connection through it
//   is dropped without a close frame and new ones refused), to take one client offline
//   while the server and the other clients stay up;
// - runs a base-layer peer: a stand-in for the Django Channels backend that speaks only
//   the base layer of PROTOCOL.md (no ready, no seq, no pong; integer message ids; it
//   trusts the token's user_id claim), to prove the SDK degrades gracefully;
// - offers all of it over a CORS-enabled HTTP control endpoint the tests call with fetch:
//   POST /restart?pause_ms=N, POST /proxy/cut, POST /proxy/restore, POST /proxy/swap
//   (the next two `new_message` frames to the newest client through the proxy reach it
//   second one first, as from a server that broke the order), POST /proxy/close?code=N
//   (every connection through the proxy gets a close frame with code N, default 1000,
//   that its server never sent: an unrequested close; the proxy stays open), POST
//   /base/drop (the base-layer peer drops every socket without a close frame), GET /health.
//
// WebSocket framing is the `ws` package's (the proxy relays messages and close codes, so
// it can hold one message back; the peer parses nothing by hand).
//
// Prints one line when ready:
//   harness ready server=http://127.0.0.1:P control=http://127.0.0.1:C proxy=ws://127.0.0.1:X base=ws://127.0.0.1:B backend=memory|redis
// Usage: node harness.mjs <path/to/hablar-server> [server log file] [memory|redis]

import { spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, createWriteStream, openSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { WebSocket, WebSocketServer } from "ws";
import { startServer as startHablarServer, stopServer as stopHablarServer } from "../../scripts/server.mjs";

const [serverBin, logPath = "/dev/null", backend = "memory"] = process.argv.slice(2);
if (!serverBin || !["memory", "redis"].includes(backend)) {
  console.error("usage: node harness.mjs <hablar-server binary> [log file] [memory|redis]");
  process.exit(2);
}
const log = createWriteStream(logPath, { flags: "a" });

let child = null;
let serverPort = 0;
// The Redis run's redis-server: `{ child, port }`.
let redis = null;

/** A TCP port free right now on 127.0.0.1. */
async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** A redis-server of our own, no persistence; resolves once it accepts connections. */
async function startRedis() {
  const port = await freePort();
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  redis = { child: proc, port };
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("connect", () => { socket.destroy(); resolve(true); });
      socket.once("error", () => resolve(false));
    });
    if (up) return;
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error("redis-server did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Stops our redis-server by its pid and waits for it to exit. */
async function stopRedis() {
  if (!redis) return;
  await stopHablarServer(redis.child, "SIGTERM", 5_000);
  redis = null;
}

/** Starts the server on `port` (0: any) and resolves with the port it listens on. */
async function startServer(port, attempts = 1) {
  const args = ["--dev"];
  if (redis) args.push("--backend", "redis", "--redis-url", `redis://127.0.0.1:${redis.port}/0`);
  const fd = openSync(logPath, "a");
  let server;
  try {
    server = await startHablarServer({
      bin: serverBin, bind: `127.0.0.1:${port}`, args, stdout: fd, stderr: fd, attempts, retryMs: 100,
    });
  } finally {
    closeSync(fd);
  }
  const proc = server.child;
  child = proc;
  proc.on("exit", (code, signal) => {
    log.write(`[harness] server exited code=${code} signal=${signal}\n`);
    if (child === proc) child = null;
  });
  return server.port;
}

/** SIGTERM and wait for the exit (SIGKILL after 10 s). */
async function stopServer() {
  if (child) await stopHablarServer(child, "SIGTERM", 10_000);
}

/** Starts again on the same port, retrying while the old socket is still being freed. */
async function restartServer(pauseMs) {
  await stopServer();
  await new Promise((r) => setTimeout(r, pauseMs));
  await startServer(serverPort, 21);
}

// The proxy: one upstream WebSocket per browser one, messages and close codes relayed.
let proxyCut = false;
// The connection /proxy/swap applies to: the newest one through the proxy when it was
// asked (the test's own client, not one a test before it has not finished closing).
let newestPair = null;
let swapPair = null;
const proxied = new Set();
const proxyWss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const proxy = http.createServer((req, res) => res.writeHead(404).end());
// Cut: new connections are dropped as they arrive, before any HTTP.
proxy.on("connection", (socket) => {
  if (proxyCut) socket.destroy();
});
proxy.on("upgrade", (req, socket, head) => {
  if (proxyCut) {
    socket.destroy();
    return;
  }
  const pair = { socket, down: null, up: null, end: null };
  proxied.add(pair);
  newestPair = pair;
  // Drops both sides without a close frame, as a cut cable would (once).
  let ended = false;
  pair.end = () => {
    if (ended) return;
    ended = true;
    proxied.delete(pair);
    pair.down?.terminate();
    pair.up.terminate();
    socket.destroy();
  };
  const end = pair.end;
  // A browser that gives up before the server answered leaves nothing open behind it.
  socket.once("close", () => {
    if (!pair.down) end();
  });
  const headers = {};
  for (const name of ["origin", "user-agent"]) {
    if (req.headers[name]) headers[name] = req.headers[name];
  }
  const up = new WebSocket(`ws://127.0.0.1:${serverPort}${req.url}`, { headers, perMessageDeflate: false });
  pair.up = up;
  // Server to browser, message by message, so that /proxy/swap can hold one back.
  let held = null;
  const toBrowser = (data, isBinary) => {
    const text = !isBinary && data.toString().includes('"type":"new_message"');
    if (text && swapPair === pair && held === null) {
      held = data;
      return;
    }
    pair.down.send(data, { binary: isBinary });
    if (text && held !== null) {
      swapPair = null;
      pair.down.send(held, { binary: false });
      held = null;
    }
  };
  // What the server sends before the browser's side is upgraded waits here.
  const early = [];
  up.on("message", (data, isBinary) => {
    if (pair.down) toBrowser(data, isBinary);
    else early.push([data, isBinary]);
  });
  up.on("unexpected-response", (_req, res) => {
    // The server refused the handshake: so does the proxy, with its status.
    ended = true;
    proxied.delete(pair);
    socket.end(`HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    res.destroy();
    up.terminate();
  });
  up.on("error", end);
  up.once("open", () => {
    if (ended) {
      up.terminate();
      return;
    }
    proxyWss.handleUpgrade(req, socket, head, (down) => {
      pair.down = down;
      for (const [data, isBinary] of early.splice(0)) toBrowser(data, isBinary);
      down.on("message", (data, isBinary) => {
        if (up.readyState === WebSocket.OPEN) up.send(data, { binary: isBinary });
      });
      down.on("close", (code, reason) => relayClose(up, code, reason));
      down.on("error", end);
      up.on("close", (code, reason) => {
        relayClose(down, code, reason);
        proxied.delete(pair);
      });
      if (up.readyState !== WebSocket.OPEN) end();
    });
  });
});

/** Closes `ws` as its peer was closed: the same code and reason, or abruptly. */
function relayClose(ws, code, reason) {
  if (ws.readyState === WebSocket.CLOSING || ws.readyState === WebSocket.CLOSED) return;
  try {
    if (code === 1005) ws.close();
    else if (code === 1006) ws.terminate();
    else ws.close(code, reason);
  } catch {
    ws.terminate(); // a code that may not be sent
  }
}

/** Closes every browser connection through the proxy with `code`, as if the server had,
 * and drops its upstream without a close frame; new connections still go through. */
function closeProxied(code) {
  for (const pair of [...proxied]) {
    proxied.delete(pair);
    pair.up.removeAllListeners("close");
    pair.up.terminate();
    if (pair.down) relayClose(pair.down, code, "");
    else pair.socket.destroy();
  }
}

function cutProxy() {
  proxyCut = true;
  for (const pair of [...proxied]) pair.end();
}

// The base-layer peer: relays like a Channels group send.
const baseClients = new Set();
let baseNextId = 1;
const baseWss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const basePeer = http.createServer((req, res) => res.writeHead(404).end());
basePeer.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url, "http://localhost");
  let claims = {};
  try {
    claims = JSON.parse(Buffer.from(url.searchParams.get("token").split(".")[1], "base64url"));
  } catch {}
  if (!/^\/ws\/chat\/[\w-]+\/?$/.test(url.pathname) || claims.user_id === undefined) {
    socket.end("HTTP/1.1 403 Forbidden\r\n\r\n");
    return;
  }
  baseWss.handleUpgrade(req, socket, head, (ws) => {
    const client = {
      ws,
      user: String(claims.user_id),
      name: claims.username ?? String(claims.user_id),
    };
    baseClients.add(client);
    ws.on("message", (data, isBinary) => {
      if (!isBinary) baseMessage(client, data.toString());
    });
    ws.on("close", () => baseClients.delete(client));
    ws.on("error", () => ws.terminate());
  });
});

function baseMessage(client, text) {
  let event;
  try {
    event = JSON.parse(text);
  } catch {
    return;
  }
  let out;
  if (event.type === "typing_start") {
    out = { type: "typing_start", user_id: client.user, username: client.name };
  } else if (event.type === "typing_stop") {
    out = { type: "typing_stop", user_id: client.user };
  } else if (event.type === "new_message" && typeof event.message?.content === "string") {
    out = {
      type: "new_message",
      message: {
        ...event.message,
        id: baseNextId++,
        sender: { id: client.user, username: client.name },
        created_at: new Date().toISOString(),
      },
    };
  } else {
    return; // ping and other extensions: a base-layer peer answers nothing
  }
  // A Channels group send reaches the whole group, the sender included.
  const frame = JSON.stringify(out);
  for (const c of baseClients) {
    if (c.ws.readyState === WebSocket.OPEN) c.ws.send(frame);
  }
}

const control = http.createServer(async (req, res) => {
  const cors = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, POST, OPTIONS",
    "access-control-allow-headers": "content-type",
  };
  if (req.method === "OPTIONS") {
    res.writeHead(204, cors).end();
    return;
  }
  const url = new URL(req.url, "http://localhost");
  try {
    if (req.method === "POST" && url.pathname === "/restart") {
      await restartServer(Number(url.searchParams.get("pause_ms") ?? 300));
    } else if (req.method === "POST" && url.pathname === "/proxy/cut") {
      cutProxy();
    } else if (req.method === "POST" && url.pathname === "/proxy/restore") {
      proxyCut = false;
    } else if (req.method === "POST" && url.pathname === "/proxy/close") {
      closeProxied(Number(url.searchParams.get("code") ?? 1000));
    } else if (req.method === "POST" && url.pathname === "/proxy/swap") {
      swapPair = newestPair;
    } else if (req.method === "POST" && url.pathname === "/base/drop") {
      for (const c of baseClients) c.ws.terminate();
      baseClients.clear();
    } else if (!(req.method === "GET" && url.pathname === "/health")) {
      res.writeHead(404, cors).end("not found");
      return;
    }
    res.writeHead(200, { ...cors, "content-type": "application/json" });
    res.end(JSON.stringify({ ok: true, server_port: serverPort }));
  } catch (e) {
    res.writeHead(500, cors).end(String(e));
  }
});

function listen(server) {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server.address().port)));
}

async function shutdown() {
  cutProxy();
  await stopServer();
  await stopRedis();
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

try {
  if (backend === "redis") await startRedis();
  serverPort = await startServer(0);
  const controlPort = await listen(control);
  const proxyPort = await listen(proxy);
  const basePort = await listen(basePeer);
  console.log(
    `harness ready server=http://127.0.0.1:${serverPort} control=http://127.0.0.1:${controlPort} ` +
      `proxy=ws://127.0.0.1:${proxyPort} base=ws://127.0.0.1:${basePort} backend=${backend}`,
  );
} catch (e) {
  console.error(`harness failed: ${e.message}`);
  await stopServer();
  await stopRedis();
  process.exit(1);
}
