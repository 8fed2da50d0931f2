// openid-client with a client registered at run time through the SSO's
// admin API: discovery, code + PKCE through the login form (and consent),
// the ID token (RS256, the default) and a refresh. Exits non-zero on the
// first failed assertion.
//   node rp-client.mjs ISSUER CLIENT_ID CLIENT_SECRET CALLBACK
import assert from "node:assert/strict";
import * as client from "openid-client";
import { Browser, browserLogin } from "./browser.mjs";

const [issuerText, clientId, clientSecret, callbackUrl] = process.argv.slice(2);
const issuer = new URL(issuerText);
const config = await client.discovery(
  issuer, clientId, {}, client.ClientSecretBasic(clientSecret),
  { execute: [client.allowInsecureRequests] });

const verifier = client.randomPKCECodeVerifier();
const state = client.randomState();
const nonce = client.randomNonce();
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: callbackUrl,
  scope: "openid profile",
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: "S256",
  state,
  nonce,
});
const callback = await browserLogin(new Browser(), url, "alice", "alice-password");
const tokens = await client.authorizationCodeGrant(config, callback, {
  pkceCodeVerifier: verifier,
  expectedState: state,
  expectedNonce: nonce,
});
const header = JSON.parse(Buffer.from(tokens.id_token.split(".")[0], "base64url"));
assert.equal(header.alg, "RS256");
assert.equal(tokens.claims().sub, "alice");
assert.equal(tokens.claims().aud, clientId);
assert.ok(tokens.refresh_token, "a refresh token");
const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
assert.equal(refreshed.claims().sub, "alice");
console.log("ok: a run-time client signed alice in");
