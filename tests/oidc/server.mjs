// A real OAuth 2.0 authorization server for tokenvend's end-to-end tests, on oidc-provider.
//
//   node server.mjs --port 0 --config config.json
//
// Prints `listening http://127.0.0.1:<port>` (the issuer) on stdout when ready, and nothing
// else there; exits 0 on SIGTERM/SIGINT. The config (see README.md) lists the clients and
// token lifetimes. Besides the provider's own endpoints (/token, /auth, /token/revocation)
// it serves:
//   GET /interaction/:uid   headless login + consent: logs in the subject given as
//                           login_hint in the authorization request and grants every
//                           requested scope; `deny=1` (or login_hint=deny) refuses instead
//   GET /__stats            counts of requests at the token and revocation endpoints
import http from 'node:http';
import fs from 'node:fs';
import Provider from 'oidc-provider';

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const m = /^--([^=]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) continue;
    out[m[1]] = m[2] ?? argv[(i += 1)];
  }
  return out;
}

// stdout carries exactly one line, `listening <issuer>`; everything else (oidc-provider's
// NOTICEs go through console.info) goes to stderr.
const stdoutLine = (line) => process.stdout.write(`${line}\n`);
console.log = console.error;
console.info = console.error;

const args = parseArgs(process.argv.slice(2));
if (!args.config) {
  console.error('usage: node server.mjs --port <port|0> --config <config.json>');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(args.config, 'utf8'));
const clients = config.clients ?? [];
const strictClientAuth = config.strict_client_auth ?? true;

// oidc-provider only keeps scopes it knows ("statics"): unknown ones are silently dropped from
// client_credentials and authorization requests, and a client whose `scope` metadata names an
// unknown scope is rejected as invalid. So every scope named in the config is made known.
const scopes = new Set(['openid', 'offline_access', ...(config.scopes ?? [])]);
for (const client of clients) {
  for (const s of (client.scope ?? '').split(' ')) if (s) scopes.add(s);
}

const stats = { token_requests: 0, grants: {}, revocations: 0, refresh_tokens_presented: {} };

const server = http.createServer();
server.listen(Number(args.port ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const accessTtl = config.access_token_ttl ?? 3600;
  const refreshTtl = config.refresh_token_ttl ?? 86400;

  const provider = new Provider(issuer, {
    clients,
    clientDefaults: { grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'] },
    scopes: [...scopes],
    extraParams: ['deny'],
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
      IdToken: accessTtl,
      RefreshToken: refreshTtl,
      Interaction: 600,
      Session: 3600,
      Grant: Math.max(86400, refreshTtl), // refresh tokens die with their grant
    },
    // Every client allowed the refresh_token grant gets one, without offline_access or
    // prompt=consent.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    rotateRefreshToken: () => config.rotate_refresh_tokens ?? true,
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['tokenvend-test-cookie-key'] },
  });
  provider.proxy = false;

  // Count every POST that reaches the token and revocation endpoints, failures included.
  // Counted before the response is written, so a test reading /__stats after its request
  // completed sees it. The form body is read here (oidc-provider then uses it as req.body)
  // so that the registered client authentication method can be enforced first.
  provider.use(async (ctx, next) => {
    const endpoint = ctx.method !== 'POST' ? undefined
      : ctx.path === '/token' ? 'token'
        : ctx.path === '/token/revocation' ? 'revocation' : undefined;
    if (!endpoint) return next();
    let form = {};
    try {
      if (ctx.is('application/x-www-form-urlencoded')) {
        const raw = await readBody(ctx.req);
        ctx.req.body = raw;
        form = Object.fromEntries(new URLSearchParams(raw));
      }
      if (strictClientAuth && !checkClientAuthMethod(ctx, form)) return;
      await next();
    } finally {
      if (endpoint === 'token') {
        stats.token_requests += 1;
        const grant = form.grant_type ?? 'unknown';
        stats.grants[grant] = (stats.grants[grant] ?? 0) + 1;
        if (grant === 'refresh_token' && form.refresh_token) {
          const rt = form.refresh_token;
          stats.refresh_tokens_presented[rt] = (stats.refresh_tokens_presented[rt] ?? 0) + 1;
        }
      } else {
        stats.revocations += 1;
      }
    }
  });

  // The other half of dropSessionCookies: a new session that nobody has logged into yet is
  // not saved, so oidc-provider sets no cookie for it; expire the stale one so that it does
  // not come back at the resume step.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path !== '/auth' || !ctx.req.droppedSessionCookie) return;
    const set = [].concat(ctx.response.get('set-cookie') || []);
    if (set.some((c) => c.startsWith('_session='))) return;
    const gone = 'path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; samesite=lax; httponly';
    ctx.append('Set-Cookie', [`_session=; ${gone}`, `_session.sig=; ${gone}`]);
  });

  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    try {
      if (req.method === 'GET' && path === '/__stats') {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(stats));
        return;
      }
      if (path === '/auth') {
        // Every authorization request starts a fresh session, as if from a new browser: the
        // login interaction always runs, so login_hint (or deny) always takes effect, even
        // when a test reuses one cookie jar for several subjects. (Switching the subject of
        // an existing session would make oidc-provider log it out through an HTML form.)
        dropSessionCookies(req);
      }
      if (req.method === 'GET' && path.startsWith('/interaction/')) {
        await interaction(provider, req, res);
        return;
      }
      callback(req, res);
    } catch (err) {
      res.statusCode = 400;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ error: err.error ?? 'interaction_failed', error_description: String(err.error_description ?? err.message ?? err) }));
    }
  });
  stdoutLine(`listening ${issuer}`);
});

// One interaction step, answered without a page: login as login_hint, then consent to every
// requested scope. Each call ends in a 303 back to /auth/:uid, which then redirects on.
async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  const deny = params.deny !== undefined && params.deny !== '0' && params.deny !== 'false';
  if (deny || params.login_hint === 'deny') {
    await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the user declined' }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'login') {
    const accountId = params.login_hint || session?.accountId || 'user';
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const d = prompt.details;
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  for (const [indicator, s] of Object.entries(d.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, s.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

function dropSessionCookies(req) {
  if (!req.headers.cookie) return;
  const all = req.headers.cookie.split(';').map((c) => c.trim()).filter(Boolean);
  const kept = all.filter((c) => !c.startsWith('_session'));
  req.droppedSessionCookie = kept.length !== all.length;
  if (kept.length) req.headers.cookie = kept.join('; ');
  else delete req.headers.cookie;
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request entity too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// oidc-provider accepts client_secret_basic and client_secret_post interchangeably for a
// client registered with either. Unless `strict_client_auth` is false, a client must use the
// method it is registered with (default client_secret_basic), as many real providers demand;
// otherwise the answer is oidc-provider's own 401 invalid_client.
function checkClientAuthMethod(ctx, form) {
  let used;
  let clientId;
  const authz = ctx.get('authorization');
  if (/^basic /i.test(authz)) {
    used = 'client_secret_basic';
    const decoded = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
    try {
      clientId = decodeURIComponent(decoded.slice(0, decoded.indexOf(':')).replace(/\+/g, ' '));
    } catch {
      return true; // malformed: oidc-provider answers it
    }
  } else if (form.client_secret !== undefined) {
    used = 'client_secret_post';
    clientId = form.client_id;
  } else {
    return true;
  }
  const client = clients.find((c) => c.client_id === clientId);
  if (!client) return true; // unknown client: oidc-provider answers invalid_client
  const registered = client.token_endpoint_auth_method ?? 'client_secret_basic';
  if (used === registered) return true;
  console.error(`client ${clientId} authenticated with ${used} but is registered with ${registered}`);
  ctx.status = 401;
  ctx.set('cache-control', 'no-store');
  if (used === 'client_secret_basic') {
    ctx.set('www-authenticate', `Basic realm="${issuerOf(ctx)}", error="invalid_client", error_description="client authentication failed"`);
  }
  ctx.body = { error: 'invalid_client', error_description: 'client authentication failed' };
  return false;
}

const issuerOf = (ctx) => `${ctx.protocol}://${ctx.host}`;

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
