// A real OAuth 2.0 authorization server (oidc-provider) on loopback, for the oauth2
// connector's tests and the demo. In-memory state; the client credentials come from
// the environment:
//
//   OIDC_PORT            port on 127.0.0.1 (default 4444)
//   OIDC_CLIENT_SECRET   secret of client `ebb` (opaque tokens) and `ebb-jwt`
//                        (self-contained JWT access tokens, for the resource
//                        `urn:ebb:api`)
//   OIDC_PROBE_SECRET    secret of client `probe`, a resource server that only
//                        introspects (RFC 7662)
//   OIDC_TOKEN_TTL       lifetime of client-credentials tokens, seconds (default 300)
//
// Prints "ready <issuer>" once it listens.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT || 4444);
const secret = process.env.OIDC_CLIENT_SECRET;
const probeSecret = process.env.OIDC_PROBE_SECRET;
const ttl = Number(process.env.OIDC_TOKEN_TTL || 300);
if (!secret || !probeSecret) {
  console.error('OIDC_CLIENT_SECRET and OIDC_PROBE_SECRET must be set');
  process.exit(2);
}

const scopes = ['invoices:read', 'invoices:write', 'reports:read'];
const client = (id, clientSecret, scope) => ({
  client_id: id,
  client_secret: clientSecret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
  ...(scope ? { scope } : {}),
});

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    client('ebb', secret, scopes.join(' ')),
    client('ebb-jwt', secret, scopes.join(' ')),
    client('probe', probeSecret, ''),
  ],
  scopes,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Only `ebb-jwt` gets tokens for a resource server, and those are JWTs.
      defaultResource: (ctx, c) => (c.clientId === 'ebb-jwt' ? 'urn:ebb:api' : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, c) => ({
        scope: scopes.join(' '),
        accessTokenFormat: c.clientId === 'ebb-jwt' ? 'jwt' : 'opaque',
        accessTokenTTL: ttl,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || ttl },
});
provider.proxy = false;

provider.listen(port, '127.0.0.1');
console.log(`ready ${issuer}`);
