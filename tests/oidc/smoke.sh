#!/usr/bin/env bash
# Exercises server.mjs with curl: every request the README shows, with its answer and status.
# Needs node, curl, openssl and python3; run `npm ci` here first.
#   bash smoke.sh            # prints each request and answer, exits non-zero on a surprise
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/config.json" <<'EOF'
{
  "clients": [
    {"client_id": "cc-basic", "client_secret": "cc-basic-secret", "grant_types": ["client_credentials"],
     "response_types": [], "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic"},
    {"client_id": "cc-post", "client_secret": "cc-post-secret", "grant_types": ["client_credentials"],
     "response_types": [], "redirect_uris": [], "token_endpoint_auth_method": "client_secret_post",
     "scope": "read write"},
    {"client_id": "web", "client_secret": "web-secret", "grant_types": ["authorization_code", "refresh_token"],
     "response_types": ["code"], "redirect_uris": ["http://127.0.0.1:9/callback"],
     "token_endpoint_auth_method": "client_secret_post"}
  ],
  "scopes": ["read", "write"],
  "access_token_ttl": 600
}
EOF

node server.mjs --port 0 --config "$work/config.json" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q '^listening ' "$work/out" && break; sleep 0.1; done
ISS=$(awk '/^listening /{print $2; exit}' "$work/out")
echo "issuer: $ISS"

fail=0
# req EXPECTED_STATUS curl-args... : prints the request, the body and the status
req() {
  local want=$1; shift
  echo "\$ curl $*"
  local code
  code=$(curl -sS -o "$work/body" -w '%{http_code}' "$@")
  cat "$work/body"; echo; echo "HTTP $code"
  if [ "$code" != "$want" ]; then echo "!! expected HTTP $want"; fail=1; fi
}
field() { python3 -c "import json,sys; print(json.load(open('$work/body')).get('$1',''))"; }

echo; echo "## client_credentials"
req 200 -u cc-basic:cc-basic-secret -d grant_type=client_credentials "$ISS/token"
req 200 -u cc-basic:cc-basic-secret -d grant_type=client_credentials -d 'scope=read write' "$ISS/token"
[ "$(field scope)" = "read write" ] || { echo "!! scope not echoed"; fail=1; }
req 200 -d client_id=cc-post -d client_secret=cc-post-secret -d grant_type=client_credentials "$ISS/token"
req 200 -d client_id=cc-post -d client_secret=cc-post-secret -d grant_type=client_credentials -d 'scope=read write' "$ISS/token"
req 200 -u cc-basic:cc-basic-secret -d grant_type=client_credentials -d 'scope=unknown' "$ISS/token"
req 401 -u cc-basic:wrong -d grant_type=client_credentials "$ISS/token"
req 401 -d client_id=cc-post -d client_secret=wrong -d grant_type=client_credentials "$ISS/token"
req 401 -u cc-post:cc-post-secret -d grant_type=client_credentials "$ISS/token"
req 400 -u cc-basic:cc-basic-secret -d grant_type=password "$ISS/token"

echo; echo "## authorization code + PKCE, headless, with a cookie jar"
VERIFIER=$(openssl rand -base64 48 | tr '+/' '-_' | tr -d '=\n')
CHALLENGE=$(printf %s "$VERIFIER" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\n')
REDIRECT=http://127.0.0.1:9/callback
AUTH="$ISS/auth?response_type=code&client_id=web&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback&scope=openid%20offline_access%20read&state=xyz&code_challenge=$CHALLENGE&code_challenge_method=S256&login_hint=alice"
follow() { # follows redirects until the one to REDIRECT; prints each hop
  local u=$1 r
  for _ in 1 2 3 4 5 6 7 8; do
    r=$(curl -sS -c "$work/jar" -b "$work/jar" -o /dev/null -w '%{http_code} %{redirect_url}' "$u")
    echo "  $r" >&2
    u=${r#* }
    case "$u" in "$REDIRECT"*) echo "$u"; return;; esac
  done
  echo "!! no redirect to $REDIRECT" >&2; fail=1
}
echo "GET $AUTH"
FINAL=$(follow "$AUTH")
CODE=$(python3 -c "import sys,urllib.parse as u; print(u.parse_qs(u.urlsplit(sys.argv[1]).query)['code'][0])" "$FINAL")
req 400 -d client_id=web -d client_secret=web-secret -d grant_type=authorization_code -d "code=$CODE" \
  -d "redirect_uri=$REDIRECT" -d "code_verifier=${VERIFIER}x" "$ISS/token"
req 200 -d client_id=web -d client_secret=web-secret -d grant_type=authorization_code -d "code=$CODE" \
  -d "redirect_uri=$REDIRECT" -d "code_verifier=$VERIFIER" "$ISS/token"
RT1=$(field refresh_token)

echo; echo "## refresh with rotation"
req 200 -d client_id=web -d client_secret=web-secret -d grant_type=refresh_token -d "refresh_token=$RT1" "$ISS/token"
RT2=$(field refresh_token)
[ -n "$RT2" ] && [ "$RT2" != "$RT1" ] || { echo "!! refresh token not rotated"; fail=1; }
req 400 -d client_id=web -d client_secret=web-secret -d grant_type=refresh_token -d "refresh_token=$RT1" "$ISS/token"
echo "(reusing RT1 revoked the whole grant, so RT2 is dead too:)"
req 400 -d client_id=web -d client_secret=web-secret -d grant_type=refresh_token -d "refresh_token=$RT2" "$ISS/token"

echo; echo "## revocation (a fresh grant, for bob; same cookie jar)"
FINAL=$(follow "${AUTH/login_hint=alice/login_hint=bob}")
CODE=$(python3 -c "import sys,urllib.parse as u; print(u.parse_qs(u.urlsplit(sys.argv[1]).query)['code'][0])" "$FINAL")
req 200 -d client_id=web -d client_secret=web-secret -d grant_type=authorization_code -d "code=$CODE" \
  -d "redirect_uri=$REDIRECT" -d "code_verifier=$VERIFIER" "$ISS/token"
RT=$(field refresh_token)
IDT=$(field id_token)
SUB=$(python3 -c "import sys,json,base64; p=sys.argv[1].split('.')[1]; print(json.loads(base64.urlsafe_b64decode(p+'==='))['sub'])" "$IDT")
[ "$SUB" = bob ] || { echo "!! id_token sub is $SUB, not bob"; fail=1; }
req 200 -d client_id=web -d client_secret=web-secret -d "token=$RT" "$ISS/token/revocation"
req 400 -d client_id=web -d client_secret=web-secret -d grant_type=refresh_token -d "refresh_token=$RT" "$ISS/token"
req 200 -d client_id=web -d client_secret=web-secret -d token=not-a-token "$ISS/token/revocation"
req 401 -d client_id=web -d client_secret=wrong -d "token=$RT" "$ISS/token/revocation"
echo "(replaying a used code fails, and revokes what was issued from it:)"
req 400 -d client_id=web -d client_secret=web-secret -d grant_type=authorization_code -d "code=$CODE" \
  -d "redirect_uri=$REDIRECT" -d "code_verifier=$VERIFIER" "$ISS/token"

echo; echo "## deny"
echo "GET ...&deny=1"
FINAL=$(follow "$AUTH&deny=1")
echo "$FINAL"
case "$FINAL" in *error=access_denied*state=xyz*) ;; *) echo "!! no access_denied"; fail=1;; esac

echo; echo "## stats"
req 200 "$ISS/__stats"

kill "$pid"; wait "$pid" && echo "server exited 0 on SIGTERM" || { echo "!! server exit $?"; fail=1; }
[ "$(wc -l <"$work/out")" = 1 ] || { echo "!! stdout had more than one line:"; cat "$work/out"; fail=1; }
[ $fail = 0 ] && echo "smoke: all as expected" || { echo "smoke: FAILED"; exit 1; }
