// Opens a page in headless Chromium through chromedriver (plain WebDriver over fetch,
// no dependencies) and waits until its #out element reads "SMOKE OK" or "SMOKE FAILED".
// Usage: node smoke.mjs <page url> [timeout ms]. Exit 0 on SMOKE OK.

import { spawn } from "node:child_process";
import net from "node:net";

const [pageUrl, timeoutMs = "30000"] = process.argv.slice(2);
const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

const port = await freePort();
const driver = spawn(process.env.CHROMEDRIVER ?? "chromedriver", [`--port=${port}`], { stdio: "ignore" });
const base = `http://127.0.0.1:${port}`;
const call = async (method, path, body) => {
  const res = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return (await res.json()).value;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let status = 1;
try {
  for (let i = 0; ; i++) {
    try { await call("GET", "/status"); break; } catch (e) { if (i > 100) throw e; await sleep(100); }
  }
  const session = await call("POST", "/session", {
    capabilities: { alwaysMatch: { "goog:chromeOptions": {
      args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    } } },
  });
  const id = session.sessionId;
  try {
    await call("POST", `/session/${id}/url`, { url: pageUrl });
    const end = Date.now() + Number(timeoutMs);
    let text = "";
    while (Date.now() < end) {
      text = await call("POST", `/session/${id}/execute/sync`, {
        script: "return document.querySelector('#out')?.textContent ?? ''", args: [],
      });
      if (typeof text === "string" && text.startsWith("SMOKE")) break;
      await sleep(100);
    }
    console.log(text || "SMOKE TIMEOUT");
    status = text === "SMOKE OK" ? 0 : 1;
  } finally {
    await call("DELETE", `/session/${id}`).catch(() => {});
  }
} catch (e) {
  console.error(`smoke: ${e.message}`);
} finally {
  driver.kill();
}
process.exit(status);
