// Browser-test harness: what the wasm tests cannot do from inside the browser.
//
// - runs the real server (`--dev`) as a child on a free port, and restarts it on demand
//   on the same port (SIGTERM, so it closes sockets with 1012, then a pause, then start);
// - runs a TCP proxy in front of it that can be "cut" (every connection through it is
//   dropped and new ones refused), to take one client offline while the server and the
//   other clients stay up;
// - offers both over a CORS-enabled HTTP control endpoint the tests call with fetch:
//   POST /restart?pause_ms=N, POST /proxy/cut, POST /proxy/restore, GET /health.
//
// Prints one line when ready:
//   harness ready server=http://127.0.0.1:P control=http://127.0.0.1:C proxy=ws://127.0.0.1:X
// Usage: node harness.mjs <path/to/hablar-server> [server log file]

import { spawn } from "node:child_process";
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
const proxied = new Set();
const proxy = net.createServer((down) => {
  if (proxyCut) {
    down.destroy();
    return;
  }
  const up = net.connect(serverPort, "127.0.0.1");
  const pair = { down, up };
  proxied.add(pair);
  const end = () => {
    down.destroy();
    up.destroy();
    proxied.delete(pair);
  };
  down.on("error", end).on("close", end);
  up.on("error", end).on("close", end);
  down.pipe(up);
  up.pipe(down);
});

function cutProxy() {
  proxyCut = true;
  for (const { down, up } of proxied) {
    down.destroy();
    up.destroy();
  }
  proxied.clear();
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
  console.log(
    `harness ready server=http://127.0.0.1:${serverPort} control=http://127.0.0.1:${controlPort} proxy=ws://127.0.0.1:${proxyPort}`,
  );
} catch (e) {
  console.error(`harness failed: ${e.message}`);
  await stopServer();
  process.exit(1);
}
