#!/usr/bin/env bash
# Checks the running relay against the OpenAPI document it serves
# (`GET /api/openapi.json`) with schemathesis: every documented operation,
# generated valid and invalid requests, every response checked against the
# document (status codes, content types, bodies, headers), no 5xx. Two
# passes: as an admin (`auth.browsers = "token"`), and with no token at
# all (every protected operation must answer its documented 401).
#
# Needs `st` (schemathesis, pinned by .ci/run) on PATH or in $ST, and the
# debug binaries (`cargo build --workspace --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
ST=${ST:-st}
BIN=${BIN:-target/debug}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

"$BIN/o1-relay" token create --role admin --name schemathesis > "$DIR/token.txt"
TOKEN=$(grep '^token: ' "$DIR/token.txt" | cut -d' ' -f2)
HASH=$(grep '^sha256 = ' "$DIR/token.txt" | cut -d'"' -f2)
cat > "$DIR/relay.toml" <<TOML
[http]
listen = "127.0.0.1:0"
[auth]
browsers = "token"
failures_per_minute = 100000
[[auth.token]]
name = "schemathesis"
sha256 = "$HASH"
role = "admin"
[deployments]
max_active = 100000
[history]
dir = "$DIR/history"
TOML
"$BIN/o1-relay" --config "$DIR/relay.toml" serve --no-uplink > "$DIR/relay.out" 2> "$DIR/relay.err" &
for _ in $(seq 100); do grep -q listening "$DIR/relay.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(grep -o 'http=[^ ]*' "$DIR/relay.out" | cut -d= -f2)
[ -n "$ADDR" ] || { cat "$DIR/relay.err"; echo "relay did not start" >&2; exit 1; }
URL="http://$ADDR/api/openapi.json"

echo "== schemathesis as admin: $URL"
"$ST" run "$URL" --checks all --max-examples "${MAX_EXAMPLES:-100}" \
  -H "Authorization: Bearer $TOKEN" --no-color
echo "== schemathesis without a token"
"$ST" run "$URL" --checks all --max-examples 20 --no-color \
  --exclude-checks ignored_auth,positive_data_acceptance
# The relay served every request and is still up.
curl -fsS "http://$ADDR/api/websocket/health" > /dev/null
echo "openapi-check: the relay answered as its document says"
