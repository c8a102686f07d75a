// Two hablar-server instances sharing a real redis-server, one page on each: messages
// cross instances, and a page whose instance crashes resumes on its restart and gets
// what it missed once, in order.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  assertNoPageErrors, killProcess, launchBrowser, newPage, notePid, screenshot, shownMessages,
  startRedis, startServer, waitFor, waitForMessage, waitForText,
} from "./helpers.mjs";

let redis;
let args;
let serverA;
let serverB;
let browser;

before(async () => {
  redis = await startRedis("scale-redis");
  args = ["--backend", "redis", "--redis-url", redis.url];
  serverA = await startServer("127.0.0.1:0", { args });
  notePid("scale-a", serverA.pid);
  serverB = await startServer("127.0.0.1:0", { args });
  notePid("scale-b", serverB.pid);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await serverA?.stop();
  await serverB?.stop();
  await redis?.stop();
});

async function openChat(server, user) {
  const page = await newPage(browser);
  await page.goto(`${server.url}/?user=${user}&chat=general`);
  await waitForText(page, "connection", /^● Connected$/);
  return page;
}

async function send(page, text) {
  await page.getByTestId("input").fill(text);
  await page.getByTestId("input").press("Enter");
}

test("on Redis, a page whose instance crashed resumes and gets the messages it missed once, in order", async () => {
  const alice = await openChat(serverA, "alice");
  // What Alice's sockets say, to tell a real resume from a history reload.
  const sockets = [];
  alice.on("websocket", (ws) => {
    const entry = { resume: /[?&]since=\d+&epoch=/.test(ws.url()), ready: null };
    sockets.push(entry);
    ws.on("framereceived", ({ payload }) => {
      const frame = JSON.parse(payload);
      if (frame.type === "ready") entry.ready ??= frame;
    });
  });
  const bob = await openChat(serverB, "bob");

  await send(bob, "m1: across instances");
  assert.equal(await waitForMessage(alice, "m1: across instances"), 1, "a message crosses instances");

  await killProcess(serverA.pid);
  await waitForText(alice, "connection", /Reconnecting/, 5_000);
  // Bob's instance is fine: he goes on talking while Alice is away.
  await send(bob, "m2: while you were away");
  await send(bob, "m3: and this too");
  assert.equal(await waitForMessage(bob, "m3: and this too"), 1);
  await send(alice, "m4: typed offline");

  serverA = await startServer(`127.0.0.1:${new URL(serverA.url).port}`, { args });
  notePid("scale-a", serverA.pid);
  await waitForText(alice, "connection", /^● Connected$/, 40_000);

  for (const text of ["m2: while you were away", "m3: and this too", "m4: typed offline"]) {
    assert.equal(await waitForMessage(alice, text, 10_000), 1, `Alice sees "${text}" once`);
  }
  assert.equal(await waitForMessage(bob, "m4: typed offline", 10_000), 1, "Bob gets Alice's offline message once");
  await waitFor("Alice's list in order", async () => {
    const order = (await shownMessages(alice)).map((m) => m.content.slice(0, 2));
    return JSON.stringify(order) === JSON.stringify(["m1", "m2", "m3", "m4"]) || false;
  }, 5_000);
  const resumed = sockets.find((s) => s.ready);
  assert.ok(resumed?.resume, "the SDK reconnected with since= and epoch=");
  assert.equal(resumed.ready.recovered, true, "the server replayed the gap (no history reload needed)");
  await screenshot(alice, "resumed-on-redis");
  assertNoPageErrors(alice, bob);
});
