#!/usr/bin/env bash
# Relay benchmarks (BENCHMARKS.md): idle memory per WebSocket connection,
# fan-out throughput/latency/CPU at 100 and 1,000 subscribers, ingest over
# QUIC from 1 and 50 agents, and the nginx+nchan baseline in the same run.
# Usage: bench/relay.sh [runs]   (needs: nginx-light libnginx-mod-nchan)
# BASELINE_RELAY=path/to/an/older/o1-relay: also runs it, alternating with
# this build, for same-session ratios. NCHAN=0 skips the nginx+nchan runs,
# IDLE=0 the idle-memory run; SUBS="100" and AGENTS="" choose the fan-out
# and ingest sizes. PACED="1000:100" (subscribers:messages per second,
# 20 s each; "" for none) runs the paced fan-out: one message per batch,
# as an agent at that rate sends, against nginx+nchan at the same rate,
# and against `o1-loadgen floor-server` (FLOOR=0 skips it): the least any
# WebSocket server can do for it (one `send` per subscriber per message,
# nothing else), this machine's floor for the paced latency and CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release --workspace --bins -q
BIN=target/release
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$DIR/nginx.pid" ] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null; rm -rf "$DIR"' EXIT
$BIN/o1-relay certs --out "$DIR/tls" --name localhost --name 127.0.0.1 > "$DIR/certs.out"
TOKEN=$(grep '^token = ' "$DIR/certs.out" | cut -d'"' -f2)
HASH=$(grep '^sha256 = ' "$DIR/certs.out" | cut -d'"' -f2)

start_relay() {
  cat > "$DIR/relay.toml" <<TOML
[http]
listen = "127.0.0.1:3900"
[uplink]
listen = "127.0.0.1:4900"
cert = "$DIR/tls/relay.crt"
key = "$DIR/tls/relay.key"
[websocket]
max_connections = 20000
max_connections_per_address = 20000
[history]
lines_per_source = 100
TOML
  if [ "${LEGACY_CONFIG:-0}" = 1 ] && [ "${1:-}" = "${BASELINE_RELAY:-none}" ]; then
    # A baseline from before roles and the history log: its config form.
    printf '[auth]\ntoken_sha256 = ["%s"]\n' "$HASH" >> "$DIR/relay.toml"
  else
    rm -rf "$DIR/history"
    cat >> "$DIR/relay.toml" <<TOML
dir = "$DIR/history"
[auth]
browsers = "open"
[[auth.token]]
name = "bench"
sha256 = "$HASH"
role = "admin"
TOML
  fi
  RUST_LOG=warn "${1:-$BIN/o1-relay}" --config "$DIR/relay.toml" > "$DIR/relay.out" 2> "$DIR/relay.err" &
  RELAY=$!
  for _ in $(seq 50); do grep -q listening "$DIR/relay.out" 2>/dev/null && break; sleep 0.1; done
}
stop_relay() { kill "$RELAY"; wait "$RELAY" 2>/dev/null || true; }

start_nginx() {
  cat > "$DIR/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/nginx.err warn;
events { worker_connections 20000; }
http {
  access_log off;
  server {
    listen 127.0.0.1:3901;
    location = /pub { nchan_publisher; nchan_channel_id bench; nchan_message_buffer_length 10; }
    location = /sub { nchan_subscriber websocket; nchan_channel_id bench; }
  }
}
CONF
  nginx -c "$DIR/nginx.conf"
  sleep 0.5
  NGINX_PIDS="$(cat "$DIR/nginx.pid") $(pgrep -P "$(cat "$DIR/nginx.pid")" | tr '\n' ' ')"
  NGINX_PID_ARGS=""
  for p in $NGINX_PIDS; do NGINX_PID_ARGS="$NGINX_PID_ARGS --pid $p"; done
}

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r), $(date -u +%F)"
RELAYS=("o1-relay:$BIN/o1-relay")
[ -n "${BASELINE_RELAY:-}" ] && RELAYS+=("baseline:$BASELINE_RELAY")
if [ "${IDLE:-1}" != 0 ]; then
start_relay
echo "## idle connections (o1-relay)"
$BIN/o1-loadgen --pid "$RELAY" idle --url ws://127.0.0.1:3900/api/websocket --connections 10000
stop_relay
fi

for subs in ${SUBS:-100 1000}; do
  for run in $(seq "$RUNS"); do
    for relay in "${RELAYS[@]}"; do
    start_relay "${relay#*:}"
    echo "## fanout ${relay%%:*} subscribers=$subs run=$run"
    $BIN/o1-loadgen --pid "$RELAY" fanout --url ws://127.0.0.1:3900/api/websocket --subscribers $subs \
      --messages $((2000000 / subs)) --size 200 --uplink 127.0.0.1:4900 --ca "$DIR/tls/ca.crt" --token "$TOKEN"
    stop_relay
    done
  done
  [ "${NCHAN:-1}" = 0 ] && continue
  for run in $(seq "$RUNS"); do
    start_nginx
    echo "## fanout nginx+nchan subscribers=$subs run=$run"
    # shellcheck disable=SC2086
    $BIN/o1-loadgen $NGINX_PID_ARGS fanout --url ws://127.0.0.1:3901/sub --subscribers $subs \
      --messages $((2000000 / subs)) --size 200 --nchan-publish http://127.0.0.1:3901/pub
    kill "$(cat "$DIR/nginx.pid")"; sleep 0.5
  done
done

for paced in ${PACED-1000:100}; do
  subs=${paced%%:*}; rate=${paced##*:}; msgs=$((rate * 20))
  for run in $(seq "$RUNS"); do
    for relay in "${RELAYS[@]}"; do
    start_relay "${relay#*:}"
    echo "## paced fanout ${relay%%:*} subscribers=$subs rate=$rate run=$run"
    $BIN/o1-loadgen --pid "$RELAY" fanout --url ws://127.0.0.1:3900/api/websocket --subscribers "$subs" \
      --messages "$msgs" --size 200 --rate "$rate" --uplink 127.0.0.1:4900 --ca "$DIR/tls/ca.crt" --token "$TOKEN"
    stop_relay
    done
    if [ "${FLOOR:-1}" != 0 ]; then
    $BIN/o1-loadgen floor-server --listen 127.0.0.1:3902 --subscribers "$subs" \
      --messages "$msgs" --size 200 --rate "$rate" > "$DIR/floor.out" &
    FLOOR_PID=$!
    for _ in $(seq 50); do grep -q listening "$DIR/floor.out" 2>/dev/null && break; sleep 0.1; done
    echo "## paced fanout floor subscribers=$subs rate=$rate run=$run"
    $BIN/o1-loadgen --pid "$FLOOR_PID" fanout --url ws://127.0.0.1:3902/ --subscribers "$subs" \
      --messages "$msgs" --size 200 --rate "$rate" --server-publishes
    wait "$FLOOR_PID"
    fi
    if [ "${NCHAN:-1}" != 0 ]; then
    start_nginx
    echo "## paced fanout nginx+nchan subscribers=$subs rate=$rate run=$run"
    # shellcheck disable=SC2086
    $BIN/o1-loadgen $NGINX_PID_ARGS fanout --url ws://127.0.0.1:3901/sub --subscribers "$subs" \
      --messages "$msgs" --size 200 --rate "$rate" --nchan-publish http://127.0.0.1:3901/pub
    kill "$(cat "$DIR/nginx.pid")"; sleep 0.5
    fi
  done
done

for agents in ${AGENTS:-1 50}; do
  for run in $(seq "$RUNS"); do
    for relay in "${RELAYS[@]}"; do
    start_relay "${relay#*:}"
    echo "## ingest ${relay%%:*} agents=$agents run=$run"
    $BIN/o1-loadgen --pid "$RELAY" ingest --uplink 127.0.0.1:4900 --ca "$DIR/tls/ca.crt" --token "$TOKEN" \
      --agents $agents --lines $((2000000 / agents))
    stop_relay
    done
  done
done
