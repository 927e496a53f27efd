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
//   OIDC_CONSOLE_REDIRECT  redirect URIs (comma-separated) of client `ebb-console`,
//                        Ebb's web console: authorization code + PKCE (S256), its
//                        secret OIDC_CONSOLE_SECRET (default: OIDC_CLIENT_SECRET).
//                        People sign in on the provider's own (development) login
//                        page with any password; their groups come from PEOPLE.
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
const consoleRedirects = (process.env.OIDC_CONSOLE_REDIRECT || '').split(',').filter(Boolean);
const consoleSecret = process.env.OIDC_CONSOLE_SECRET || secret;

// The people of the demo and the tests, with the groups Ebb maps to roles. Anyone
// else may sign in too, with no groups.
const PEOPLE = {
  alice: { name: 'Alice Approver', groups: ['ebb-approvers', 'ebb-operators'] },
  bob: { name: 'Bob Approver', groups: ['ebb-approvers'] },
  carol: { name: 'Carol Requester', groups: ['ebb-requesters'] },
  dave: { name: 'Dave Auditor', groups: ['ebb-auditors'] },
};
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
    ...(consoleRedirects.length ? [{
      client_id: 'ebb-console',
      client_secret: consoleSecret,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: consoleRedirects,
      token_endpoint_auth_method: 'client_secret_basic',
    }] : []),
  ],
  scopes: ['openid', 'profile', 'groups', ...scopes],
  claims: { openid: ['sub'], profile: ['name'], groups: ['groups'] },
  // The console reads the person's name and groups from the ID token.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    const person = PEOPLE[id] || { name: id, groups: [] };
    return { accountId: id, async claims() { return { sub: id, ...person }; } };
  },
  // The console is first-party: its sign-ins need no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (ctx.oidc.client.clientId !== 'ebb-console') return undefined;
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile groups');
    grant.addOIDCClaims(['name', 'groups']);
    await grant.save();
    return grant;
  },
  features: {
    devInteractions: { enabled: consoleRedirects.length > 0 },
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
