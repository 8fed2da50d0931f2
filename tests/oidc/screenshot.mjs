// A full-page screenshot of a page that needs a session: the cookie is set
// first. usage: node screenshot.mjs URL COOKIE_NAME COOKIE_VALUE OUT.png
// Prints the page's text, so the caller can check what was drawn.
import puppeteer from "puppeteer-core";

const [url, name, value, out] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic"],
});
const timeout = setTimeout(() => { console.error("timed out"); process.exit(3); }, 60_000);
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 900 });
  const target = new URL(url);
  await browser.setCookie({ name, value, domain: target.hostname, path: "/", httpOnly: true });
  const response = await page.goto(url);
  if (!response.ok()) throw new Error(`${url}: ${response.status()}`);
  await page.screenshot({ path: out, fullPage: true });
  console.log(await page.evaluate(() => document.body.innerText));
} finally {
  clearTimeout(timeout);
  await browser.close();
}
