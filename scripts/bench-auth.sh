#!/usr/bin/env bash
# Authorization on the hot path: cached GetToken authenticated with a ROLE_CALLER API key
# (key id lookup, SHA-256, expiry, last-use mark, then the (tenant, provider) permission
# check) against the same call with the bootstrap admin key (SHA-256 compare, no
# permission lookup), on the release binary, in interleaved A/B passes.
#
#   scripts/bench-auth.sh                          # defaults below
#   PASSES=5 DURATION=10s scripts/bench-auth.sh
#   SETTINGS="4:64 1:1 1:16" scripts/bench-auth.sh  # connections:concurrency pairs
#
# It builds `tokenvend` (release) and grpcbench's `grpcload` (README in
# ../shared/tools/grpcbench; cached under target/grpcbench), starts a mock token endpoint
# (python3 http.server answering every POST with one token) and tokenvend on embedded
# SQLite in a temporary directory, seeds tenant `acme` / connection `p`, a ROLE_CALLER
# principal with a permission and an API key through grpcload --check (reflection), fills
# the cache with one GetToken, then for each setting runs PASSES pairs of grpcload runs,
# bootstrap and caller alternating which goes first (A B, B A, ...). Per run it prints rps,
# p50/p99 and tokenvend's CPU per request over the measured window; then per setting the
# ranges and the caller/bootstrap ratio of each pair. At the end it checks that the mock
# provider was asked exactly once (every measured call was a cache hit).
# Every process it starts is ended by its PID. Raw results: $OUT/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PASSES=${PASSES:-6}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
SETTINGS=${SETTINGS:-"4:64 1:1"}
GRPCBENCH=${GRPCBENCH:-$ROOT/../shared/tools/grpcbench}
GRPCLOAD_TARGET=${GRPCLOAD_TARGET:-$ROOT/target/grpcbench}
OUT=${OUT:-$(mktemp -d /tmp/bench-auth.XXXXXX)}
# 64 characters by default, the length of a tvk_ key, so both keys cost the same header bytes
# and the same SHA-256 work (two blocks) and the difference is the key lookup and the
# permission check. BOOTSTRAP_KEY=<shorter> measures an operator's shorter key.
ADMIN_KEY=${BOOTSTRAP_KEY:-bench-bootstrap-admin-key-0123456789abcdef0123456789abcdef012345}
METHOD=tokenvend.v1.TokenService/GetToken
BODY='{"tenant":"acme","provider":"p"}'

secs() { # 5s, 500ms or 1m → seconds, for sleep and the CPU figure
  awk -v d="$1" 'BEGIN { n = d + 0; if (d ~ /ms$/) n /= 1000; else if (d ~ /m$/) n *= 60; print n }'
}
DUR_S=$(secs "$DURATION")
WARM_S=$(secs "$WARMUP")

echo "== building tokenvend (release) and grpcload" >&2
cargo build --release -p tokenvend-server >&2
(cd "$GRPCBENCH" && cargo build --release --locked --bin grpcload --target-dir "$GRPCLOAD_TARGET") >&2
TOKENVEND=$ROOT/target/release/tokenvend
GRPCLOAD=$GRPCLOAD_TARGET/release/grpcload

mkdir -p "$OUT"
: >"$OUT/results.jsonl"
WORK=$(mktemp -d /tmp/bench-auth-work.XXXXXX)
MOCK_PID=
TV_PID=
LOAD_PID=
cleanup() {
  for pid in $LOAD_PID $TV_PID $MOCK_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------- mock token endpoint
cat >"$WORK/mock.py" <<'PY'
import http.server, sys
BODY = b'{"access_token":"bench","expires_in":3600,"token_type":"Bearer"}'
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
        sys.stderr.write("POST %s\n" % self.path)
        sys.stderr.flush()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
python3 "$WORK/mock.py" >"$WORK/mock.port" 2>"$WORK/mock.log" &
MOCK_PID=$!
for _ in $(seq 100); do [ -s "$WORK/mock.port" ] && break; sleep 0.05; done
MOCK_PORT=$(cat "$WORK/mock.port")
[ -n "$MOCK_PORT" ] || { echo "the mock provider did not start" >&2; exit 1; }

# ---------------------------------------------------------------- tokenvend
read -r GRPC_PORT HTTP_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
# Nothing from the caller's environment: only what is set here.
for v in $(compgen -e | grep '^TOKENVEND_' || true); do unset "$v"; done
TOKENVEND_GRPC_ADDR=127.0.0.1:$GRPC_PORT \
TOKENVEND_HTTP_ADDR=127.0.0.1:$HTTP_PORT \
TOKENVEND_DATA_DIR=$WORK/data \
TOKENVEND_BOOTSTRAP_ADMIN_KEY=$ADMIN_KEY \
TOKENVEND_ALLOW_INSECURE_ENDPOINTS=true \
TOKENVEND_LOG=warn \
  "$TOKENVEND" serve >"$WORK/tokenvend.log" 2>&1 &
TV_PID=$!
TARGET=http://127.0.0.1:$GRPC_PORT

call() { # METHOD JSON [KEY]: one call through reflection, JSON answer on stdout
  "$GRPCLOAD" --target "$TARGET" --method "tokenvend.v1.$1" --data "$2" \
    -H "authorization: Bearer ${3:-$ADMIN_KEY}" --check
}
up=
for _ in $(seq 300); do
  kill -0 "$TV_PID" 2>/dev/null || break
  if "$GRPCLOAD" --target "$TARGET" --method grpc.health.v1.Health/Check --data '{}' --check >/dev/null 2>&1; then
    up=1; break
  fi
  sleep 0.1
done
[ -n "$up" ] || { echo "tokenvend did not start:" >&2; cat "$WORK/tokenvend.log" >&2; exit 1; }

echo "== seeding (tokenvend pid $TV_PID, $TARGET; mock provider :$MOCK_PORT)" >&2
call AdminService/CreateTenant '{"tenant":"acme"}' >/dev/null
call AdminService/PutConnection "{\"tenant\":\"acme\",\"provider\":\"p\",\"token_url\":\"http://127.0.0.1:$MOCK_PORT/token\",\"client_id\":\"bench\",\"client_secret\":\"bench-secret\"}" >/dev/null
call AdminService/CreatePrincipal '{"principal":"bench-caller","role":"ROLE_CALLER","description":"benchmark caller"}' >/dev/null
call AdminService/GrantPermission '{"principal":"bench-caller","tenant":"acme","provider":"p"}' >/dev/null
CALLER_KEY=$(call AdminService/CreateApiKey '{"principal":"bench-caller"}' |
  python3 -c 'import json, sys; r = json.load(sys.stdin); print(r.get("apiKey") or r["api_key"])')
# The cache: one miss, with the bootstrap key.
call TokenService/GetToken "$BODY" >/dev/null
# The new key reaches the in-memory decision through the change feed: wait for it.
ok=
for _ in $(seq 100); do
  if call TokenService/GetToken "$BODY" "$CALLER_KEY" >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { echo "the caller key never worked" >&2; call TokenService/GetToken "$BODY" "$CALLER_KEY" || true; exit 1; }

# ---------------------------------------------------------------- interleaved A/B
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # LABEL KEY CONNS CONC PASS
  local label=$1 key=$2 conns=$3 conc=$4 pass=$5
  "$GRPCLOAD" --target "$TARGET" --method "$METHOD" --data "$BODY" \
    -H "authorization: Bearer $key" --connections "$conns" --concurrency "$conc" \
    --warmup "$WARMUP" --duration "$DURATION" --json >"$WORK/run.json" &
  LOAD_PID=$!
  sleep "$WARM_S"
  local s0; s0=$(cpu_ticks "$TV_PID")
  sleep "$DUR_S"
  local s1; s1=$(cpu_ticks "$TV_PID")
  wait "$LOAD_PID"
  LOAD_PID=
  python3 - "$WORK/run.json" "$OUT/results.jsonl" "$label" "$pass" "$s0" "$s1" "$TICKS" "$DUR_S" <<'PY'
import json, sys
run, results, label, pass_, s0, s1, ticks, dur = sys.argv[1:]
r = json.loads(open(run).read())
r["label"] = label
r["pass"] = int(pass_)
cores = (int(s1) - int(s0)) / int(ticks) / float(dur)
r["server_cpu_cores"] = round(cores, 3)
r["server_cpu_us_per_req"] = round(cores * 1e6 / r["ok_rps"], 1) if r["ok_rps"] else None
with open(results, "a") as f:
    f.write(json.dumps(r) + "\n")
lat = r["latency_us"]
print("  pass %d %-9s conns %d c %3d: %8.0f rps  p50 %6.3f ms  p99 %6.3f ms  errors %d  server %.2f cores = %s us/req"
      % (r["pass"], label, r["connections"], r["concurrency"], r["rps"], lat["p50"] / 1000,
         lat["p99"] / 1000, r["errors"], cores, r["server_cpu_us_per_req"]))
PY
}

echo "== $(nproc) CPUs; $PASSES A/B pairs per setting, $DURATION measured after $WARMUP warm-up each; bootstrap key ${#ADMIN_KEY} chars, caller key ${#CALLER_KEY} chars"
for setting in $SETTINGS; do
  conns=${setting%%:*}
  conc=${setting##*:}
  echo "-- $conns connection(s), concurrency $conc"
  for pass in $(seq "$PASSES"); do
    if [ $((pass % 2)) -eq 1 ]; then order="bootstrap caller"; else order="caller bootstrap"; fi
    for label in $order; do
      if [ "$label" = bootstrap ]; then key=$ADMIN_KEY; else key=$CALLER_KEY; fi
      run "$label" "$key" "$conns" "$conc" "$pass"
    done
  done
done

asked=$(grep -c '^POST' "$WORK/mock.log" || true)
echo "== the mock provider was asked $asked time(s) (1 = every measured call was a cache hit)"
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
from collections import defaultdict
runs = [json.loads(l) for l in open(sys.argv[1])]
by = defaultdict(dict)
for r in runs:
    by[(r["connections"], r["concurrency"])].setdefault(r["pass"], {})[r["label"]] = r
print()
print("| conns | conc | bootstrap rps | caller rps | caller/bootstrap rps per pass | bootstrap p99 ms | caller p99 ms | caller/bootstrap p99 per pass | server us/req bootstrap | server us/req caller | errors |")
print("|---:|---:|---|---|---|---|---|---|---|---|---:|")
def rng(xs, f="{:.0f}"):
    return f"{f.format(min(xs))}–{f.format(max(xs))}"
for (conns, conc), passes in by.items():
    pairs = [p for _, p in sorted(passes.items()) if "bootstrap" in p and "caller" in p]
    b = [p["bootstrap"] for p in pairs]
    c = [p["caller"] for p in pairs]
    rps_ratio = [pc["rps"] / pb["rps"] for pb, pc in zip(b, c)]
    p99_ratio = [pc["latency_us"]["p99"] / pb["latency_us"]["p99"] for pb, pc in zip(b, c)]
    us = lambda rs: [r["server_cpu_us_per_req"] for r in rs if r["server_cpu_us_per_req"]]
    errors = sum(r["errors"] for r in b + c)
    print(f"| {conns} | {conc} | {rng([r['rps'] for r in b])} | {rng([r['rps'] for r in c])} | "
          f"{' '.join(f'{x:.2f}' for x in rps_ratio)} | "
          f"{rng([r['latency_us']['p99']/1000 for r in b], '{:.2f}')} | {rng([r['latency_us']['p99']/1000 for r in c], '{:.2f}')} | "
          f"{' '.join(f'{x:.2f}' for x in p99_ratio)} | {rng(us(b), '{:.1f}')} | {rng(us(c), '{:.1f}')} | {errors} |")
PY
echo
echo "raw results: $OUT/results.jsonl"
