// A real OAuth 2.0 authorization server for tokenvend's end-to-end tests, on oidc-provider.
//
//   node server.mjs --port 0 --config config.json
//
// Prints `listening http://127.0.0.1:<port>` when ready. The config (see README.md) lists the
// clients and token lifetimes. Besides the provider's own endpoints (/token, /auth,
// /token/revocation) it serves:
//   GET /interaction/:uid   headless login + consent: logs in the subject given as
//                           login_hint in the authorization request ("deny" refuses)
//   GET /__stats            counts of requests at the token and revocation endpoints
import http from 'node:http';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, all) => (v.startsWith('--') ? [...acc, [v.slice(2), all[i + 1]]] : acc), []),
);
const config = JSON.parse(fs.readFileSync(args.config, 'utf8'));
const stats = { token_requests: 0, grants: {}, revocations: 0, refresh_tokens_presented: {} };

const server = http.createServer();
server.listen(Number(args.port ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const accessTtl = config.access_token_ttl ?? 3600;

  const provider = new Provider(issuer, {
    clients: config.clients,
    clientDefaults: { grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'] },
    scopes: ['openid', 'offline_access', ...(config.scopes ?? [])],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
    },
    pkce: { required: () => true },
    ttl: {
      AccessToken: accessTtl,
      ClientCredentials: accessTtl,
      AuthorizationCode: config.code_ttl ?? 60,
      RefreshToken: config.refresh_token_ttl ?? 86400,
      Interaction: 600,
      Session: 3600,
      Grant: 86400,
    },
    // Every client allowed the refresh_token grant gets one, without offline_access.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    rotateRefreshToken: () => config.rotate_refresh_tokens ?? true,
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['tokenvend-test-cookie-key'] },
  });
  provider.proxy = false;

  // Count what reaches the token and revocation endpoints, failures included.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method !== 'POST') return;
    if (ctx.path === '/token') {
      stats.token_requests += 1;
      const grant = ctx.oidc?.params?.grant_type ?? 'unknown';
      stats.grants[grant] = (stats.grants[grant] ?? 0) + 1;
      const rt = ctx.oidc?.params?.refresh_token;
      if (rt) stats.refresh_tokens_presented[rt] = (stats.refresh_tokens_presented[rt] ?? 0) + 1;
    } else if (ctx.path === '/token/revocation') {
      stats.revocations += 1;
    }
  });

  const callback = provider.callback();
  server.on('request', async (req, res) => {
    try {
      if (req.url === '/__stats') {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(stats));
        return;
      }
      if (req.url.startsWith('/interaction/')) {
        const details = await provider.interactionDetails(req, res);
        const { prompt, params, session } = details;
        const subject = params.login_hint || session?.accountId || 'user';
        if (subject === 'deny') {
          await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the user declined' }, { mergeWithLastSubmission: false });
          return;
        }
        if (prompt.name === 'login') {
          await provider.interactionFinished(req, res, { login: { accountId: subject } }, { mergeWithLastSubmission: false });
          return;
        }
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
        const d = prompt.details;
        if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
        if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
        for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
          grant.addResourceScope(indicator, scopes.join(' '));
        }
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
        return;
      }
      callback(req, res);
    } catch (err) {
      res.statusCode = 500;
      res.end(String(err));
    }
  });
  console.log(`listening ${issuer}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
