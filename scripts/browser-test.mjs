#!/usr/bin/env node
// Drives headless Chromium through the search page of a running cliptune server, with the
// DevTools protocol over a pipe (--remote-debugging-pipe): no npm packages needed.
//
//   node scripts/browser-test.mjs URL QUERY BASE_MODEL_ID TUNED_MODEL_ID
//
// Checks, failing with a message and exit 1 otherwise:
//  1. the page loads without script errors, the text box has focus;
//  2. typing QUERY and pressing Enter renders a column of results with scores and images;
//  3. "side by side" renders one column per model (TUNED and BASE) for the same query;
//  4. Enter on the first result runs a "more like this" search led by that item;
//  5. the training page draws the tuned model's loss and recall curves.
// Prints one JSON object with what the page showed (the Rust test compares it with the API).
// Env: CHROMIUM (default /usr/bin/chromium), BROWSER_TEST_SCREENSHOTS=DIR to save PNGs.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, query, baseId, tunedId] = process.argv.slice(2);
if (!url || !query || !baseId || !tunedId) {
  console.error("usage: browser-test.mjs URL QUERY BASE_MODEL_ID TUNED_MODEL_ID");
  process.exit(2);
}
const chromiumPath = process.env.CHROMIUM || (existsSync("/usr/lib/chromium/chromium") ? "/usr/lib/chromium/chromium" : "/usr/bin/chromium");
const shots = process.env.BROWSER_TEST_SCREENSHOTS;
const profile = mkdtempSync(join(tmpdir(), "cliptune-chromium-"));

const chrome = spawn(chromiumPath, [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage", "--window-size=1280,900",
  `--user-data-dir=${profile}`, "--remote-debugging-pipe", "about:blank",
], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });

let chromeLog = "";
chrome.stderr.on("data", (d) => { chromeLog = (chromeLog + d).slice(-4000); });

function cleanup() {
  try { chrome.kill("SIGKILL"); } catch (_) { /* already gone */ }
  try { rmSync(profile, { recursive: true, force: true }); } catch (_) { /* best effort */ }
}

function fail(msg) {
  console.error("browser test FAILED: " + msg);
  if (chromeLog.trim()) console.error("chromium stderr (tail):\n" + chromeLog);
  cleanup();
  process.exit(1);
}

// Nothing may hang: the whole run has a deadline.
const deadline = setTimeout(() => fail("timed out after 90 s"), 90_000);
chrome.on("exit", (code, sig) => fail(`chromium exited early (code ${code}, signal ${sig})`));
chrome.on("error", (e) => fail(`cannot start ${chromiumPath}: ${e.message}`));

// ---- CDP over the pipe: JSON messages separated by NUL bytes.
const toChrome = chrome.stdio[3];
const fromChrome = chrome.stdio[4];
let nextId = 1;
const pending = new Map();
const listeners = [];
let buffer = Buffer.alloc(0);
fromChrome.on("data", (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  let end;
  while ((end = buffer.indexOf(0)) !== -1) {
    const msg = JSON.parse(buffer.subarray(0, end).toString("utf8"));
    buffer = buffer.subarray(end + 1);
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject, method } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(`${method}: ${msg.error.message}`));
      else resolve(msg.result);
    } else if (msg.method) {
      for (const l of listeners) l(msg);
    }
  }
});

function send(method, params = {}, sessionId) {
  const id = nextId++;
  const msg = { id, method, params };
  if (sessionId) msg.sessionId = sessionId;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, method });
    toChrome.write(JSON.stringify(msg) + "\0");
  });
}

const errors = [];
listeners.push((m) => {
  if (m.method === "Runtime.exceptionThrown") {
    const d = m.params.exceptionDetails;
    errors.push((d.exception && d.exception.description) || d.text);
  } else if (m.method === "Runtime.consoleAPICalled" && m.params.type === "error") {
    errors.push(m.params.args.map((a) => a.value || a.description).join(" "));
  }
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
  const s = (method, params) => send(method, params, sessionId);
  await s("Page.enable");
  await s("Runtime.enable");

  async function evaluate(expression) {
    const r = await s("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error("evaluate: " + (r.exceptionDetails.exception?.description || r.exceptionDetails.text));
    return r.result.value;
  }
  async function waitFor(expression, what, ms = 20_000) {
    const until = Date.now() + ms;
    for (;;) {
      const v = await evaluate(expression);
      if (v) return v;
      if (Date.now() > until) {
        const state = await evaluate("document.body ? document.body.dataset.state + ' / ' + document.querySelector('#status, #train-status')?.textContent : 'no body'");
        throw new Error(`waiting for ${what}: page state ${state}`);
      }
      await sleep(50);
    }
  }
  async function key(keyName, code, keyCode, text) {
    await s("Input.dispatchKeyEvent", { type: "keyDown", key: keyName, code, windowsVirtualKeyCode: keyCode, text });
    await s("Input.dispatchKeyEvent", { type: "keyUp", key: keyName, code, windowsVirtualKeyCode: keyCode });
  }
  async function shot(name) {
    if (!shots) return;
    const { data } = await s("Page.captureScreenshot", { format: "png" });
    writeFileSync(join(shots, name + ".png"), Buffer.from(data, "base64"));
  }
  const searched = (state) => `['done','error'].includes(document.body.dataset.state) && document.body.dataset.state`;
  const columns = `[...document.querySelectorAll('#results .column')].map((c) => ({
      model: c.dataset.modelId,
      items: [...c.querySelectorAll('.hit')].map((h) => h.dataset.itemId),
      scores: [...c.querySelectorAll('.hit .score')].map((e) => e.textContent),
      images: [...c.querySelectorAll('.hit img')].length,
      errors: [...c.querySelectorAll('.error')].map((e) => e.textContent),
    }))`;
  const imagesLoaded = `[...document.querySelectorAll('#results .hit img')].every((i) => i.complete && i.naturalWidth > 0)`;

  // 1. Load.
  await s("Page.navigate", { url: url + "/" });
  await waitFor("document.body && document.body.dataset.state === 'ready'", "the search page to load its models");
  const focused = await evaluate("document.activeElement && document.activeElement.id");
  if (focused !== "q") throw new Error(`the text box should have focus on load, ${focused} has`);

  // 2. Type the query and press Enter: keyboard only.
  await s("Input.insertText", { text: query });
  await key("Enter", "Enter", 13, "\r");
  const state = await waitFor(searched(), "search results");
  if (state !== "done") throw new Error("the search failed: " + (await evaluate("document.querySelector('#status').textContent")));
  const single = await evaluate(columns);
  if (single.length !== 1) throw new Error(`expected one column of results, got ${single.length}`);
  const col = single[0];
  if (col.model !== tunedId) throw new Error(`the default model should be the pipeline's newest (${tunedId}), got ${col.model}`);
  if (!col.items.length) throw new Error("no results rendered");
  if (!col.scores.every((t) => /^-?\d\.\d{3}$/.test(t))) throw new Error("scores not shown: " + col.scores.join(","));
  if (col.images !== col.items.length) throw new Error(`${col.images} images for ${col.items.length} results`);
  await waitFor(imagesLoaded, "the result images to load");
  const shownUrl = await evaluate("location.search");
  await shot("search");

  // 3. Side by side: tick the box (Space on the focused checkbox), search again with Enter.
  await evaluate("document.querySelector('#compare').focus()");
  await key(" ", "Space", 32, " ");
  const checked = await evaluate("document.querySelector('#compare').checked && !document.querySelector('#model-b').disabled");
  if (!checked) throw new Error("Space on the side-by-side checkbox did not enable the second model");
  await evaluate("document.body.dataset.state = 'ready'; document.querySelector('#q').focus()");
  await key("Enter", "Enter", 13, "\r");
  await waitFor(searched(), "side-by-side results");
  const pair = await evaluate(columns);
  if (pair.length !== 2) throw new Error(`expected two columns side by side, got ${pair.length}`);
  const models = pair.map((c) => c.model).sort();
  if (models.join() !== [baseId, tunedId].sort().join()) throw new Error("side-by-side models: " + models.join());
  for (const c of pair) {
    if (!c.items.length || c.errors.length) throw new Error(`column ${c.model}: ${c.items.length} results, errors ${c.errors}`);
  }
  await waitFor(imagesLoaded, "the result images to load");
  await shot("side-by-side");

  // 4. Enter on the first result of the first column: more like this.
  const first = pair[0].items[0];
  await evaluate("document.body.dataset.state = 'ready'; document.querySelector('#results .hit button').focus()");
  await key("Enter", "Enter", 13, "\r");
  await waitFor(searched(), "more-like-this results");
  const similar = await evaluate(columns);
  const lead = similar.find((c) => c.model === pair[0].model);
  if (!lead || lead.items[0] !== first) throw new Error(`more like ${first} should lead with it, got ${lead && lead.items[0]}`);
  if (!lead.scores[0].startsWith("1.000") && !lead.scores[0].startsWith("0.999")) throw new Error("an item's own score should be 1: " + lead.scores[0]);

  // 5. The training page.
  await s("Page.navigate", { url: `${url}/training?model=${tunedId}` });
  await waitFor("document.body && document.body.dataset.state === 'done'", "the training page");
  const charts = await evaluate(`[...document.querySelectorAll('#charts .chart')].map((c) => ({
      figure: c.dataset.figure,
      lines: c.querySelectorAll('svg path').length,
      points: c.querySelectorAll('svg circle').length,
    }))`);
  const figures = charts.map((c) => c.figure);
  for (const want of ["loss", "recall@1"]) {
    const c = charts.find((x) => x.figure === want);
    if (!c || c.lines < 1 || c.points < 2) throw new Error(`no ${want} curve on the training page: ${JSON.stringify(charts)}`);
  }
  await shot("training");

  if (errors.length) throw new Error("script errors on the page: " + errors.join(" | "));
  return { url: shownUrl, single: col, side_by_side: pair, more_like_this: lead, figures };
}

main().then(
  (summary) => {
    clearTimeout(deadline);
    chrome.removeAllListeners("exit");
    console.log(JSON.stringify(summary));
    cleanup();
    process.exit(0);
  },
  (e) => fail(e.message),
);
