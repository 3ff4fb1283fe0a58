#!/usr/bin/env bash
# The dashboard in Chromium under 2,000 lines/s for DURATION seconds
# (default 600) against a release relay and agent. Needs chromium and
# `npm ci --prefix tests/browser`.
#   cargo build --release --workspace && bash bench/dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
$BIN/o1-relay certs --out "$DIR/tls" --name localhost > "$DIR/certs.out"
TOKEN=$(grep '^token = ' "$DIR/certs.out" | cut -d'"' -f2)
HASH=$(grep '^sha256 = ' "$DIR/certs.out" | cut -d'"' -f2)
cat > "$DIR/relay.toml" <<TOML
[http]
listen = "127.0.0.1:3940"
[uplink]
listen = "127.0.0.1:4940"
cert = "$DIR/tls/relay.crt"
key = "$DIR/tls/relay.key"
[history]
dir = "$DIR/history"
[auth]
browsers = "open"
[[auth.token]]
name = "bench"
sha256 = "$HASH"
role = "agent"
TOML
: > "$DIR/app.log"
cat > "$DIR/agent.toml" <<TOML
host = "bench-host"
state_dir = "$DIR/agent"
[relay]
address = "127.0.0.1:4940"
server_name = "localhost"
ca = "$DIR/tls/ca.crt"
token = "$TOKEN"
[[application]]
name = "app"
logs = ["$DIR/app.log"]
TOML
RUST_LOG=warn $BIN/o1-relay --config "$DIR/relay.toml" > "$DIR/relay.out" 2> "$DIR/relay.err" &
sleep 1
RUST_LOG=warn $BIN/o1-agent --config "$DIR/agent.toml" 2> "$DIR/agent.err" &
sleep 2
echo "# machine: $(nproc) cores, $(uname -r), $(date -u +%F), chromium $(chromium --version 2>/dev/null | awk '{print $2}')"
O1_URL=http://127.0.0.1:3940 O1_HOST=bench-host O1_LOG="$DIR/app.log" node bench/dashboard.mjs
