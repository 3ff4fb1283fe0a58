#!/usr/bin/env bash
# The cost of the relay's history log on disk: ingest throughput and relay
# CPU with `history.persist = true` against `false` (memory only), same
# binary, same session, alternating; then the replay speed of a `since`
# subscriber reading the whole log back from disk.
#
#   cargo build --release --workspace && bash bench/history.sh
#   RUNS=3 LINES=300000 BATCHES="50 1000" bash bench/history.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
RUNS=${RUNS:-3}
LINES=${LINES:-300000}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
$BIN/o1-relay certs --out "$DIR/tls" --name localhost > "$DIR/certs.out"
TOKEN=$(grep '^token = ' "$DIR/certs.out" | cut -d'"' -f2)
HASH=$(grep '^sha256 = ' "$DIR/certs.out" | cut -d'"' -f2)

start_relay() { # $1: persist (true|false)
  rm -rf "$DIR/history"
  cat > "$DIR/relay.toml" <<TOML
[http]
listen = "127.0.0.1:3930"
[uplink]
listen = "127.0.0.1:4930"
cert = "$DIR/tls/relay.crt"
key = "$DIR/tls/relay.key"
[history]
persist = $1
dir = "$DIR/history"
lines_per_source = 100
[websocket]
queue_messages = 8192
[auth]
browsers = "open"
[[auth.token]]
name = "bench"
sha256 = "$HASH"
role = "admin"
TOML
  : > "$DIR/relay.out"
  RUST_LOG=warn $BIN/o1-relay --config "$DIR/relay.toml" > "$DIR/relay.out" 2> "$DIR/relay.err" &
  RELAY=$!
  for _ in $(seq 50); do grep -q listening "$DIR/relay.out" 2>/dev/null && break; sleep 0.1; done
}
stop_relay() { kill "$RELAY"; wait "$RELAY" 2>/dev/null || true; }

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r), $(date -u +%F)"
for batch in ${BATCHES:-50 1000}; do
  for run in $(seq "$RUNS"); do
    for persist in true false; do
      start_relay $persist
      echo "## ingest persist=$persist batch=$batch run=$run"
      $BIN/o1-loadgen --pid "$RELAY" ingest --uplink 127.0.0.1:4930 --ca "$DIR/tls/ca.crt" --token "$TOKEN" \
        --agents 1 --lines "$LINES" --batch "$batch"
      [ "$persist" = true ] && echo "history on disk: $(du -sh "$DIR/history" | cut -f1)"
      stop_relay
    done
  done
done

for run in $(seq "$RUNS"); do
  start_relay true
  $BIN/o1-loadgen --pid "$RELAY" ingest --uplink 127.0.0.1:4930 --ca "$DIR/tls/ca.crt" --token "$TOKEN" \
    --agents 1 --lines "$LINES" --batch 1000 > /dev/null
  echo "## resume from disk run=$run"
  $BIN/o1-loadgen --pid "$RELAY" resume --url ws://127.0.0.1:3930/api/websocket --lines "$LINES"
  stop_relay
done
