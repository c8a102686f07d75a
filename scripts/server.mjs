// Starting hablar-server from node: on a free loopback port (or a given address, for a
// restart on the same port), ready once it wrote its --port-file (whole, so present means
// listening). The one way node code starts it: the browser-test harness and the e2e
// tests; shell scripts have scripts/server-lib.sh, Rust hablar_tests::process.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** The binary: `HABLAR_SERVER_BIN`, else the debug build. */
export const SERVER_BIN = process.env.HABLAR_SERVER_BIN ?? path.join(ROOT, "target/debug/hablar-server");

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let nextPortFile = 0;

/**
 * Starts `bin --bind <bind> --port-file … [args]` and resolves once it listens with
 * `{ url, port, pid, child, stop(signal) }`. `stdout`/`stderr`: what `spawn`'s stdio takes
 * (default "ignore"; a file descriptor for a log). Rejects if it exits first (after
 * `attempts` tries `retryMs` apart: a restart on the same port can race the old socket)
 * or does not listen within `timeoutMs`.
 */
export async function startServer({
  bin = SERVER_BIN, bind = "127.0.0.1:0", args = [], env = {}, cwd = ROOT,
  stdout = "ignore", stderr = "ignore", timeoutMs = 30_000, attempts = 1, retryMs = 100,
} = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce({ bin, bind, args, env, cwd, stdout, stderr, timeoutMs });
    } catch (err) {
      if (attempt >= attempts || !err.exited) throw err;
      await sleep(retryMs);
    }
  }
}

async function startOnce({ bin, bind, args, env, cwd, stdout, stderr, timeoutMs }) {
  const portFile = path.join(os.tmpdir(), `hablar-server-node-${process.pid}-${nextPortFile++}.port`);
  rmSync(portFile, { force: true });
  const child = spawn(bin, ["--bind", bind, "--port-file", portFile, ...args], {
    cwd,
    stdio: ["ignore", stdout, stderr],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...env },
  });
  let exited = null;
  const onExit = (code, signal) => { exited = { code, signal }; };
  child.once("exit", onExit);
  child.once("error", (err) => { exited = { error: err }; });
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      let text = null;
      try { text = readFileSync(portFile, "utf8"); } catch { /* not yet */ }
      if (text !== null) {
        child.off("exit", onExit);
        const addr = text.trim();
        const port = Number(addr.slice(addr.lastIndexOf(":") + 1));
        return { url: `http://${addr}`, port, pid: child.pid, child, stop: (signal) => stopServer(child, signal) };
      }
      if (exited) {
        const err = new Error(`hablar-server exited before listening on ${bind}: ${JSON.stringify(exited)}`);
        err.exited = true;
        throw err;
      }
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`hablar-server did not listen on ${bind} within ${timeoutMs} ms`);
      }
      await sleep(20);
    }
  } finally {
    rmSync(portFile, { force: true });
  }
}

/**
 * Stops a server (SIGTERM: a graceful shutdown, sockets closed with 1012; SIGKILL: a
 * crash) and resolves once it exited; SIGKILL after `killAfterMs` if it has not.
 */
export async function stopServer(child, signal = "SIGTERM", killAfterMs = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs);
  await exited;
  clearTimeout(timer);
}
