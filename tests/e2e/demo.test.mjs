// The README's demo command, end to end: scripts/demo.sh builds the package, starts the
// server in dev mode and prints the URL to open; the page there works.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { after, test } from "node:test";
import {
  ROOT, assertNoPageErrors, launchBrowser, newPage, notePid, screenshot, stopChild, waitFor, waitForMessage, waitForText,
} from "./helpers.mjs";

let demo;
let browser;

after(async () => {
  await browser?.close();
  if (demo) await stopChild(demo);
});

test("scripts/demo.sh builds the package, starts the dev server and prints a URL where the page chats", async () => {
  // Port 0: the server picks one and prints it (8080 may be taken on a shared machine).
  demo = spawn(path.join(ROOT, "scripts/demo.sh"), [], {
    cwd: ROOT, stdio: ["ignore", "pipe", "ignore"], env: { ...process.env, HABLAR_BIND: "127.0.0.1:0" },
  });
  let out = "";
  demo.stdout.on("data", (d) => { out += d; });
  const exited = once(demo, "exit").then(([code]) => { throw new Error(`demo.sh exited (${code}): ${out}`); });
  exited.catch(() => {}); // also rejects when after() stops it: only the race below cares
  // demo.sh execs the server, so this pid becomes the server's.
  notePid("demo", demo.pid);
  const url = await Promise.race([
    waitFor("the URL line of demo.sh", () => /listening on (http:\/\/\S+)/.exec(out)?.[1], 150_000),
    exited,
  ]);

  browser = await launchBrowser();
  const page = await newPage(browser, { width: 1000, height: 640 });
  await page.goto(`${url}/`);
  await page.getByTestId("user-select").selectOption("carol");
  await page.getByTestId("join").click();
  await waitForText(page, "connection", /^● Connected$/);
  await page.getByTestId("input").fill("Hello from the demo");
  await page.getByTestId("input").press("Enter");
  assert.equal(await waitForMessage(page, "Hello from the demo"), 1);
  assertNoPageErrors(page);
  await screenshot(page, "demo");
});
