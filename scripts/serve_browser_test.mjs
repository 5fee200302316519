// Headless Chromium against a running attn-serve: load the playground, submit a prompt,
// watch the text arrive in several steps, open the attention view and screenshot it.
//
//   NODE_PATH=/tmp/attn-serve-node/node_modules node scripts/serve_browser_test.mjs \
//       --url http://127.0.0.1:8080/ --api-key KEY --screenshot docs/serve-attention.png
//
// playwright-core is resolved from NODE_PATH (installed outside the repository);
// Chromium is Debian's /usr/bin/chromium (or $CHROMIUM). Exits non-zero on failure.

import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const nodePath = (process.env.NODE_PATH || "").split(path.delimiter).filter(Boolean);
const { chromium } = require(require.resolve("playwright-core", { paths: nodePath }));

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const url = args.url || "http://127.0.0.1:8080/";
const shot = args.screenshot || "serve-attention.png";
const userDataDir = `/tmp/attn-serve-chromium-${process.pid}`;

function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exitCode = 1;
  throw new Error(msg);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 1100 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) external.push(r.url()); });
  page.on("pageerror", (e) => fail(`page error: ${e.message}`));
  if (args["api-key"]) {
    await page.addInitScript((k) => localStorage.setItem("attn-api-key", k), args["api-key"]);
  }
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => document.getElementById("model").textContent.startsWith("model: "), null, { timeout: 15000 });
  console.log("ok: playground loaded,", await page.textContent("#model"));

  await page.fill("#prompt", "ROMEO:");
  await page.fill("#temperature", "0.8");
  await page.fill("#top_p", "0.95");
  // 500 tokens (the CI server allows 512): long enough that a loaded machine still sees
  // the text grow in several steps.
  await page.fill("#max_tokens", "500");
  // Record the generated text's length at every change of the page while it streams
  // (an observer, not a timer: on a loaded machine a timer can be starved until the
  // stream has ended, and then sees only the final text).
  await page.evaluate(() => {
    window.__lengths = [];
    // The generated text's element is created inside #output when generation starts.
    window.__observer = new MutationObserver(() => {
      const g = document.getElementById("generated");
      if (g) window.__lengths.push(g.textContent.length);
    });
    window.__observer.observe(document.getElementById("output"), { childList: true, characterData: true, subtree: true });
  });
  // The page is what is tested here: that it shows the text as the events arrive. The
  // tiny CI model writes 500 tokens in a quarter of a second, so a browser slow to start
  // reading (a loaded machine) could find the whole stream buffered and take it in one
  // read (seen in CI: 0 intermediate lengths). The network is therefore slowed while it
  // streams, so the response comes in many reads whatever the machine's load; that the
  // server writes each event as its token is made is checked by the openai client's test
  // (`serve_openai_test.py` times a 500-token stream's first and last pieces).
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false, latency: 0, downloadThroughput: 32 * 1024, uploadThroughput: -1,
  });
  await page.click("#generate");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("finished"), null, { timeout: 60000 });
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
  });
  const lengths = await page.evaluate(() => { window.__observer.disconnect(); return window.__lengths; });
  const text = await page.textContent("#generated");
  const distinct = new Set(lengths.filter((n) => n > 0 && n < text.length)).size;
  console.log(`ok: generated ${text.length} characters; ${distinct} intermediate lengths seen while streaming`);
  if (text.length === 0) fail("no generated text");
  if (distinct < 2) fail("the text did not arrive in several steps (not streamed?)");
  console.log("status:", await page.textContent("#status"));

  await page.fill("#attn-input", "ROMEO: What light through");
  await page.click("#attn-button");
  await page.waitForSelector("#attn-detail canvas", { timeout: 30000 });
  const maps = await page.$$eval("#attn-grid canvas", (cs) => cs.length);
  const status = await page.textContent("#attn-status");
  console.log(`ok: attention view with ${maps} heatmaps (${status})`);
  if (maps < 2) fail("no attention heatmaps");
  // Enlarge one head of the first layer for the picture.
  await page.click('#attn-grid .cell[data-l="0"][data-h="1"]');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`ok: screenshot ${shot}`);
  if (external.length) fail(`the page fetched from elsewhere: ${external.join(", ")}`);
  console.log("browser: all checks passed");
} finally {
  await context.close();
}
