// A relying party driving the Portcullis SSO with panva's openid-client:
// discovery, code + PKCE through the real login form, ID token validation,
// userinfo, refresh with rotation, client credentials, introspection,
// revocation, logout, and the error cases. Exits non-zero on the first
// failed assertion. Usage: node rp.mjs ISSUER
import assert from "node:assert/strict";
import * as client from "openid-client";
import { Browser, browserLogin } from "./browser.mjs";

const issuer = new URL(process.argv[2]);
const CALLBACK = "http://127.0.0.1:1/callback";
const LOGGED_OUT = "http://127.0.0.1:1/logged-out";
const insecure = { execute: [client.allowInsecureRequests] };
const es256 = { id_token_signed_response_alg: "ES256" };

function step(name) {
  console.log(`step: ${name}`);
}

async function expectOAuthError(promise, status, error) {
  let caught;
  try {
    await promise;
  } catch (e) {
    caught = e;
  }
  assert.ok(caught, `expected ${error}, the call succeeded`);
  // A ResponseBodyError carries the body's `error`; a 401 with a
  // WWW-Authenticate challenge arrives as a challenge error with the response.
  let got = caught.error ?? caught.cause?.error;
  if (got === undefined && caught.response) {
    got = (await caught.response.json()).error;
  }
  assert.equal(got, error, `${caught}`);
  if (status) assert.equal(caught.status ?? caught.cause?.status, status, `${caught}`);
}

const decode = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url"));

async function codeFlow(config, browser, { verifierOverride } = {}) {
  const verifier = client.randomPKCECodeVerifier();
  const challenge = await client.calculatePKCECodeChallenge(verifier);
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: CALLBACK,
    scope: "openid profile email offline_access",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state,
    nonce,
  });
  const callback = await browserLogin(browser, url, "alice", "alice-password");
  assert.equal(callback.searchParams.get("iss"), issuer.href.replace(/\/$/, ""));
  const tokens = () =>
    client.authorizationCodeGrant(config, callback, {
      pkceCodeVerifier: verifierOverride ?? verifier,
      expectedState: state,
      expectedNonce: nonce,
    });
  return { callback, tokens, nonce };
}

// --- the public UI client -------------------------------------------------
step("discovery");
// web-ui does not choose an ID token algorithm: openid-client then expects
// RS256 (OpenID Connect's default), and the SSO must sign with it.
const ui = await client.discovery(issuer, "web-ui", {}, client.None(), insecure);
assert.equal(ui.serverMetadata().issuer, issuer.href.replace(/\/$/, ""));
assert.ok(ui.serverMetadata().id_token_signing_alg_values_supported.includes("RS256"));
const uiEs = await client.discovery(issuer, "web-ui-es", es256, client.None(), insecure);
const service = await client.discovery(
  issuer, "billing", es256, client.ClientSecretBasic("billing-secret"), insecure);

step("code + PKCE through the login form");
const browser = new Browser();
const first = await codeFlow(ui, browser);
const tokens = await first.tokens();
const claims = tokens.claims();
assert.equal(JSON.parse(Buffer.from(tokens.id_token.split(".")[0], "base64url")).alg, "RS256");
assert.equal(claims.sub, "alice");
assert.equal(claims.nonce, first.nonce);
assert.equal(claims.email, "alice@example.com");
assert.ok(claims.auth_time > 0);
assert.ok(tokens.refresh_token, "a refresh token");
const access = decode(tokens.access_token);
assert.equal(access.exp - access.iat, 300, "the UI client's 5 min access tokens");
assert.deepEqual(access.roles, ["admin", "staff"]);

step("code + PKCE for a client that chose ES256 ID tokens");
{
  const flow = await codeFlow(uiEs, browser);
  const esTokens = await flow.tokens();
  assert.equal(JSON.parse(Buffer.from(esTokens.id_token.split(".")[0], "base64url")).alg, "ES256");
  assert.equal(esTokens.claims().sub, "alice");
  assert.equal(esTokens.claims().nonce, flow.nonce);
}

step("userinfo");
const info = await client.fetchUserInfo(ui, tokens.access_token, "alice");
assert.equal(info.preferred_username, "alice");
assert.equal(info.name, "Alice Example");

step("a second login is single sign-on (no form)");
{
  const verifier = client.randomPKCECodeVerifier();
  const url = client.buildAuthorizationUrl(ui, {
    redirect_uri: CALLBACK, scope: "openid", state: "s2",
    code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: "S256",
  });
  const response = await browser.fetch(url);
  assert.equal(response.status, 303, "the session answers at once");
  assert.ok(response.headers.get("location").startsWith(CALLBACK + "?code="));
}

step("refresh with rotation");
const refreshed = await client.refreshTokenGrant(ui, tokens.refresh_token);
assert.ok(refreshed.refresh_token && refreshed.refresh_token !== tokens.refresh_token, "rotated");
assert.equal(refreshed.claims().sub, "alice");

step("introspection of an active access token");
const active = await client.tokenIntrospection(service, refreshed.access_token);
assert.equal(active.active, true);
assert.equal(active.sub, "alice");
assert.equal(active.client_id, "web-ui");

step("reusing a rotated refresh token revokes the grant");
await new Promise((r) => setTimeout(r, 1100)); // past the 0 s grace
await expectOAuthError(client.refreshTokenGrant(ui, tokens.refresh_token), 400, "invalid_grant");
await expectOAuthError(client.refreshTokenGrant(ui, refreshed.refresh_token), 400, "invalid_grant");
assert.equal((await client.tokenIntrospection(service, refreshed.access_token)).active, false,
  "access tokens of a revoked grant are inactive");

step("client credentials, introspection, revocation");
const cc = await client.clientCredentialsGrant(service, { scope: "orders.read" });
const ccClaims = decode(cc.access_token);
assert.equal(ccClaims.exp - ccClaims.iat, 7200, "the service client's 2 h access tokens");
assert.equal((await client.tokenIntrospection(service, cc.access_token)).active, true);
await client.tokenRevocation(service, cc.access_token);
assert.equal((await client.tokenIntrospection(service, cc.access_token)).active, false);

step("logout");
{
  const fresh = await (await codeFlow(ui, browser)).tokens();
  const url = client.buildEndSessionUrl(ui, {
    id_token_hint: fresh.id_token,
    post_logout_redirect_uri: LOGGED_OUT,
    state: "bye",
  });
  const response = await browser.fetch(url);
  assert.equal(response.status, 303);
  assert.equal(response.headers.get("location"), `${LOGGED_OUT}?state=bye`);
  // The session is gone: the next authorization shows the form again.
  const again = client.buildAuthorizationUrl(ui, {
    redirect_uri: CALLBACK, scope: "openid", state: "s3",
    code_challenge: await client.calculatePKCECodeChallenge(client.randomPKCECodeVerifier()),
    code_challenge_method: "S256",
  });
  const form = await browser.fetch(again);
  assert.equal(form.status, 200);
  assert.ok((await form.text()).includes('name="password"'));
  // An unregistered post-logout URI is refused, not followed.
  const evil = client.buildEndSessionUrl(ui, {
    id_token_hint: fresh.id_token,
    post_logout_redirect_uri: "https://evil.example/",
  });
  const refused = await browser.fetch(evil);
  assert.equal(refused.status, 400);
  assert.equal(refused.headers.get("location"), null);
}

// --- error cases ----------------------------------------------------------
step("wrong client secret: 401 invalid_client");
{
  const wrong = await client.discovery(
    issuer, "billing", es256, client.ClientSecretBasic("not-the-secret"), insecure);
  await expectOAuthError(client.clientCredentialsGrant(wrong), 401, "invalid_client");
}

step("a reused code: invalid_grant, and the tokens issued from it revoked");
{
  const flow = await codeFlow(ui, new Browser());
  const issued = await flow.tokens();
  assert.equal((await client.tokenIntrospection(service, issued.access_token)).active, true);
  await expectOAuthError(flow.tokens(), 400, "invalid_grant");
  assert.equal((await client.tokenIntrospection(service, issued.access_token)).active, false);
  await expectOAuthError(client.refreshTokenGrant(ui, issued.refresh_token), 400, "invalid_grant");
}

step("a wrong PKCE verifier: invalid_grant");
{
  const flow = await codeFlow(ui, new Browser(), {
    verifierOverride: client.randomPKCECodeVerifier(),
  });
  await expectOAuthError(flow.tokens(), 400, "invalid_grant");
}

step("a redirect_uri mismatch: an error page, no redirect");
{
  const url = client.buildAuthorizationUrl(ui, {
    redirect_uri: "https://evil.example/callback",
    scope: "openid",
    code_challenge: await client.calculatePKCECodeChallenge(client.randomPKCECodeVerifier()),
    code_challenge_method: "S256",
  });
  const response = await new Browser().fetch(url);
  assert.equal(response.status, 400);
  assert.equal(response.headers.get("location"), null);
}

console.log("ok: every step passed");
