// The SDK (through the demo page) in headless Chromium against the stock Django Channels
// base-layer backend of tests/django: daphne and a real redis-server on free ports, the
// page served by a static server on another origin. No `ready`, `seq` or `pong` there:
// the SDK must still show typing, deliver messages once, and reconnect after daphne dies.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";
import {
  ROOT, assertNoPageErrors, freePort, killProcess, launchBrowser, newPage, notePid, screenshot,
  shownMessages, sleep, startRedis, startStaticServer, stopChild, waitFor, waitForMessage, waitForText,
} from "./helpers.mjs";

const DJANGO = path.join(ROOT, "tests/django");
let redis;
let redisUrl;
let daphne;
let daphnePort;
let site;
let browser;
const pages = [];

/** Starts daphne (run-daphne.sh execs it, so the pid is daphne's) and waits until the
 *  token endpoint answers. */
async function startDaphne() {
  for (let attempt = 1; ; attempt++) {
    const child = spawn(path.join(DJANGO, "run-daphne.sh"), [String(daphnePort), redisUrl], { stdio: "ignore" });
    notePid("daphne", child.pid);
    const exited = new Promise((resolve) => child.once("exit", () => resolve(false)));
    const up = waitFor("daphne's token endpoint", () => devToken("alice").then(() => true, () => false), 30_000);
    if (await Promise.race([up, exited])) return child;
    // It exited: the port may still be held by the one just killed. Try again.
    if (attempt >= 10) throw new Error("daphne did not start");
    await sleep(300);
  }
}

async function devToken(user) {
  const res = await fetch(`http://127.0.0.1:${daphnePort}/api/dev/token`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: user }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return res.json();
}

before(async () => {
  assert.ok(existsSync(path.join(DJANGO, ".venv/bin/daphne")), "run tests/django/setup.sh first (tests/e2e/run.sh does)");
  redis = await startRedis("django-redis");
  redisUrl = redis.url;
  daphnePort = await freePort();
  daphne = await startDaphne();
  site = await startStaticServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await site?.close();
  if (daphne) await stopChild(daphne, "SIGKILL");
  await redis?.stop();
});

/** A TCP proxy to daphne that can be shut: while shut it drops every new connection at
 *  once, which the page sees as a server still down. Open connections are untouched. */
async function startGate(port) {
  let open = true;
  const sockets = new Set();
  const server = net.createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, "127.0.0.1");
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    for (const socket of [client, upstream]) {
      socket.on("error", end);
      socket.on("close", end);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    shut() { open = false; },
    open() { open = true; },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The demo page, served from another origin, talking to daphne (or to `port`, a gate in
 *  front of it) as `user`. */
async function openChat(user, chat = "general", port = daphnePort) {
  const page = await newPage(browser);
  pages.push(page);
  const server = `http://127.0.0.1:${port}`;
  await page.goto(`${site.url}/?${new URLSearchParams({ server, user, chat })}`);
  await waitForText(page, "connection", /^● Connected$/);
  return page;
}

async function closeAll() {
  assertNoPageErrors(...pages);
  await Promise.all(pages.splice(0).map((p) => p.context().close()));
}

const unique = (text) => `${text} ${Math.random().toString(36).slice(2, 7)}`;

test("django: typing and messages flow between two SDK clients", async () => {
  const alice = await openChat("alice");
  const bob = await openChat("bob");

  await alice.getByTestId("input").pressSequentially("Hola Bo", { delay: 40 });
  await waitForText(bob, "typing", /^Alice is typing…$/);
  await screenshot(bob, "django-typing");
  await waitForText(bob, "typing", /^$/, 6_000);

  const hello = unique("Hola Bob, from Django");
  await alice.getByTestId("input").fill(hello);
  await alice.getByTestId("input").press("Enter");
  assert.equal(await waitForMessage(bob, hello), 1, "Bob sees Alice's message once");
  assert.equal(await waitForMessage(alice, hello), 1, "Alice sees her message once, not pending");

  const reply = unique("Hola Alice");
  await bob.getByTestId("input").fill(reply);
  await bob.getByTestId("input").press("Enter");
  assert.equal(await waitForMessage(alice, reply), 1, "Alice sees Bob's reply once");
  const shown = (await shownMessages(alice)).find((m) => m.content === reply);
  assert.equal(shown.sender, "Bob");
  await screenshot(alice, "django-messages");
  await closeAll();
});

test("django: the SDK reconnects after daphne is killed and restarted; an outage message arrives once", async () => {
  // The base layer replays nothing to a client that reconnects: a member who is still
  // away when Alice's SDK resends her outage message never gets it. So Alice reaches
  // daphne through a gate that stays shut until Bob is back, the order a real outage
  // leaves to chance (and which made this test flaky when Alice came back first).
  const gate = await startGate(daphnePort);
  const alice = await openChat("alice", "general", gate.port);
  const bob = await openChat("bob");

  await killProcess(daphne.pid);
  gate.shut();
  await waitForText(alice, "connection", /Reconnecting/, 5_000);
  await waitForText(bob, "connection", /Reconnecting/, 5_000);

  const during = unique("Sent while daphne was down");
  await alice.getByTestId("input").fill(during);
  await alice.getByTestId("input").press("Enter");
  await waitFor("the pending message", async () =>
    (await shownMessages(alice)).some((m) => m.content === during && m.pending));
  await screenshot(alice, "django-outage");

  daphne = await startDaphne();
  await waitForText(bob, "connection", /^● Connected$/, 40_000);
  assert.match(await alice.getByTestId("connection").innerText(), /Reconnecting/, "Alice is still kept out");
  gate.open();
  // As a browser does when the network comes back: the SDK retries at once.
  await alice.evaluate(() => window.dispatchEvent(new Event("online")));
  await waitForText(alice, "connection", /^● Connected$/, 40_000);

  assert.equal(await waitForMessage(bob, during, 10_000), 1, "Bob gets the outage message once");
  assert.equal(await waitForMessage(alice, during, 10_000), 1, "Alice's copy is delivered once");
  await screenshot(bob, "django-reconnected");
  await closeAll();
  await gate.close();
});
