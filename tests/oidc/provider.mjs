// A real third-party OpenID Provider for the gateway's tests:
// panva/oidc-provider issuing JWT access tokens (RS256 or ES256 by
// resource) through the client credentials grant, opaque tokens for
// urn:api:opaque, introspection and revocation; and, for the gateway's
// browser login, the `portcullis-gateway` client (code + PKCE, rotating
// refresh tokens, back-channel logout) whose users sign in as `alice`
// at once (no form: the login UI is not what is tested).
//   node provider.mjs PORT [GATEWAY_URL ACCESS_TOKEN_TTL]
// GET /_test/refreshes answers how many refresh-token grants succeeded.
import http from 'node:http';
import Provider from 'oidc-provider';
import { exportJWK, generateKeyPair } from 'jose';

const port = Number(process.argv[2]);
if (!port) {
  console.error('usage: node provider.mjs PORT [GATEWAY_URL ACCESS_TOKEN_TTL]');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const gateway = process.argv[3];
const gatewayTokenTtl = Number(process.argv[4] || 300);
const GATEWAY_CLIENT = 'portcullis-gateway';
let refreshes = 0;

async function signingKey(alg, kid) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'orders-service',
      client_secret: 'a-test-secret-that-is-only-used-on-loopback',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    },
    ...(gateway ? [{
      client_id: GATEWAY_CLIENT,
      client_secret: 'a-gateway-secret-that-is-only-used-on-loopback',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [`${gateway}/_auth/callback`],
      post_logout_redirect_uris: [`${gateway}/bye`],
      backchannel_logout_uri: `${gateway}/_auth/backchannel-logout`,
      backchannel_logout_session_required: true,
    }] : []),
  ],
  // Everything here is on loopback, which oidc-provider's SSRF guard
  // refuses by default (its documented `fetch` hook lifts it).
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  findAccount: (_ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  // Refresh tokens for the gateway without offline_access, rotated on
  // every use: a reused one revokes the grant, as in most providers.
  issueRefreshToken: (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  ttl: { IdToken: 300, RefreshToken: 3600, Session: 3600, Grant: 3600, Interaction: 600 },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  jwks: { keys: [await signingKey('RS256', 'rs-1'), await signingKey('ES256', 'es-1')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:api:rs',
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource, client) => ({
        scope: 'orders:read orders:write',
        audience: 'api',
        accessTokenTTL: client?.clientId === GATEWAY_CLIENT ? gatewayTokenTtl : 300,
        // urn:api:opaque gets opaque tokens, checked by introspection.
        accessTokenFormat: resource === 'urn:api:opaque' ? 'opaque' : 'jwt',
        jwt: { sign: { alg: resource === 'urn:api:es' ? 'ES256' : 'RS256' } },
      }),
    },
  },
});

// A failed logout token delivery is logged (stderr).
provider.on('backchannel.error', (_ctx, e, client) => console.error(`backchannel error ${client.clientId} ${e}`));
provider.on('grant.success', (ctx) => {
  if (ctx.oidc.params.grant_type === 'refresh_token') refreshes += 1;
});

// Signs `alice` in and grants what the client asked, at once.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  if (prompt.name === 'login') {
    return provider.interactionFinished(req, res, { login: { accountId: 'alice' } },
      { mergeWithLastSubmission: false });
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [resource, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(resource, scopes.join(' '));
  }
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } },
    { mergeWithLastSubmission: true });
}

const callback = provider.callback();
http.createServer((req, res) => {
  if (req.url === '/_test/refreshes') {
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify({ refreshes }));
  }
  if (req.url.startsWith('/interaction/')) {
    return interaction(req, res).catch((e) => {
      res.statusCode = 500;
      res.end(String(e));
    });
  }
  return callback(req, res);
}).listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
