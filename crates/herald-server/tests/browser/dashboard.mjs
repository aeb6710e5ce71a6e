// Drives headless Chromium through the herald dashboard: sign in, see an event, cancel one, retry
// a dead delivery, pause a subscription, see the cron schedules and pause one, filter the list, take a screenshot. tests/browser.rs starts the
// server, makes the data and runs this script with:
//   HERALD_URL         the server's base URL
//   HERALD_TOKEN       the bearer token the page must ask for
//   HERALD_EVENT       an event published through the API: it must show in the list
//   HERALD_DEAD_EVENT  an event whose delivery HERALD_DEAD_DELIVERY is dead: retried with a click
//   HERALD_DEAD_DELIVERY
//   HERALD_SCHEDULED_EVENT  an event due in an hour: cancelled with a click (and a confirming one)
//   HERALD_CHROMIUM    the browser executable
//   HERALD_SCREENSHOT  where to save the PNG
// Each step waits for what it needs with a deadline; any failure exits non-zero with a message.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this through tests/browser.rs`);
  return v;
};
const url = need("HERALD_URL");
const token = need("HERALD_TOKEN");
const eventId = need("HERALD_EVENT");
const deadEvent = need("HERALD_DEAD_EVENT");
const deadDelivery = need("HERALD_DEAD_DELIVERY");
const scheduledEvent = need("HERALD_SCHEDULED_EVENT");
const executablePath = need("HERALD_CHROMIUM");
const screenshot = need("HERALD_SCREENSHOT");
const STEP = 20000;

const step = (what) => console.log(`browser: ${what}`);

// The machine has no network but loopback: nothing that phones home, and a fresh profile.
const profile = mkdtempSync(join(tmpdir(), "herald-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // Containers often have a small /dev/shm; Chromium then crashes mid-page without this.
    "--disable-dev-shm-usage",
  ],
  viewport: { width: 1480, height: 1000 },
  deviceScaleFactor: 1,
});
const problems = [];
const page = context.pages()[0] ?? (await context.newPage());
try {
  page.setDefaultTimeout(STEP);
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/401 \(Unauthorized\)/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(url)) problems.push(`request outside the server: ${r.url()}`);
  });

  step(`open ${url}`);
  await page.goto(url, { waitUntil: "domcontentloaded" });

  step("the page asks for the token; sign in");
  const dialog = page.locator("dialog#auth");
  await dialog.waitFor({ state: "visible" });
  await dialog.locator('input[name="token"]').fill(token);
  await dialog.locator('button[type="submit"]').click();
  await dialog.waitFor({ state: "hidden" });

  step("the event published through the API is in the list");
  const row = page.locator(`#events tbody tr[data-event="${eventId}"]`);
  await row.waitFor({ state: "visible" });

  step("live: the stream is connected and the tiles have counts");
  await page.locator('#live[data-state="live"]').waitFor();
  await page.waitForFunction(() => document.querySelector('.tile[data-status="events"] .value').textContent !== "–");

  step("cancel the scheduled event: a click, and a second to confirm");
  await page.locator(`#events tbody tr[data-event="${scheduledEvent}"]`).click();
  const cancel = page.locator('#detail button[data-action="cancel"]');
  await cancel.click();
  await page.locator('#detail button[data-action="cancel"].confirm').click();
  await page.locator('#detail .detail-head .badge[data-status="cancelled"]').waitFor();

  step("open the dead event and retry its delivery with a click");
  await page.locator(`#events tbody tr[data-event="${deadEvent}"]`).click();
  const delivery = page.locator(`#detail .delivery[data-delivery="${deadDelivery}"]`);
  const status = delivery.locator(".delivery-head .badge");
  await delivery.waitFor({ state: "visible" });
  if ((await status.textContent()) !== "dead") throw new Error(`the delivery is ${await status.textContent()}, not dead`);
  await delivery.locator('button[data-action="retry"]').click();
  await page.waitForFunction(
    (id) => {
      const badge = document.querySelector(`#detail .delivery[data-delivery="${id}"] .delivery-head .badge`);
      return badge && badge.textContent !== "dead";
    },
    deadDelivery,
  );
  step(`the delivery is now ${await status.textContent()}`);
  await delivery.locator('button[data-action="retry"]').waitFor({ state: "detached" });

  step("pause a subscription with a click");
  const sub = page.locator('#subs tbody tr[data-subscription="audit-hook"]');
  await sub.locator('button[data-action="pause"]').click();
  await sub.locator(".state.paused").waitFor();

  step("the schedules are listed with their next fires and last outcome; pause one with a click");
  await page.waitForFunction(() => {
    const row = document.querySelector('#crons tbody tr[data-cron="heartbeat"]');
    return row && row.dataset.last !== "none";
  });
  const nightly = page.locator('#crons tbody tr[data-cron="nightly-report"]');
  const next = await nightly.locator("td.next .first").textContent();
  if (!next.startsWith("in ")) throw new Error(`the nightly report's next fire reads '${next}'`);
  await nightly.locator('button[data-action="pause"]').click();
  await nightly.locator(".state.paused").waitFor();

  step("filter the list by topic");
  await page.locator('#filters input[name="topic"]').fill("order.*");
  await page.waitForFunction(() => {
    const topics = [...document.querySelectorAll("#events tbody td.topic")].map((td) => td.textContent);
    return topics.length > 0 && topics.every((t) => t.startsWith("order."));
  });
  await row.waitFor({ state: "visible" });

  step("the charts have drawn their samples");
  await page.waitForFunction(() => document.querySelectorAll("#chart-throughput path.line").length === 3);
  await page.waitForFunction(() => !document.querySelector("#chart-throughput .waiting"));

  // The screenshot shows the selection, without the toast that is still fading.
  await page.locator(`#events tbody tr[data-event="${deadEvent}"][aria-selected="true"]`).waitFor();
  await page.waitForFunction(() => !document.querySelector("#toasts .toast"));
  // From the top, so that the sticky bar sits at the top of the full-page capture.
  await page.evaluate(() => {
    document.activeElement?.blur();
    window.scrollTo(0, 0);
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  step(`screenshot saved to ${screenshot}`);

  if (problems.length) throw new Error(`the page misbehaved:\n  ${problems.join("\n  ")}`);
  console.log("browser: ok");
} catch (e) {
  console.error(`browser: FAILED: ${e.message}`);
  process.exitCode = 1;
  const failed = screenshot.replace(/\.png$/, "") + ".failed.png";
  await page.screenshot({ path: failed, fullPage: true }).catch(() => {});
  console.error(`browser: the page at the failure: ${failed}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
