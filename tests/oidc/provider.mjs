// A real third-party OpenID Provider for the gateway's tests:
// panva/oidc-provider issuing JWT access tokens (RS256 or ES256 by
// resource) through the client credentials grant, opaque tokens for
// urn:api:opaque, introspection and revocation.
//   node provider.mjs PORT
import http from 'node:http';
import Provider from 'oidc-provider';
import { exportJWK, generateKeyPair } from 'jose';

const port = Number(process.argv[2]);
if (!port) {
  console.error('usage: node provider.mjs PORT');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

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
  ],
  jwks: { keys: [await signingKey('RS256', 'rs-1'), await signingKey('ES256', 'es-1')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:api:rs',
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        scope: 'orders:read orders:write',
        audience: 'api',
        accessTokenTTL: 300,
        // urn:api:opaque gets opaque tokens, checked by introspection.
        accessTokenFormat: resource === 'urn:api:opaque' ? 'opaque' : 'jwt',
        jwt: { sign: { alg: resource === 'urn:api:es' ? 'ES256' : 'RS256' } },
      }),
    },
  },
});

http.createServer(provider.callback()).listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
