// The dashboard (GET /) in headless Chromium against a live `surgeguard demo`.
//
//   cd tests/dashboard && npm ci && npm test
//
// Environment:
//   SURGEGUARD_BIN        the surgeguard binary (default target/debug/surgeguard)
//   SURGEGUARD_ARTIFACTS  where dashboard.png and the demo's log go (default target/artifacts)
//   SURGEGUARD_CHROMIUM   the Chromium to drive (default /usr/bin/chromium; none is downloaded)
// Relative paths are taken from the repository root.
//
// It writes a config with only `[api] listen = "127.0.0.1:0"`, runs `demo --speed 20`, waits for
// the demo to log `HTTP API on http://ADDR` (it listens from the start, before the unprotected
// pass), opens http://ADDR/ and checks that: the page loads and reports "connected"; once the demo
// logs its protected pass (`2/2 …`), the ai_primary breaker badge turns open within 90 s;
// an alert row appears; the charts have drawn data; the page asked nothing of any other host;
// no console error or uncaught exception. It saves a full-page screenshot once the breaker is
// open, and always kills the demo.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const fromRoot = (p) => path.resolve(ROOT, p);
const BIN = fromRoot(process.env.SURGEGUARD_BIN || "target/debug/surgeguard");
const ARTIFACTS = fromRoot(process.env.SURGEGUARD_ARTIFACTS || "target/artifacts");
const CHROMIUM = process.env.SURGEGUARD_CHROMIUM || "/usr/bin/chromium";
const OVERALL_TIMEOUT_MS = 4 * 60 * 1000;
const API_LOG_TIMEOUT_MS = 30 * 1000;
const PROTECTED_TIMEOUT_MS = 150 * 1000;   // the unprotected pass runs first (about 60 s at --speed 20)
const BREAKER_OPEN_TIMEOUT_MS = 90 * 1000;
const ALERT_TIMEOUT_MS = 30 * 1000;

const started = Date.now();
const log = (msg) => console.log(`[dashboard ${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${msg}`);

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg); };

let demo = null;          // the demo's child process
let demoExited = null;    // its exit, once it has exited
let browser = null;
const demoLines = [];     // everything the demo printed (both streams)
let tmpDir = null;
let protectedStarted = null;   // set when the demo logs its protected pass ("2/2 …")
const protectedPass = new Promise((resolve) => { protectedStarted = resolve; });

function killDemo() {
  if (!demo || demoExited) return;
  // The demo runs in a process group of its own (detached): end the group we started.
  try { process.kill(-demo.pid, "SIGTERM"); } catch { try { demo.kill("SIGTERM"); } catch { /* gone */ } }
  const pid = demo.pid;
  const hard = setTimeout(() => { try { process.kill(-pid, "SIGKILL"); } catch { /* gone */ } }, 3000);
  hard.unref();
}

async function cleanup() {
  if (browser) { await browser.close().catch(() => {}); browser = null; }
  killDemo();
  if (demo && !demoExited) {
    await new Promise((resolve) => { const t = setTimeout(resolve, 5000); demo.once("exit", () => { clearTimeout(t); resolve(); }); });
  }
  try {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    fs.writeFileSync(path.join(ARTIFACTS, "dashboard-demo.log"), demoLines.join("\n") + "\n");
  } catch { /* best effort */ }
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
}

function startDemo() {
  if (!fs.existsSync(BIN)) fail(`no surgeguard binary at ${BIN}: build it (cargo build) or set SURGEGUARD_BIN`);
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), "surgeguard-dashboard-"));
  const config = path.join(tmpDir, "config.toml");
  fs.writeFileSync(config, '[api]\nlisten = "127.0.0.1:0"\n');
  const args = ["demo", "--config", config, "--speed", "20"];
  log(`starting ${BIN} ${args.join(" ")}`);
  demo = spawn(BIN, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], detached: true, env: { ...process.env, NO_COLOR: "1" } });
  demo.on("exit", (code, signal) => { demoExited = { code, signal }; });
  demo.on("error", (e) => { demoExited = { code: null, signal: null, error: e }; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Failure(`the demo logged no "HTTP API on http://ADDR" line within ${API_LOG_TIMEOUT_MS / 1000} s`)), API_LOG_TIMEOUT_MS);
    const onLine = (line) => {
      demoLines.push(line);
      // eslint-disable-next-line no-control-regex
      const plain = line.replace(/\x1b\[[0-9;]*m/g, "");
      if (/^2\/2 /.test(plain)) protectedStarted();
      const m = plain.match(/HTTP API (?:on|at) http:\/\/([^\s:]+:\d+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    };
    for (const stream of [demo.stdout, demo.stderr]) {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) { onLine(buf.slice(0, i)); buf = buf.slice(i + 1); }
      });
    }
    demo.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Failure(`the demo exited (code ${code}, signal ${signal}) before its HTTP API listened; last lines:\n${demoLines.slice(-15).join("\n")}`));
    });
    demo.on("error", (e) => { clearTimeout(timer); reject(new Failure(`cannot start ${BIN}: ${e.message}`)); });
  });
}

// Pixels in a canvas whose colour is saturated (chart lines and strips, not the grey axes and grid).
async function colouredPixels(page, selector) {
  return page.$eval(selector, (cv) => {
    const { data } = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height);
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] < 128) continue;
      const mx = Math.max(data[i], data[i + 1], data[i + 2]), mn = Math.min(data[i], data[i + 1], data[i + 2]);
      if (mx - mn > 60) n++;
    }
    return n;
  });
}

// Pixels close to a colour (r, g, b) in a canvas.
async function pixelsNear(page, selector, rgb) {
  return page.$eval(selector, (cv, [r, g, b]) => {
    const { data } = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height);
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 40) n++;
    }
    return n;
  }, rgb);
}

async function main() {
  if (!fs.existsSync(CHROMIUM)) fail(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set SURGEGUARD_CHROMIUM)`);
  const addr = await startDemo();
  const origin = `http://${addr}`;
  log(`API at ${origin}`);

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();

  const problems = [];   // console errors, uncaught exceptions, foreign requests
  const requests = [];
  context.on("request", (req) => {
    const url = req.url();
    requests.push(url);
    let u;
    try { u = new URL(url); } catch { problems.push(`request to an unparsable URL: ${url}`); return; }
    if (u.protocol === "data:" || u.protocol === "blob:" || u.protocol === "about:") return;
    if ((u.protocol !== "http:" && u.protocol !== "https:") || u.host !== addr) problems.push(`request to another host than ${addr}: ${url}`);
  });
  // Chromium also reports a failed request as a console error. A 503 from the API (a rebalance
  // holding the state, see README "HTTP API") is an answer the page must survive, not a fault
  // of the page: those are counted, anything else fails the test.
  let tolerated503 = 0;
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const loc = msg.location() || {};
    if (/^Failed to load resource: the server responded with a status of 503\b/.test(msg.text()) && (loc.url || "").startsWith(`http://${addr}/`)) {
      tolerated503++;
      return;
    }
    problems.push(`console error: ${msg.text()}${loc.url ? ` (${loc.url}:${loc.lineNumber})` : ""}`);
  });
  page.on("pageerror", (err) => problems.push(`uncaught exception: ${err.message}\n${err.stack || ""}`));
  page.on("crash", () => problems.push("the page crashed"));
  const checkProblems = () => { if (problems.length) fail(`the page misbehaved:\n  ${problems.join("\n  ")}`); };

  const resp = await page.goto(`${origin}/`, { waitUntil: "load", timeout: 15000 });
  if (!resp) fail("GET / gave no response");
  if (resp.status() !== 200) fail(`GET / answered ${resp.status()}: ${(await resp.text()).slice(0, 300)}`);
  const type = resp.headers()["content-type"] || "";
  if (!type.startsWith("text/html")) fail(`GET / is ${type || "untyped"}, not text/html`);
  const title = await page.title();
  if (!/surgeguard/i.test(title)) fail(`the page's title is ${JSON.stringify(title)}`);
  log(`page loaded: ${JSON.stringify(title)}`);

  await page.waitForFunction(() => document.querySelector("#status")?.textContent.trim() === "connected", null, { timeout: 15000 })
    .catch(async () => fail(`#status never said "connected": ${JSON.stringify(await page.textContent("#status").catch(() => null))}`));
  log("status: connected");
  checkProblems();

  // The API listens through the unprotected pass too: the breaker can only open in the protected one.
  let waiting;
  await Promise.race([
    protectedPass,
    new Promise((_, reject) => { waiting = setTimeout(() => reject(new Failure(`the demo logged no "2/2" (protected pass) line within ${PROTECTED_TIMEOUT_MS / 1000} s`)), PROTECTED_TIMEOUT_MS); }),
  ]).finally(() => clearTimeout(waiting));
  log("the protected pass started");
  checkProblems();

  // The breaker stays open for only a second or two of real time at --speed 20: take the
  // screenshot as soon as the badge shows it (once the page has polled for a few seconds, so the
  // charts have points).
  const openSel = '[data-breaker="ai_primary"][data-state="open"]';
  await page.waitForFunction((sel) => !!document.querySelector(sel) && performance.now() > 6000, openSel, { timeout: BREAKER_OPEN_TIMEOUT_MS, polling: 50 })
    .catch(async () => {
      const badge = await page.$('[data-breaker="ai_primary"]');
      const st = badge ? await badge.getAttribute("data-state") : "no badge";
      fail(`the ai_primary breaker badge did not turn open within ${BREAKER_OPEN_TIMEOUT_MS / 1000} s (it is ${st}); #status: ${await page.textContent("#status").catch(() => "?")}`);
    });
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const shot = path.join(ARTIFACTS, "dashboard.png");
  await page.screenshot({ path: shot, fullPage: true });
  log(`ai_primary breaker badge: open; screenshot: ${shot}`);
  checkProblems();

  await page.waitForSelector("#alerts tr[data-rule]", { timeout: ALERT_TIMEOUT_MS })
    .catch(() => fail(`no alert row (#alerts tr[data-rule]) within ${ALERT_TIMEOUT_MS / 1000} s`));
  const rules = await page.$$eval("#alerts tr[data-rule]", (rows) => rows.map((r) => r.dataset.rule));
  log(`alerts shown: ${rules.length} (${[...new Set(rules)].join(", ")})`);

  // The charts drew data, not just axes.
  for (const id of ["chart-limits", "chart-throttle"]) {
    const n = await colouredPixels(page, `#${id}`);
    if (n < 50) fail(`#${id} shows no data (${n} coloured pixels)`);
  }
  const actual = await pixelsNear(page, "#chart-demand", [0x1b, 0x22, 0x30]); // the actual-demand line
  if (actual < 50) fail(`#chart-demand shows no actual demand (${actual} pixels of its line)`);
  const red = await pixelsNear(page, "#strip-ai_primary", [0xd4, 0x3d, 0x3d]);
  if (red < 10) fail(`the ai_primary timeline strip shows no open period (${red} red pixels)`);
  const status = (await page.textContent("#status")).trim();
  if (status !== "connected") log(`note: #status at the end: ${status}`);

  checkProblems();
  const api = requests.filter((u) => u.startsWith(origin));
  if (api.length < 10) fail(`the page made only ${api.length} requests to the API`);
  log(`${requests.length} requests, all to ${addr}${tolerated503 ? `; ${tolerated503} answered 503` : ""}`);
}

let timer;
const overall = new Promise((_, reject) => {
  timer = setTimeout(() => reject(new Failure(`timed out after ${OVERALL_TIMEOUT_MS / 1000} s`)), OVERALL_TIMEOUT_MS);
});
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => { log(`${sig}: stopping`); await cleanup(); process.exit(130); });
}

let code = 0;
try {
  await Promise.race([main(), overall]);
  log("PASS");
  console.log("1 passed, 0 failed");
} catch (e) {
  code = 1;
  console.error(`[dashboard] FAIL: ${e instanceof Failure ? e.message : (e && e.stack) || e}`);
  if (demoLines.length) console.error(`[dashboard] the demo's last lines:\n${demoLines.slice(-10).join("\n")}`);
  console.log("0 passed, 1 failed");
} finally {
  clearTimeout(timer);
  await cleanup();
}
process.exit(code);
