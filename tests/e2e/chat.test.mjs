// The demo page (www/) on hablar-server --dev, driven in Debian's headless Chromium: one
// browser context per user. Covers typing, delivery, history, a non-member, and a server
// crash and restart. Screenshots go to test-output/e2e/.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  assertNoPageErrors, launchBrowser, newPage, screenshot, shownMessages, sleep,
  useServer, waitFor, waitForMessage, waitForText,
} from "./helpers.mjs";

let server;
let browser;
const pages = [];

before(async () => {
  server = await useServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Opens the demo page as `user` in `chat` (its own context) and waits for "● Connected". */
async function openChat(user, chat = "general", viewport = undefined) {
  const page = await newPage(browser, viewport);
  pages.push(page);
  await page.goto(`${server.url}/?user=${user}&chat=${chat}`);
  await waitForText(page, "connection", /^● Connected$/);
  return page;
}

async function closeAll() {
  assertNoPageErrors(...pages);
  await Promise.all(pages.splice(0).map((p) => p.context().close()));
}

const unique = (text) => `${text} ${Math.random().toString(36).slice(2, 7)}`;

test("typing shows 'Alice is typing…' to the others and goes away when Alice stops or closes the tab", async () => {
  const alice = await openChat("alice");
  const bob = await openChat("bob");
  const carol = await openChat("carol");

  await alice.getByTestId("input").pressSequentially("Hi Bo", { delay: 40 });
  await waitForText(bob, "typing", /^Alice is typing…$/);
  await screenshot(bob, "typing-one");
  assert.equal(await alice.getByTestId("typing").textContent(), "", "Alice does not see herself typing");

  await carol.getByTestId("input").pressSequentially("Me t", { delay: 40 });
  await waitForText(bob, "typing", /^(Alice and Carol|Carol and Alice) are typing…$/);
  await screenshot(bob, "typing-two");

  // No more keystrokes: the typing lease ends 2 s after the last one.
  const stopped = Date.now();
  await waitForText(bob, "typing", /^$/, 6_000);
  assert.ok(Date.now() - stopped < 6_000, "the typing line is gone within the lease");

  // Closing the tab mid-word clears the line at once, not after a lease runs out.
  await alice.getByTestId("input").pressSequentially(" again", { delay: 40 });
  await waitForText(bob, "typing", /^Alice is typing…$/);
  assertNoPageErrors(alice);
  pages.splice(pages.indexOf(alice), 1);
  const closed = Date.now();
  await alice.context().close();
  await waitForText(bob, "typing", /^$/, 1_500);
  assert.ok(Date.now() - closed < 1_500, "a closed tab stops typing at once");
  await closeAll();
});

test("a message Alice sends appears once for Bob, with sender and time, and in history for Carol", async () => {
  const alice = await openChat("alice");
  const bob = await openChat("bob");
  const text = unique("Hello Bob, lunch at noon?");

  await alice.getByTestId("input").fill(text);
  await alice.getByTestId("input").press("Enter");

  assert.equal(await waitForMessage(bob, text), 1, "Bob sees the message exactly once");
  assert.equal(await waitForMessage(alice, text), 1, "Alice sees her own message once, not pending");
  const shown = (await shownMessages(bob)).find((m) => m.content === text);
  assert.equal(shown.sender, "Alice");
  assert.match(shown.time, /\d{1,2}:\d{2}/, "the message shows its time");
  assert.equal(await bob.getByTestId("typing").textContent(), "", "sending ends the typing line");
  await screenshot(bob, "message");

  // Someone who opens the room later gets it from the history API (a phone-sized page).
  const carol = await openChat("carol", "general", { width: 390, height: 720 });
  assert.equal(await waitForMessage(carol, text), 1, "history shows the message once");
  await screenshot(carol, "history-mobile");
  await closeAll();
});

test("a member who reuses the client_id of Alice's message does not replace it on anyone's screen", async () => {
  const alice = await openChat("alice");
  const carol = await openChat("carol");
  const bob = await openChat("bob"); // plays the hostile member
  const text = unique("Meet at the station at six");
  await alice.getByTestId("input").fill(text);
  await alice.getByTestId("input").press("Enter");
  assert.equal(await waitForMessage(carol, text), 1);

  // Every member sees a message's client_id. Bob reads Alice's from the history API and
  // sends his own message with it, through a raw socket from his page.
  const spoof = unique("Cancelled, stay home");
  const echoed = await bob.evaluate(async ({ text, spoof }) => {
    const json = { "content-type": "application/json" };
    const { token } = await fetch("/api/dev/token", { method: "POST", headers: json, body: JSON.stringify({ user_id: "bob" }) })
      .then((r) => r.json());
    const page = await fetch("/api/chats/general/messages?limit=50", { headers: { Authorization: `Bearer ${token}` } })
      .then((r) => r.json());
    const { client_id } = page.messages.find((m) => m.content === text);
    const ws = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws/chat/general/?token=${encodeURIComponent(token)}`);
    return new Promise((resolve, reject) => {
      setTimeout(() => reject(new Error("no echo of bob's message")), 5_000);
      ws.onopen = () => ws.send(JSON.stringify({ type: "new_message", message: { content: spoof, client_id } }));
      ws.onmessage = (e) => {
        const frame = JSON.parse(e.data);
        if (frame.type === "new_message" && frame.message.content === spoof) {
          ws.close();
          resolve({ client_id, echo: frame.message.client_id });
        }
      };
    });
  }, { text, spoof });
  assert.equal(echoed.echo, echoed.client_id, "the server passed Bob's reused client_id on");

  for (const [name, page] of [["Carol", carol], ["Alice", alice]]) {
    assert.equal(await waitForMessage(page, spoof), 1, `${name} sees Bob's message`);
    const shown = await shownMessages(page);
    assert.deepEqual(
      shown.filter((m) => m.content === text || m.content === spoof).map((m) => [m.sender, m.content]),
      [["Alice", text], ["Bob", spoof]],
      `${name} still sees Alice's message, and Bob's as his`,
    );
  }
  await screenshot(alice, "reused-client-id");
  await closeAll();
});

test("a non-member picking a room sees a clear 'not a member' state", async () => {
  const page = await newPage(browser);
  pages.push(page);
  await page.goto(`${server.url}/`);
  await page.getByTestId("user-select").selectOption("mallory");
  await page.getByTestId("room-select").selectOption("general");
  await page.getByTestId("join").click();

  await waitForText(page, "connection", /^● Failed: not a member of this chat$/);
  await waitForText(page, "notice", /Mallory is not a member of #general/);
  assert.equal(await page.getByTestId("connection").getAttribute("data-state"), "failed");
  assert.ok(await page.getByTestId("input").isDisabled(), "the composer is disabled");
  assert.equal((await shownMessages(page)).length, 0, "no messages of a chat she is not in");
  await screenshot(page, "not-member");
  await closeAll();
});

test("after the server is killed and restarted both pages reconnect and an outage message arrives once", async () => {
  const alice = await openChat("alice");
  const bob = await openChat("bob");
  const before = unique("Before the outage");
  await alice.getByTestId("input").fill(before);
  await alice.getByTestId("input").press("Enter");
  assert.equal(await waitForMessage(bob, before), 1);

  await server.kill();
  await waitForText(alice, "connection", /Reconnecting/, 5_000);
  await waitForText(bob, "connection", /Reconnecting/, 5_000);

  // Typed while offline: shown as "sending…", queued in the SDK's outbox.
  const during = unique("Typed during the outage");
  await alice.getByTestId("input").fill(during);
  await alice.getByTestId("input").press("Enter");
  await waitFor("the pending message", async () =>
    (await shownMessages(alice)).some((m) => m.content === during && m.pending));
  // Catch the countdown for the screenshot (the state alternates with "Reconnecting…").
  await waitForText(alice, "connection", /^● Reconnecting in \d+ s…$/, 10_000).catch(() => {});
  await screenshot(alice, "outage");

  await sleep(500);
  await server.start();
  await waitForText(alice, "connection", /^● Connected$/, 40_000);
  await waitForText(bob, "connection", /^● Connected$/, 40_000);

  assert.equal(await waitForMessage(bob, during, 10_000), 1, "Bob gets the outage message once");
  assert.equal(await waitForMessage(alice, during, 10_000), 1, "Alice's copy is delivered once, not pending");
  assert.equal((await shownMessages(bob)).filter((m) => m.content === before).length, 1,
    "the message from before the outage is still shown once");
  await screenshot(bob, "reconnected");
  await closeAll();
});

test("a session outlives its short-lived tokens: the page renews them and keeps chatting", async () => {
  // 3-second tokens: the server closes with 4401 as each expires, the page's token
  // function is asked for a new one, and the SDK reconnects.
  const alice = await newPage(browser);
  pages.push(alice);
  const states = [];
  await alice.exposeFunction("recordState", (s) => states.push(s));
  await alice.goto(`${server.url}/?user=alice&chat=general&ttl=3`);
  await waitForText(alice, "connection", /^● Connected$/);
  await alice.evaluate(() => new MutationObserver(() =>
    window.recordState(document.querySelector("[data-testid=connection]").textContent),
  ).observe(document.querySelector("[data-testid=connection]"), { childList: true, characterData: true, subtree: true }));
  const bob = await openChat("bob");

  await waitFor("a token expiry and renewal", () => states.some((s) => s !== "● Connected"), 8_000);
  await waitForText(alice, "connection", /^● Connected$/, 10_000);
  const text = unique("Still here after my token expired");
  await alice.getByTestId("input").fill(text);
  await alice.getByTestId("input").press("Enter");
  assert.equal(await waitForMessage(bob, text, 10_000), 1, "Bob gets the message once");
  assert.equal(await waitForMessage(alice, text, 10_000), 1);
  assert.ok(!states.some((s) => /Failed/.test(s)), `never failed: ${JSON.stringify(states)}`);
  await screenshot(alice, "token-renewed");
  await closeAll();
});

test("switching rooms leaves the old one: messages go to the new room only", async () => {
  const alice = await openChat("alice", "general");
  const bobInRandom = await openChat("bob", "random");
  const carolInGeneral = await openChat("carol", "general");

  await alice.getByTestId("room-select").selectOption("random");
  await alice.getByTestId("join").click();
  await waitForText(alice, "connection", /^● Connected$/);
  assert.match(alice.url(), /chat=random/, "the URL names the room, so a reload stays in it");

  const text = unique("Over here in random");
  await alice.getByTestId("input").fill(text);
  await alice.getByTestId("input").press("Enter");
  assert.equal(await waitForMessage(bobInRandom, text), 1);
  assert.equal((await shownMessages(carolInGeneral)).filter((m) => m.content === text).length, 0,
    "#general does not get #random's message");
  assert.equal((await shownMessages(alice)).filter((m) => m.content === text).length, 1);
  await screenshot(alice, "room-switch");
  await closeAll();
});
