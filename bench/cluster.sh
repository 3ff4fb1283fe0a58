#!/usr/bin/env bash
# The cost of the NATS hop (BENCHMARKS.md, "Several relays on NATS"):
# fan-out from one publisher (an agent's QUIC uplink) to SUBS WebSocket
# subscribers, on one relay alone (its disk log) and on three relays
# sharing a nats-server -js (subscribers spread evenly over the three,
# the publisher on the first). Saturated (batches of 50) and paced
# (PACED messages/s, one per batch). Prints delivered/s, latency and CPU
# per delivered message: the relays' (summed) and nats-server's.
# Usage: bench/cluster.sh [runs]   (needs: nats-server)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SUBS=${SUBS:-99}
MESSAGES=${MESSAGES:-20000}
PACED=${PACED:-500}
cargo build --release --workspace --bins -q
BIN=target/release
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
$BIN/o1-relay certs --out "$DIR/tls" --name localhost --name 127.0.0.1 > "$DIR/certs.out"
TOKEN=$(grep '^token = ' "$DIR/certs.out" | cut -d'"' -f2)
HASH=$(grep '^sha256 = ' "$DIR/certs.out" | cut -d'"' -f2)

# relay_config N [cluster]: relay N on ports 39N0 (HTTP) and 49N0 (QUIC).
start_relay() {
  local n=$1 cluster=${2:-}
  cat > "$DIR/relay$n.toml" <<TOML
[http]
listen = "127.0.0.1:39${n}0"
[uplink]
listen = "127.0.0.1:49${n}0"
cert = "$DIR/tls/relay.crt"
key = "$DIR/tls/relay.key"
[websocket]
max_connections = 20000
max_connections_per_address = 20000
[history]
lines_per_source = 100
dir = "$DIR/history$n"
[auth]
browsers = "open"
[[auth.token]]
name = "bench"
sha256 = "$HASH"
role = "admin"
TOML
  if [ -n "$cluster" ]; then
    printf '[cluster]\nnats_url = "nats://127.0.0.1:4299"\nname = "r%s"\n' "$n" >> "$DIR/relay$n.toml"
  fi
  rm -rf "$DIR/history$n"
  RUST_LOG=warn $BIN/o1-relay --config "$DIR/relay$n.toml" > "$DIR/relay$n.out" 2> "$DIR/relay$n.err" &
  PIDS+=($!)
  for _ in $(seq 50); do grep -q listening "$DIR/relay$n.out" 2>/dev/null && break; sleep 0.1; done
  if [ -n "$cluster" ]; then
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:39${n}0/api/websocket/health" > /dev/null && break
      sleep 0.1
    done
  fi
}

start_nats() {
  rm -rf "$DIR/nats"
  nats-server -js -a 127.0.0.1 -p 4299 -sd "$DIR/nats" > "$DIR/nats.log" 2>&1 &
  NATS=$!
  sleep 0.5
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run LABEL URLS MESSAGES [--rate R]
run() {
  local label=$1 urls=$2 messages=$3; shift 3
  local nats_before=0 before=()
  [ -n "${NATS:-}" ] && nats_before=$(ticks "$NATS")
  for p in "${PIDS[@]}"; do before+=("$(ticks "$p")"); done
  local out
  out=$($BIN/o1-loadgen $(printf -- '--pid %s ' "${PIDS[@]}") fanout --url "$urls" \
    --subscribers "$SUBS" --messages "$messages" --size 200 \
    --uplink 127.0.0.1:4910 --ca "$DIR/tls/ca.crt" --token "$TOKEN" "$@")
  local nats_cpu="-"
  if [ -n "${NATS:-}" ]; then
    local delivered
    delivered=$(sed -E 's/.* delivered=([0-9]+)\/.*/\1/' <<< "$out")
    nats_cpu=$(awk -v t=$(( $(ticks "$NATS") - nats_before )) -v d="$delivered" 'BEGIN { printf "%.2f", t / 100 / d * 1e6 }')
  fi
  local each="" i=0
  for p in "${PIDS[@]}"; do
    each+="$(awk -v t=$(( $(ticks "$p") - before[i] )) 'BEGIN { printf "%.2f", t / 100 }')s,"
    i=$((i + 1))
  done
  echo "$label $out nats_cpu_per_delivered=${nats_cpu}us relay_cpu_each=${each%,}"
}

for r in $(seq "$RUNS"); do
  echo "# run $r"
  PIDS=(); NATS=
  start_relay 1
  run "single saturated" "ws://127.0.0.1:3910/api/websocket" "$MESSAGES"
  run "single paced" "ws://127.0.0.1:3910/api/websocket" $((PACED * 10)) --rate "$PACED"
  kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true

  PIDS=()
  start_nats
  for n in 1 2 3; do start_relay "$n" cluster; done
  URLS="ws://127.0.0.1:3910/api/websocket,ws://127.0.0.1:3920/api/websocket,ws://127.0.0.1:3930/api/websocket"
  run "cluster3 saturated" "$URLS" "$MESSAGES"
  run "cluster3 paced" "$URLS" $((PACED * 10)) --rate "$PACED"
  kill "${PIDS[@]}" "$NATS"; wait "${PIDS[@]}" "$NATS" 2>/dev/null || true
done
