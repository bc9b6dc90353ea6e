// The console in headless Chromium (Debian's) driven by playwright-core, against gateways that
// tests/console.rs started on 127.0.0.1 and fed labelled holdout rows. Prints one JSON line of
// figures; exits non-zero on the first failed check.
//
//   GAUNTLET_URL=http://127.0.0.1:PORT GAUNTLET_TOKEN_URL=http://127.0.0.1:PORT2 GAUNTLET_TOKEN=…
//   SCREENSHOTS=dir node tests/console/console.test.mjs
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const url = process.env.GAUNTLET_URL;
const tokenUrl = process.env.GAUNTLET_TOKEN_URL;
const token = process.env.GAUNTLET_TOKEN;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });
const XSS = "<img src=x onerror=\"window.__xss=1\">";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const figures = {};

async function api(base, path, options = {}) {
  const response = await fetch(base + path, options);
  return { status: response.status, body: await response.json() };
}

async function open(base, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const foreign = [];
  const violations = [];
  page.on("request", (request) => {
    const host = new URL(request.url()).host;
    if (host !== new URL(base).host) foreign.push(request.url());
  });
  page.on("console", (message) => { if (/Content Security Policy/i.test(message.text())) violations.push(message.text()); });
  page.on("pageerror", (error) => violations.push(String(error)));
  await page.goto(`${base}/ui/`);
  return { context, page, foreign, violations };
}

/// The action's result line once it starts with `prefix`; on a timeout, what it said instead.
async function result(page, prefix) {
  try {
    await page.waitForFunction((p) => document.querySelector("#action-result")?.textContent.startsWith(p), prefix, { timeout: 20000 });
  } catch (error) {
    const said = await page.locator("#action-result").innerText().catch(() => "(no result line)");
    throw new Error(`expected a result starting "${prefix}", the page says "${said}"`);
  }
  return page.locator("#action-result").innerText();
}

/// A picture of one part of the page: clipped from the whole page, since the page re-renders every
/// 2 s and an element picture fails when its element is replaced midway.
async function shoot(page, selector, path) {
  const box = await page.evaluate((s) => {
    const r = document.querySelector(s).getBoundingClientRect();
    return { x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height };
  }, selector);
  await page.screenshot({ path, fullPage: true, clip: box });
}

// ---- one gateway, no token (the console on loopback) ----
{
  const { context, page, foreign, violations } = await open(url, { width: 1280, height: 900 });
  await page.waitForSelector("body[data-ready=true]", { timeout: 30000 });
  await page.waitForLoadState("networkidle");
  figures.first_render_ms = Math.round(await page.evaluate(() => window.gauntletRenderedAt));
  // Bytes transferred on first load: the page, its script and style, and the API answers it read.
  const transfer = await page.evaluate(() => {
    const entries = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
    return entries.map((e) => ({ name: new URL(e.name).pathname, bytes: e.transferSize }));
  });
  figures.first_load_bytes = transfer.reduce((n, e) => n + e.bytes, 0);
  figures.first_load_static_bytes = transfer.filter((e) => e.name.startsWith("/ui")).reduce((n, e) => n + e.bytes, 0);

  // Both demo models and their champions.
  const nav = await page.locator("#models").innerText();
  assert.match(nav, /breast-cancer \(champion 1\)/);
  assert.match(nav, /diabetes \(champion 1\)/);

  // The comparison's figures are the API's.
  const comparison = (await api(url, "/admin/models/breast-cancer/comparison")).body;
  assert.ok(comparison.labelled_records > 0, "the test fed labels");
  await page.waitForFunction((n) => document.querySelector("#comparison-title")?.textContent.includes(`${n} labelled`), comparison.labelled_records);
  for (const pair of comparison.pairs) {
    const row = page.locator(`tr[data-pair="${pair.champion}-${pair.challenger}"]`);
    assert.equal(await row.locator("[data-field=labelled_pairs]").innerText(), String(pair.labelled_pairs));
    assert.ok((await row.locator("[data-field=improvement]").innerText()).startsWith(pair.improvement.toFixed(4)));
    assert.ok((await row.locator("[data-field=agreement]").innerText()).startsWith(pair.agreement.toFixed(4)));
    assert.equal(await row.locator("[data-field=verdict]").innerText().then((t) => t.split(" (")[0]), pair.verdict.replaceAll("_", " "));
    // As the page writes a number: four places, or one significant digit below 1e-4.
    const shown = pair.p_value !== 0 && Math.abs(pair.p_value) < 1e-4 ? pair.p_value.toExponential(1) : pair.p_value.toFixed(4);
    assert.ok((await row.locator("[data-field=p_value]").innerText()).includes(shown));
  }
  figures.pairs_checked = comparison.pairs.length;

  // The lines start from the history the server kept before the page opened: every point of it
  // is drawn at the first render, with where the figures stand now after them.
  const history = (await api(url, "/admin/models/breast-cancer/history")).body;
  assert.ok(history.points.length >= 2, `the test wrote a history first: ${history.points.length}`);
  const drawn = await page.locator("figure svg[data-points]").first().getAttribute("data-points");
  assert.ok(Number(drawn) >= history.points.length + 1, `${drawn} points drawn, ${history.points.length} in the history`);
  figures.history_points_drawn = Number(drawn);

  // The pictures: each version's metric, the improvement with its interval, coverage, latency
  // distributions, and drift against its thresholds.
  const captions = await page.locator("figcaption").allInnerTexts();
  for (const wanted of [/accuracy of each version/, /improvement, with its 95% interval/, /coverage of each pair/, /latency of version 1/, /drift \(PSI\)/]) {
    assert.ok(captions.some((c) => wanted.test(c)), `no picture of ${wanted}: ${captions}`);
  }

  // A description holding markup shows as text, and nothing ran.
  const description = page.locator("td", { hasText: "onerror" }).first();
  assert.equal(await description.innerText(), XSS);
  await page.screenshot({ path: `${shots}/laptop.png`, fullPage: true });

  // The repository's versions under a filter: the API's answer, each version with its state and
  // lineage; a filter that does not parse shows the API's 400 naming the token.
  const filter = "holdout_metrics.accuracy > 0.96";
  await page.locator("#repository-filter").fill(filter);
  await page.locator("#repository-form button[type=submit]").click();
  const searched = (await api(url, `/admin/repository?model=breast-cancer&q=${encodeURIComponent(filter)}`)).body;
  assert.deepEqual(searched.versions.map((v) => [v.version, v.state]), [["1", "champion"], ["3", "challenger"]]);
  await page.waitForFunction((n) => document.querySelectorAll("#repository-versions tbody tr").length === n, searched.versions.length, { timeout: 20000 });
  for (const v of searched.versions) {
    const row = page.locator(`#repository-versions tr[data-version="${v.version}"]`);
    assert.equal(await row.locator("[data-field=state]").innerText(), v.state);
    assert.match(await row.locator("[data-field=lineage]").innerText(), new RegExp(`data ${v.training.data_sha256.slice(0, 12)}`));
  }
  await shoot(page, "section:has(#repository-title)", `${shots}/versions-filtered.png`);
  await page.locator("#repository-filter").fill("holdout_metrics.accuracy >");
  await page.locator("#repository-form button[type=submit]").click();
  await page.waitForFunction(() => document.querySelector("#repository-error")?.textContent.includes("expected a value after 'holdout_metrics.accuracy >'"), null, { timeout: 20000 });
  figures.repository_filter_refused = await page.locator("#repository-error").innerText();
  await page.locator("#repository-filter").fill("");
  await page.locator("#repository-form button[type=submit]").click();
  await page.waitForFunction(() => document.querySelectorAll("#repository-versions tbody tr").length === 4, null, { timeout: 20000 });

  // A refused change shows the refusing step's message (version 4's file is corrupt here).
  await page.locator("#challengers-form input[value='4']").check();
  await page.locator("#challengers-form button[type=submit]").click();
  await page.locator("#reason").fill("try the random forest");
  await page.locator("#confirm-ok").click();
  const refused = await result(page, "Refused");
  assert.match(refused, /Refused \(422\): .*repository/);
  figures.refused = refused;

  // A promotion through the button changes the champion, as the API sees it; its reason (markup)
  // shows in the audit log as text.
  await page.locator("button[data-action=promote][data-version='2']").click();
  await page.locator("#reason").fill(XSS);
  await page.locator("#confirm-ok").click();
  await result(page, "Done: champion 2");
  assert.equal((await api(url, "/admin/models/breast-cancer")).body.champion, "2");
  await page.waitForFunction((x) => [...document.querySelectorAll("#audit [data-field=reason]")].some((td) => td.textContent === x), XSS);
  assert.equal(await page.evaluate(() => window.__xss), undefined, "no script from outside ran");
  assert.equal(await page.locator("#audit img").count(), 0);
  await page.screenshot({ path: `${shots}/after-promotion.png`, fullPage: true });

  // Live: a change made elsewhere (the API, as the CLI or another user would) shows without a reload.
  const back = await api(url, "/admin/models/breast-cancer/rollback", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ reason: "from the API" }) });
  assert.equal(back.status, 200);
  await page.waitForFunction(() => document.querySelector("#models").textContent.includes("breast-cancer (champion 1)"), null, { timeout: 20000 });
  await page.waitForFunction(() => [...document.querySelectorAll("#audit [data-field=reason]")].some((td) => td.textContent === "from the API"));

  // A narrow window: everything still there, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => done())));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a narrow window`);
  await page.screenshot({ path: `${shots}/narrow.png`, fullPage: true });

  // Keyboard: from the top of the page, Tab reaches the first model's button first; every control
  // has a label a screen reader can read.
  await page.reload();
  await page.waitForSelector("body[data-ready=true]");
  await page.keyboard.press("Tab");
  assert.match(await page.evaluate(() => document.activeElement.textContent), /^breast-cancer \(champion/);
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea")]
    .filter((c) => c.offsetParent !== null && c.labels.length === 0 && !c.getAttribute("aria-label")).map((c) => c.outerHTML));
  assert.deepEqual(unlabelled, []);

  assert.deepEqual(foreign, [], "the page asked no other host");
  assert.deepEqual(violations, [], "no CSP violation and no script error");
  await context.close();
}

// ---- a gateway with admin_token: nothing without it ----
{
  const { context, page, foreign } = await open(tokenUrl, { width: 1280, height: 900 });
  await page.waitForSelector("#token-form:not([hidden])", { timeout: 30000 });
  assert.match(await page.locator("#status").innerText(), /401|token/i);
  assert.equal(await page.locator("button[data-action=promote]").count(), 0, "no action without the token");
  await page.locator("#token").fill("wrong");
  await page.locator("#token-form button").click();
  await page.waitForSelector("#token-form:not([hidden])");
  await page.locator("#token").fill(token);
  await page.locator("#token-form button").click();
  await page.waitForSelector("body[data-ready=true]", { timeout: 30000 });
  assert.match(await page.locator("#models").innerText(), /breast-cancer/);
  // The token is what lets the action through: without it the same call is refused.
  const without = await api(tokenUrl, "/admin/models/breast-cancer/rollback", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  assert.equal(without.status, 401);
  await page.screenshot({ path: `${shots}/with-token.png`, fullPage: true });
  assert.deepEqual(foreign, []);
  await context.close();
}

// ---- slices: a challenger better overall and worse for one region ----
{
  const slicesUrl = process.env.GAUNTLET_SLICES_URL;
  const { context, page, violations } = await open(slicesUrl, { width: 1280, height: 900 });
  await page.waitForSelector("body[data-ready=true]", { timeout: 30000 });
  const comparison = (await api(slicesUrl, "/admin/models/breast-cancer/comparison")).body;
  const pair = comparison.pairs.find((p) => p.challenger === "1");
  assert.deepEqual(pair.worse_slices, ["apac"]);
  await page.waitForSelector("#slices tbody tr", { timeout: 20000 });
  // Every slice of the API is a row with its figures; the worse one is marked, and said above.
  for (const slice of pair.slices) {
    const row = page.locator(`#slices tr[data-pair="2-1"][data-slice="${slice.slice}"]`);
    assert.equal(await row.locator("[data-field=labelled_pairs]").innerText(), String(slice.labelled_pairs));
    assert.ok((await row.locator("[data-field=improvement]").innerText()).startsWith(slice.improvement.toFixed(4)));
    assert.equal(await row.getAttribute("class"), slice.flagged ? "flagged" : null);
  }
  assert.match(await page.locator('[data-worse="2-1"]').innerText(), /better overall but significantly worse on: apac/);
  const captions = await page.locator("figcaption").allInnerTexts();
  assert.ok(captions.some((c) => /improvement per slice/.test(c)), `no slice picture: ${captions}`);
  await shoot(page, "section:has(#comparison-title)", `${shots}/slices.png`);
  figures.slices_checked = pair.slices.length;
  assert.deepEqual(violations, []);
  await context.close();
}

await browser.close();
console.log(JSON.stringify(figures));
