#!/usr/bin/env bash
# How long an idle agent takes to be connected again after the relay is
# killed with -9 and started again on the same ports (BENCHMARKS.md,
# "Agent reconnect after a relay crash").
# Usage: bench/reconnect.sh [runs]   RELAY=path/to/o1-relay to try another build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release --workspace --bins -q
BIN=$PWD/target/release
RELAY_BIN=${RELAY:-$BIN/o1-relay}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
$BIN/o1-relay certs --out "$DIR/tls" --name localhost > "$DIR/certs.out"
TOKEN=$(grep '^token = ' "$DIR/certs.out" | cut -d'"' -f2)
HASH=$(grep '^sha256 = ' "$DIR/certs.out" | cut -d'"' -f2)
cat > "$DIR/relay.toml" <<TOML
[http]
listen = "127.0.0.1:3920"
[uplink]
listen = "127.0.0.1:4920"
cert = "$DIR/tls/relay.crt"
key = "$DIR/tls/relay.key"
[history]
dir = "$DIR/history"
[auth]
browsers = "open"
[[auth.token]]
name = "bench"
sha256 = "$HASH"
role = "admin"
TOML
cat > "$DIR/agent.toml" <<TOML
host = "rc-host"
state_dir = "$DIR/agent"
[relay]
address = "127.0.0.1:4920"
server_name = "localhost"
ca = "$DIR/tls/ca.crt"
token = "$TOKEN"
[metrics]
enabled = false
TOML
start() {
  : > "$DIR/relay.out"
  RUST_LOG=warn "$RELAY_BIN" --config "$DIR/relay.toml" > "$DIR/relay.out" 2> "$DIR/relay.err" &
  R=$!
  for _ in $(seq 100); do grep -q listening "$DIR/relay.out" 2>/dev/null && break; sleep 0.05; done
}
connected() { curl -s localhost:3920/api/hosts | grep -q '"host":"rc-host","agentId":"[^"]*","agentVersion":"[^"]*","connected":true'; }
start
RUST_LOG=warn $BIN/o1-agent --config "$DIR/agent.toml" 2> "$DIR/agent.err" &
for _ in $(seq 100); do connected && break; sleep 0.05; done
for run in $(seq "$RUNS"); do
  sleep 2
  kill -9 "$R"; wait "$R" 2>/dev/null || true
  start
  t0=$(date +%s.%N)
  for _ in $(seq 1000); do connected && break; sleep 0.02; done
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v r="$run" 'BEGIN { printf "reconnect run=%d seconds=%.2f\n", r, b - a }'
done
