// Shared helpers of the browser end-to-end tests: Debian's Chromium through
// playwright-core, hablar-server (started, killed, restarted on the same port), a static
// file server for pages on another origin, free ports, and polling waits.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, createReadStream, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startServer as startHablarServer } from "../../scripts/server.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
// The npm package wasm-pack built (override to try another build).
export const PKG_DIR = process.env.HABLAR_PKG_DIR ?? path.join(ROOT, "client/pkg");
export const OUT_DIR = path.join(ROOT, "test-output/e2e");
mkdirSync(OUT_DIR, { recursive: true });

/** Debian's Chromium, headless. Never a downloaded browser. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    ],
  });
}

/** A page in its own browser context (own storage: a separate user). */
export async function newPage(browser, viewport = { width: 800, height: 600 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.errors = [];
  // Uncaught page errors fail the test that owns the page (see `assertNoPageErrors`).
  page.on("pageerror", (err) => page.errors.push(err));
  return page;
}

export function assertNoPageErrors(...pages) {
  for (const page of pages) {
    if (page.errors.length) throw new Error(`page error: ${page.errors.map(String).join("; ")}`);
  }
}

export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(OUT_DIR, `${name}.png`) });
}

/** Polls `probe()` until it returns a truthy value; fails with `what` and the last value. */
export async function waitFor(what, probe, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

/** Waits until the text of `testid` on `page` matches `re`; returns the text. */
export async function waitForText(page, testid, re, timeoutMs = 10_000) {
  let text = "";
  try {
    await waitFor(`${testid} to match ${re}`, async () => {
      text = (await page.getByTestId(testid).textContent()) ?? "";
      return re.test(text);
    }, timeoutMs);
  } catch {
    throw new Error(`${testid} still shows ${JSON.stringify(text)} after ${timeoutMs} ms, wanted ${re}`);
  }
  return text;
}

/** The messages shown on `page`: `[{ sender, content, time, pending }]`. */
export function shownMessages(page) {
  return page.getByTestId("message").evaluateAll((items) =>
    items.map((li) => ({
      sender: li.querySelector(".sender").textContent,
      content: li.querySelector("[data-testid=message-content]").textContent,
      time: li.querySelector("time").textContent,
      pending: li.classList.contains("pending"),
    })),
  );
}

/** Waits until `content` is shown on `page` (sent, not pending); returns how many times. */
export async function waitForMessage(page, content, timeoutMs = 10_000) {
  const count = async () => (await shownMessages(page)).filter((m) => m.content === content && !m.pending).length;
  await waitFor(`message ${JSON.stringify(content)}`, count, timeoutMs);
  // Give a duplicate (a resend, a replay) a moment to show up before counting.
  await sleep(500);
  return count();
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A TCP port free right now on 127.0.0.1. */
export async function freePort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** Waits until something accepts TCP connections on `port`. */
export async function waitForPort(port, timeoutMs = 20_000) {
  await waitFor(`port ${port}`, () =>
    new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("connect", () => { socket.destroy(); resolve(true); });
      socket.once("error", () => resolve(false));
    }), timeoutMs);
}

/**
 * Starts hablar-server (`HABLAR_SERVER_BIN`, else target/debug's) `--dev [args]` on `bind`
 * (default a free port) through scripts/server.mjs, and resolves once it listens.
 * Returns `{ url, port, pid, child, stop() }`.
 */
export async function startServer(bind = "127.0.0.1:0", { attempts = 30, args = [] } = {}) {
  // The server's log goes to a file (run.sh keeps it to show on failure), else is dropped.
  const log = process.env.HABLAR_E2E_SERVER_LOG ? openSync(process.env.HABLAR_E2E_SERVER_LOG, "a") : "ignore";
  try {
    const server = await startHablarServer({
      bind, attempts, retryMs: 200, timeoutMs: 20_000, stderr: log,
      args: ["--dev", "--www-dir", path.join(ROOT, "www"), "--pkg-dir", PKG_DIR, ...args],
    });
    return { ...server, stop: () => stopChild(server.child) };
  } finally {
    if (typeof log === "number") closeSync(log);
  }
}

/** Kills a process (SIGKILL: a crash, not a graceful shutdown) and waits for it to go. */
export async function killProcess(pid) {
  try { process.kill(pid, "SIGKILL"); } catch { return; }
  await waitFor(`process ${pid} to exit`, () => {
    try { process.kill(pid, 0); return false; } catch { return true; }
  }, 10_000);
}

export async function stopChild(child, signal = "SIGTERM") {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
}

/**
 * The hablar-server of a test file: the one `tests/e2e/run.sh` started
 * (`HABLAR_E2E_URL`, pid in `HABLAR_E2E_PIDFILE`, which a restart updates so that the
 * script's trap stops the right process), or one of our own when run directly.
 */
export async function useServer() {
  const pidfile = process.env.HABLAR_E2E_PIDFILE;
  let own = null;
  let url = process.env.HABLAR_E2E_URL;
  if (!url) {
    own = await startServer();
    url = own.url;
  }
  const port = Number(new URL(url).port);
  const pid = () => (own ? own.pid : Number(readFileSync(pidfile, "utf8")));
  return {
    url,
    /** Kills the server (SIGKILL) and waits until it is gone. */
    async kill() {
      await killProcess(pid());
    },
    /** Starts a fresh server on the same port. */
    async start() {
      const next = await startServer(`127.0.0.1:${port}`);
      // Outlives this test process when run.sh owns it: do not keep us alive.
      next.child.unref();
      if (own) own = next;
      else writeFileSync(pidfile, String(next.pid));
    },
    async stop() {
      if (own) await killProcess(own.pid);
    },
  };
}

/**
 * A static file server on a free 127.0.0.1 port: `www/` at `/`, `client/pkg` at `/pkg/`
 * (the layout `hablar-server --dev` serves). For pages talking to another backend.
 */
export async function startStaticServer() {
  const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json" };
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://x");
    const [base, rel] = pathname.startsWith("/pkg/")
      ? [PKG_DIR, pathname.slice(5)]
      : [path.join(ROOT, "www"), pathname === "/" ? "index.html" : pathname.slice(1)];
    const file = path.join(base, path.normalize(rel));
    let ok = false;
    try { ok = file.startsWith(base) && statSync(file).isFile(); } catch { ok = false; }
    if (!ok) { res.writeHead(404).end("not found\n"); return; }
    res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" });
    createReadStream(file).pipe(res);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

/**
 * Notes a process this test started in `$HABLAR_E2E_TMP/NAME.pid`, so run.sh's trap
 * stops it even if the test process dies first.
 */
export function notePid(name, pid) {
  if (process.env.HABLAR_E2E_TMP) writeFileSync(path.join(process.env.HABLAR_E2E_TMP, `${name}.pid`), String(pid));
}

/** A throwaway redis-server on a free port (no persistence). Returns `{ url, stop() }`. */
export async function startRedis(name = "redis") {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  notePid(name, child.pid);
  await waitForPort(port);
  return { url: `redis://127.0.0.1:${port}/0`, stop: () => stopChild(child) };
}
