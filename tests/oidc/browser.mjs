// A minimal browser for the relying-party scripts: cookies by name,
// redirects not followed, and the SSO's login and consent forms.
import assert from "node:assert/strict";

// A minimal browser: cookies by name, redirects not followed.
export class Browser {
  constructor() {
    this.cookies = new Map();
  }
  async fetch(url, init = {}) {
    const headers = new Headers(init.headers || {});
    if (this.cookies.size) {
      headers.set("cookie", [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; "));
    }
    const response = await fetch(url, { ...init, headers, redirect: "manual" });
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(";");
      const [name, value] = pair.split("=");
      const expired = attributes.some((a) => a.trim().toLowerCase() === "max-age=0");
      if (expired || value === "") this.cookies.delete(name.trim());
      else this.cookies.set(name.trim(), value.trim());
    }
    return response;
  }
}

export function hidden(html, name) {
  const match = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  assert.ok(match, `hidden field ${name} in:\n${html}`);
  return match[1];
}

// Logs in through the form (and consents if asked); returns the callback URL.
export async function browserLogin(browser, authorizationUrl, username, password) {
  const issuer = new URL(authorizationUrl);
  issuer.pathname = issuer.pathname.replace(/\/authorize$/, "");
  issuer.search = "";
  let response = await browser.fetch(authorizationUrl);
  let html = await response.text();
  if (response.status === 200 && html.includes('name="password"')) {
    assert.ok(html.includes("<form"), "a login form");
    const form = new URLSearchParams({
      request: hidden(html, "request"),
      csrf: hidden(html, "csrf"),
      username,
      password,
    });
    response = await browser.fetch(new URL("login", issuer.href + "/"), {
      method: "POST",
      body: form,
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    html = await response.text();
  }
  if (response.status === 200 && html.includes('name="decision"')) {
    const form = new URLSearchParams({
      request: hidden(html, "request"),
      csrf: hidden(html, "csrf"),
      decision: "allow",
    });
    response = await browser.fetch(new URL("consent", issuer.href + "/"), {
      method: "POST",
      body: form,
      headers: { "content-type": "application/x-www-form-urlencoded" },
    });
    html = await response.text();
  }
  assert.equal(response.status, 303, `redirect to the client, got ${response.status}: ${html}`);
  return new URL(response.headers.get("location"));
}

