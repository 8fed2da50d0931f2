// Second factors in a real browser (Debian's headless Chromium through
// puppeteer-core): the account page, TOTP enrolment with the code computed
// from the shown secret, sign-in with password + TOTP, a replayed code
// refused, a recovery code good once, and a passkey registered and used
// through Chromium's virtual authenticator (DevTools WebAuthn domain).
//
// usage: node mfa.mjs ISSUER CLIENT_ID REDIRECT_URI USERNAME PASSWORD SHOTS_DIR
// Prints "token <name> <access token>" lines for the caller and
// "ok: every step passed" at the end.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import puppeteer from "puppeteer-core";

const [issuer, clientId, redirectUri, username, password, shots] = process.argv.slice(2);

// RFC 6238 with SHA-1 and 6 digits, as authenticator apps compute it.
function base32Decode(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of text.replace(/=+$/, "")) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}
function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac("sha1", base32Decode(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  const value = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return value.toString().padStart(6, "0");
}
const stepNow = () => Math.floor(Date.now() / 1000 / 30);

const browser = await puppeteer.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic"],
});
let current = "start";
const step = (name) => { current = name; console.error(`step: ${name}`); };
let pageForFailure = null;
const timeout = setTimeout(async () => {
  console.error(`timed out in step: ${current}`);
  if (pageForFailure) {
    try {
      console.error(await pageForFailure.evaluate(() => document.body.innerText));
      await pageForFailure.screenshot({ path: `${shots}/failure.png`, fullPage: true });
    } catch {}
  }
  process.exit(3);
}, 120_000);
try {
  const page = await browser.newPage();
  pageForFailure = page;
  page.setDefaultTimeout(15_000);
  await page.setViewport({ width: 900, height: 1300 });
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  const submit = async (selector) => {
    await Promise.all([page.waitForNavigation(), page.click(selector)]);
  };
  const text = () => page.evaluate(() => document.body.innerText);

  step("account sign-in");
  // Sign in to the account page (password only: no factor yet).
  let response = await page.goto(`${issuer}/account`);
  assert.equal(response.status(), 200);
  await page.type("#username", username);
  await page.type("#password", password);
  await submit("button[type=submit]:not([name])");
  assert.match(await text(), /Your account/);

  step("totp enrolment");
  // TOTP: the secret from the page, the code computed here.
  await submit("form[action$='/account/totp'] button");
  const secret = await page.$eval("#totp-secret", (e) => e.textContent.trim());
  assert.match(secret, /^[A-Z2-7]{32}$/);
  assert.ok(await page.$(".qr svg"), "the QR code is drawn on the page");
  await shot("account-totp-enrolment");
  let enrolStep = stepNow();
  await page.type("#code", totp(secret, enrolStep));
  await submit("form[action$='/account/totp-confirm'] button");
  const codes = await page.$$eval("#recovery-codes code", (items) => items.map((i) => i.textContent));
  assert.equal(codes.length, 10, await text());
  assert.match(await text(), /authenticator app is set up/);

  step("passkey registration");
  // A passkey, on Chromium's virtual authenticator (a platform
  // authenticator with user verification, as a phone or laptop has).
  const cdp = await page.createCDPSession();
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
  });
  await page.evaluate(() => { document.getElementById("passkey-name").value = "Test laptop"; });
  await Promise.all([page.waitForNavigation(), page.click("#add-passkey")]);
  assert.match(await text(), /passkey is registered/, await text());
  assert.match(await text(), /Test laptop/);
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.equal(credentials.length, 1, "the authenticator holds the passkey");
  await shot("account-page");

  step("sign out");
  // Sign out of the SSO (this session, from the account page).
  await submit("#sessions li.current form button");
  assert.ok(await page.$("#password"), "signed out: the sign-in form again");

  // Sign in to the client: password, then the TOTP code.
  const verifier = crypto.randomBytes(32).toString("base64url");
  const challenge = crypto.createHash("sha256").update(verifier).digest("base64url");
  const authorize = () => {
    const url = new URL(`${issuer}/authorize`);
    url.search = new URLSearchParams({ response_type: "code", client_id: clientId,
      redirect_uri: redirectUri, scope: "openid profile", state: "s1", nonce: "n1",
      code_challenge: challenge, code_challenge_method: "S256" }).toString();
    return url.href;
  };
  // The browser is sent to the client's callback: the code is read from
  // the request; nothing needs to answer there.
  const callback = () => new Promise((resolve) => {
    const listener = (request) => {
      if (request.url().startsWith(redirectUri)) {
        page.off("request", listener);
        resolve(new URL(request.url()).searchParams.get("code"));
      }
    };
    page.on("request", listener);
  });
  const exchange = async (code) => {
    const answer = await fetch(`${issuer}/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "authorization_code", code, redirect_uri: redirectUri,
        client_id: clientId, code_verifier: verifier }),
    });
    const body = await answer.json();
    assert.equal(answer.status, 200, JSON.stringify(body));
    const claims = JSON.parse(Buffer.from(body.id_token.split(".")[1], "base64url"));
    return { body, claims };
  };
  const passwordStep = async () => {
    await page.goto(authorize());
    await page.type("#username", username);
    await page.type("#password", password);
    await submit("button[type=submit]:not([name])");
    assert.ok(await page.$("#code"), "the second step asks for a code: " + (await text()));
  };
  const signOut = async () => {
    await page.goto(`${issuer}/account`);
    assert.ok(await page.$("#sessions li.current"), "the current session is listed: " + (await text()));
    await submit("#sessions li.current form button");
    assert.ok(await page.$("#password"), "signed out: " + (await text()));
  };

  step("password + totp");
  await passwordStep();
  await shot("mfa-step");
  // A code that cannot be right first (counted as a failure, refused).
  await page.type("#code", "000000" === totp(secret, stepNow()) ? "111111" : "000000");
  await submit("#factor-form button[type=submit]");
  assert.match(await text(), /did not work/);
  step("waiting for a fresh time step");
  // The enrolment's code was spent: wait for a step of our own.
  while (stepNow() <= enrolStep) await new Promise((r) => setTimeout(r, 500));
  const usedStep = stepNow();
  const usedCode = totp(secret, usedStep);
  step("the right code");
  await page.type("#code", usedCode);
  let code = callback();
  await page.click("#factor-form button[type=submit]");
  const received = await code;
  step("exchange");
  let { body, claims } = await exchange(received);
  assert.deepEqual(claims.amr, ["pwd", "otp", "mfa"]);
  assert.equal(claims.acr, "urn:portcullis:acr:mfa");
  console.log(`token totp ${body.access_token}`);

  step("replayed code");
  // The same code again, in its own time step: refused.
  await signOut();
  await passwordStep();
  assert.equal(stepNow() <= usedStep + 1, true, "still inside the code's window");
  await page.type("#code", usedCode);
  await submit("#factor-form button[type=submit]");
  assert.match(await text(), /did not work/, "a reused code is refused");

  step("recovery code");
  // A recovery code works once.
  await page.click("details summary");
  await page.type("#recovery_code", codes[0].toLowerCase());
  code = callback();
  await page.click("details form button");
  ({ claims } = await exchange(await code));
  assert.deepEqual(claims.amr, ["pwd", "otp", "mfa"]);
  await signOut();
  await passwordStep();
  await page.click("details summary");
  await page.type("#recovery_code", codes[0]);
  await submit("details form button");
  assert.match(await text(), /did not work/, "a recovery code works once");

  step("passkey second factor");
  // A passkey as the second factor.
  code = callback();
  await page.click("#use-passkey");
  ({ body, claims } = await exchange(await code));
  assert.deepEqual(claims.amr, ["pwd", "hwk", "user", "mfa"]);
  console.log(`token passkey-second ${body.access_token}`);

  step("passkey alone");
  // A passkey alone: the name, then the passkey.
  await signOut();
  await page.goto(authorize());
  await page.type("#username", username);
  await submit("button[name=method][value=passkey]");
  assert.equal(await page.$("#code"), null, "no code field without a password");
  assert.ok(await page.$("#use-passkey"));
  code = callback();
  await page.click("#use-passkey");
  ({ body, claims } = await exchange(await code));
  assert.deepEqual(claims.amr, ["hwk", "user", "mfa"]);
  assert.equal(claims.acr, "urn:portcullis:acr:mfa");
  console.log(`token passkey ${body.access_token}`);

  // A recovery code left for the caller (the gateway's step-up test).
  console.log(`recovery ${codes[1]}`);
  console.log("ok: every step passed");
} catch (error) {
  console.error(`failed in step: ${current}`);
  if (pageForFailure) {
    try {
      console.error(await pageForFailure.evaluate(() => document.body.innerText));
      await pageForFailure.screenshot({ path: `${shots}/failure.png`, fullPage: true });
    } catch {}
  }
  throw error;
} finally {
  clearTimeout(timeout);
  await browser.close();
}
