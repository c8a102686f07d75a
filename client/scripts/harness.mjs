// Browser-test harness: what the wasm tests cannot do from inside the browser.
//
// - runs the real server (`--dev`) as a child on a free port, and restarts it on demand
//   on the same port (SIGTERM, so it closes sockets with 1012, then a pause, then start);
// - runs a TCP proxy in front of it that can be "cut" (every connection through it is
//   dropped and new ones refused), to take one client offline while the server and the
//   other clients stay up;
// - runs a base-layer peer: a stand-in for the Django Channels backend that speaks only
//   the base layer of PROTOCOL.md (no ready, no seq, no pong; integer message ids; it
//   trusts the token's user_id claim), to prove the SDK degrades gracefully;
// - offers all of it over a CORS-enabled HTTP control endpoint the tests call with fetch:
//   POST /restart?pause_ms=N, POST /proxy/cut, POST /proxy/restore, POST /proxy/swap
//   (the next two `new_message` frames to the newest client through the proxy reach it
//   second one first, as from a server that broke the order), POST /base/drop (the
//   base-layer peer drops every socket without a close frame), GET /health.
//
// Prints one line when ready:
//   harness ready server=http://127.0.0.1:P control=http://127.0.0.1:C proxy=ws://127.0.0.1:X base=ws://127.0.0.1:B
// Usage: node harness.mjs <path/to/hablar-server> [server log file]

import { spawn } from "node:child_process";
import crypto from "node:crypto";
import { createWriteStream } from "node:fs";
import http from "node:http";
import net from "node:net";

const [serverBin, logPath = "/dev/null"] = process.argv.slice(2);
if (!serverBin) {
  console.error("usage: node harness.mjs <hablar-server binary> [log file]");
  process.exit(2);
}
const log = createWriteStream(logPath, { flags: "a" });

let child = null;
let serverPort = 0;

/** Starts the server on `port` (0: any) and resolves with the port it listens on. */
function startServer(port) {
  return new Promise((resolve, reject) => {
    const proc = spawn(serverBin, ["--dev", "--bind", `127.0.0.1:${port}`], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    child = proc;
    let buffered = "";
    const timer = setTimeout(() => reject(new Error("server did not start in 30 s")), 30_000);
    proc.stdout.on("data", (chunk) => {
      log.write(chunk);
      buffered += chunk.toString();
      const m = buffered.match(/hablar-server listening on http:\/\/[\d.]+:(\d+)/);
      if (m) {
        clearTimeout(timer);
        buffered = "";
        resolve(Number(m[1]));
      }
    });
    proc.stderr.on("data", (chunk) => log.write(chunk));
    proc.on("exit", (code, signal) => {
      log.write(`[harness] server exited code=${code} signal=${signal}\n`);
      clearTimeout(timer);
      if (child === proc) child = null;
      reject(new Error(`server exited early (code ${code})`));
    });
  });
}

/** SIGTERM and wait for the exit (SIGKILL after 10 s). */
function stopServer() {
  const proc = child;
  if (!proc) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    proc.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    proc.kill("SIGTERM");
  });
}

/** Starts again on the same port, retrying while the old socket is still being freed. */
async function restartServer(pauseMs) {
  await stopServer();
  await new Promise((r) => setTimeout(r, pauseMs));
  for (let i = 0; ; i++) {
    try {
      await startServer(serverPort);
      return;
    } catch (e) {
      if (i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

// The proxy: one upstream connection per downstream one.
let proxyCut = false;
// The connection /proxy/swap applies to: the newest one through the proxy when it was
// asked (the test's own client, not one a test before it has not finished closing).
let newestPair = null;
let swapPair = null;
const proxied = new Set();
const proxy = net.createServer((down) => {
  if (proxyCut) {
    down.destroy();
    return;
  }
  const up = net.connect(serverPort, "127.0.0.1");
  const pair = { down, up };
  proxied.add(pair);
  newestPair = pair;
  const end = () => {
    down.destroy();
    up.destroy();
    proxied.delete(pair);
  };
  down.on("error", end).on("close", end);
  up.on("error", end).on("close", end);
  down.pipe(up);
  // Server to client: the HTTP 101 as it is, then frame by frame, so that /proxy/swap can
  // hold one back.
  let handshake = Buffer.alloc(0);
  let held = null;
  const frames = serverFrames((frame, payload) => {
    const text = (frame[0] & 0x0f) === 1 && payload.includes('"type":"new_message"');
    if (text && swapPair === pair && held === null) {
      held = frame;
      return;
    }
    down.write(frame);
    if (text && held !== null) {
      swapPair = null;
      down.write(held);
      held = null;
    }
  });
  up.on("data", (chunk) => {
    if (handshake === null) return frames(chunk);
    handshake = Buffer.concat([handshake, chunk]);
    const headEnd = handshake.indexOf("\r\n\r\n");
    if (headEnd < 0) return;
    down.write(handshake.subarray(0, headEnd + 4));
    const rest = handshake.subarray(headEnd + 4);
    handshake = null;
    if (rest.length > 0) frames(rest);
  });
});

// Splits a server's byte stream (unmasked frames, RFC 6455) into whole frames.
function serverFrames(onFrame) {
  let buf = Buffer.alloc(0);
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        off = 10;
      }
      if (buf.length < off + len) return;
      const frame = buf.subarray(0, off + len);
      buf = buf.subarray(off + len);
      onFrame(frame, frame.subarray(off));
    }
  };
}

function cutProxy() {
  proxyCut = true;
  for (const { down, up } of proxied) {
    down.destroy();
    up.destroy();
  }
  proxied.clear();
}

// The base-layer peer: a minimal WebSocket server (RFC 6455 framing by hand, so the
// harness needs no npm packages) that relays like a Channels group send.
const baseClients = new Set();
let baseNextId = 1;
const basePeer = http.createServer((req, res) => res.writeHead(404).end());
basePeer.on("upgrade", (req, socket) => {
  const url = new URL(req.url, "http://localhost");
  let claims = {};
  try {
    claims = JSON.parse(Buffer.from(url.searchParams.get("token").split(".")[1], "base64url"));
  } catch {}
  if (!/^\/ws\/chat\/[\w-]+\/?$/.test(url.pathname) || claims.user_id === undefined) {
    socket.end("HTTP/1.1 403 Forbidden\r\n\r\n");
    return;
  }
  const accept = crypto
    .createHash("sha1")
    .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  const client = {
    socket,
    user: String(claims.user_id),
    name: claims.username ?? String(claims.user_id),
  };
  baseClients.add(client);
  let pending = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    for (let frame; (frame = parseFrame(pending)); ) {
      pending = pending.subarray(frame.size);
      baseFrame(client, frame);
    }
  });
  socket.on("close", () => baseClients.delete(client));
  socket.on("error", () => socket.destroy());
});

function parseFrame(buf) {
  if (buf.length < 2) return null;
  let len = buf[1] & 0x7f;
  let off = 2;
  if (len === 126) {
    if (buf.length < 4) return null;
    len = buf.readUInt16BE(2);
    off = 4;
  } else if (len === 127) {
    if (buf.length < 10) return null;
    len = Number(buf.readBigUInt64BE(2));
    off = 10;
  }
  const masked = (buf[1] & 0x80) !== 0;
  const mask = off;
  if (masked) off += 4;
  if (buf.length < off + len) return null;
  const payload = Buffer.from(buf.subarray(off, off + len));
  if (masked) for (let i = 0; i < len; i++) payload[i] ^= buf[mask + (i % 4)];
  return { opcode: buf[0] & 0x0f, payload, size: off + len };
}

function sendText(socket, text) {
  const data = Buffer.from(text);
  let header;
  if (data.length < 126) {
    header = Buffer.from([0x81, data.length]);
  } else {
    header = Buffer.alloc(4);
    header[0] = 0x81;
    header[1] = 126;
    header.writeUInt16BE(data.length, 2);
  }
  socket.write(Buffer.concat([header, data]));
}

function baseFrame(client, frame) {
  if (frame.opcode === 8) {
    client.socket.end(Buffer.from([0x88, 0]));
    return;
  }
  if (frame.opcode !== 1) return;
  let event;
  try {
    event = JSON.parse(frame.payload.toString());
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
  for (const c of baseClients) sendText(c.socket, JSON.stringify(out));
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
    } else if (req.method === "POST" && url.pathname === "/proxy/swap") {
      swapPair = newestPair;
    } else if (req.method === "POST" && url.pathname === "/base/drop") {
      for (const c of baseClients) c.socket.destroy();
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
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

try {
  serverPort = await startServer(0);
  const controlPort = await listen(control);
  const proxyPort = await listen(proxy);
  const basePort = await listen(basePeer);
  console.log(
    `harness ready server=http://127.0.0.1:${serverPort} control=http://127.0.0.1:${controlPort} ` +
      `proxy=ws://127.0.0.1:${proxyPort} base=ws://127.0.0.1:${basePort}`,
  );
} catch (e) {
  console.error(`harness failed: ${e.message}`);
  await stopServer();
  process.exit(1);
}
