#!/usr/bin/env bash
# Agent benchmarks (BENCHMARKS.md), each against its baseline in the same run:
#  1. metrics cost: o1-agent (3 applications, 1 s interval) vs collectd
#     (Interval 1; cpu, memory, df, interface), CPU time and RSS over 60 s;
#  2. file → relay throughput of 100-byte lines vs rsyslog imfile → TCP;
#  3. agent CPU and RSS while idle-tailing 100 files;
#  4. journald entries (journalctl child) vs the same lines from a file;
#  5. file → WebSocket subscriber latency of realistic lines written one by
#     one at a fixed rate (LATENCY_RATES, default "2000"), each agent build
#     alternating with BASELINE_AGENT when given.
# Usage: bench/agent.sh [seconds] [lines]   (needs: collectd-core rsyslog)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_MEASURE=${1:-60}
LINES=${2:-2000000}
# Which sections to run (default all): e.g. SECTIONS="1" bench/agent.sh 60
SECTIONS=${SECTIONS:-"1 2 3 4 5"}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
true
BIN=$PWD/target/release
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

# CPU time of a process in seconds, from the nanosecond counters of all its
# threads (/proc/PID/task/*/schedstat): /proc/PID/stat counts 10 ms ticks,
# too coarse for a daemon that uses well under 1 % of a core.
cpu_seconds() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {printf "%.6f\n", s/1e9}'; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

$BIN/o1-relay certs --out "$DIR/tls" --name localhost > "$DIR/certs.out"
TOKEN=$(grep '^token = ' "$DIR/certs.out" | cut -d'"' -f2)
HASH=$(grep '^sha256 = ' "$DIR/certs.out" | cut -d'"' -f2)
cat > "$DIR/relay.toml" <<TOML
[http]
listen = "127.0.0.1:3910"
[uplink]
listen = "127.0.0.1:4910"
cert = "$DIR/tls/relay.crt"
key = "$DIR/tls/relay.key"
[auth]
browsers = "open"
[[auth.token]]
name = "bench"
sha256 = "$HASH"
role = "admin"
[history]
lines_per_source = 100
dir = "$DIR/history"
TOML
RUST_LOG=warn $BIN/o1-relay --config "$DIR/relay.toml" > "$DIR/relay.out" 2> "$DIR/relay.err" &
PIDS+=($!)
sleep 0.5

agent_config() { # $1 state dir, $2 extra
  cat <<TOML
host = "bench"
state_dir = "$1"
[relay]
address = "127.0.0.1:4910"
server_name = "localhost"
ca = "$DIR/tls/ca.crt"
token = "$TOKEN"
$2
TOML
}

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(uname -r), $(date -u +%F)"

if want 1; then
echo "## 1. metrics cost over ${SECONDS_TO_MEASURE}s"
for i in 1 2 3; do sh -c 'sleep 100000; :' "o1-bench-app-$i" & PIDS+=($!); done
agent_config "$DIR/state-metrics" "
[logs]
start_at = \"end\"
[[application]]
name = \"app1\"
cmdline = \"o1-bench-app-1\"
data_dir = \"/tmp\"
[[application]]
name = \"app2\"
cmdline = \"o1-bench-app-2\"
[[application]]
name = \"app3\"
cmdline = \"o1-bench-app-3\"
" > "$DIR/agent-metrics.toml"
RUST_LOG=warn $BIN/o1-agent --config "$DIR/agent-metrics.toml" 2> "$DIR/agent-metrics.err" &
AGENT=$!; PIDS+=($AGENT)
cat > "$DIR/collectd.conf" <<CONF
Interval 1
FQDNLookup false
BaseDir "$DIR/collectd"
PIDFile "$DIR/collectd.pid"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin df
LoadPlugin interface
<Plugin df>
  MountPoint "/"
</Plugin>
CONF
mkdir -p "$DIR/collectd"
collectd -f -C "$DIR/collectd.conf" > "$DIR/collectd.log" 2>&1 &
COLLECTD=$!; PIDS+=($COLLECTD)
sleep 3
a0=$(cpu_seconds $AGENT); c0=$(cpu_seconds $COLLECTD)
sleep "$SECONDS_TO_MEASURE"
a1=$(cpu_seconds $AGENT); c1=$(cpu_seconds $COLLECTD)
awk -v a0="$a0" -v a1="$a1" -v c0="$c0" -v c1="$c1" -v s="$SECONDS_TO_MEASURE" -v ar="$(rss_kib $AGENT)" -v cr="$(rss_kib $COLLECTD)" \
  'BEGIN { printf "o1-agent cpu=%.4f%% of one core rss=%.1fMiB | collectd cpu=%.4f%% rss=%.1fMiB | ratio=%.2f\n", (a1-a0)/s*100, ar/1024, (c1-c0)/s*100, cr/1024, ((a1-a0)/((c1-c0)>0?(c1-c0):0.000001)) }'
kill $AGENT $COLLECTD; wait $AGENT $COLLECTD 2>/dev/null || true
fi

if want 2; then
echo "## 2. file -> relay, $LINES lines of 100 bytes"
python3 - "$DIR/big.log" "$LINES" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
line = "x" * 85
with open(path, "w") as f:
    for i in range(n):
        f.write(f"{i:013d} {line}\n")
PY
SIZE=$(stat -c %s "$DIR/big.log")
processed() { curl -s http://127.0.0.1:3910/api/websocket/stats | python3 -c 'import sys,json; print(json.load(sys.stdin)["batcherStats"]["messagesProcessed"])'; }
# One run of an agent binary ($2) labelled $1 over the whole file.
o1_run() {
  local label=$1 bin=$2 run=$3
  base=$(processed)
  agent_config "$DIR/state-tail-$label-$run" "
[metrics]
enabled = false
[logs]
start_at = \"beginning\"
[[application]]
name = \"big\"
logs = [\"$DIR/big.log\"]
" > "$DIR/agent-tail.toml"
  start=$(date +%s.%N)
  RUST_LOG=warn $bin --config "$DIR/agent-tail.toml" 2> "$DIR/agent-tail.err" &
  AGENT=$!
  while [ "$(( $(processed) - base ))" -lt "$LINES" ]; do sleep 0.05; done
  end=$(date +%s.%N)
  acpu=$(cpu_seconds $AGENT)
  kill $AGENT; wait $AGENT 2>/dev/null || true
  awk -v s="$start" -v e="$end" -v n="$LINES" -v b="$SIZE" -v c="$acpu" 'BEGIN { t=e-s; printf "%s run=%d lines/s=%.0f MiB/s=%.1f seconds=%.2f agent_cpu=%.2fs\n", "'"$label"'", '"$run"', n/t, b/t/1048576, t, c }'
}
# BASELINE_AGENT=path/to/an/older/o1-agent: runs it too, alternating, for
# a same-session ratio.
for run in 1 2 3; do
  o1_run o1 "$BIN/o1-agent" "$run"
  if [ -n "${BASELINE_AGENT:-}" ]; then o1_run baseline "$BASELINE_AGENT" "$run"; fi
done
if ! command -v rsyslogd >/dev/null 2>&1; then
  echo "rsyslogd not installed: rsyslog baseline skipped"
else
# rsyslog baseline: imfile -> omfwd TCP -> a counting sink.
for run in 1 2 3; do
  python3 - "$DIR/sink.port" "$LINES" > "$DIR/sink.out" <<'PY' &
import socket, sys, time
port_file, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
open(port_file, "w").write(str(s.getsockname()[1]))
c, _ = s.accept(); count = 0; start = None
while count < n:
    data = c.recv(1 << 20)
    if not data: break
    if start is None: start = time.time()
    count += data.count(b"\n")
print(count, time.time())
PY
  SINK=$!
  while [ ! -s "$DIR/sink.port" ]; do sleep 0.05; done
  mkdir -p "$DIR/rsyslog-$run"
  cat > "$DIR/rsyslog.conf" <<CONF
global(workDirectory="$DIR/rsyslog-$run")
module(load="imfile")
input(type="imfile" File="$DIR/big.log" Tag="big" ReadMode="0")
action(type="omfwd" Target="127.0.0.1" Port="$(cat "$DIR/sink.port")" Protocol="tcp" queue.type="LinkedList" queue.size="200000")
CONF
  start=$(date +%s.%N)
  rsyslogd -n -f "$DIR/rsyslog.conf" -i "$DIR/rsyslog.pid" 2> "$DIR/rsyslog.err" &
  RS=$!
  wait $SINK || true
  end=$(date +%s.%N)
  got=$(awk '{print $1}' "$DIR/sink.out")
  rcpu=$(cpu_seconds $RS 2>/dev/null || echo 0)
  kill $RS; wait $RS 2>/dev/null || true
  rm -f "$DIR/sink.port"
  awk -v s="$start" -v e="$end" -v n="$got" -v b="$SIZE" -v total="$LINES" -v c="$rcpu" 'BEGIN { t=e-s; printf "rsyslog run=%d lines/s=%.0f MiB/s=%.1f seconds=%.2f delivered=%d/%d rsyslog_cpu=%.2fs\n", '"$run"', n/t, b/t/1048576, t, n, total, c }'
done

fi

fi

if want 3; then
echo "## 3. idle-tailing 100 files for ${SECONDS_TO_MEASURE}s"
mkdir -p "$DIR/many"
for i in $(seq -w 1 100); do echo "start" > "$DIR/many/f$i.log"; done
agent_config "$DIR/state-idle" "
[metrics]
enabled = false
[[application]]
name = \"many\"
logs = [\"$DIR/many/*.log\"]
" > "$DIR/agent-idle.toml"
RUST_LOG=warn $BIN/o1-agent --config "$DIR/agent-idle.toml" 2> "$DIR/agent-idle.err" &
AGENT=$!; PIDS+=($AGENT)
sleep 3
a0=$(cpu_seconds $AGENT)
sleep "$SECONDS_TO_MEASURE"
a1=$(cpu_seconds $AGENT)
awk -v a0="$a0" -v a1="$a1" -v s="$SECONDS_TO_MEASURE" -v r="$(rss_kib $AGENT)" 'BEGIN { printf "o1-agent idle 100 files cpu=%.4f%% of one core rss=%.1fMiB\n", (a1-a0)/s*100, r/1024 }'
fi

if want 4; then
N=${JOURNAL_ENTRIES:-200000}
echo "## 4. journald entries vs the same lines from a file, $N each"
# Realistic lines: a timestamp, a level, a request (about 100 bytes).
python3 - "$DIR" "$N" <<'PY'
import sys, struct
d, n = sys.argv[1], int(sys.argv[2])
levels = ["INFO", "INFO", "INFO", "WARN", "ERROR"]
t0 = 1_764_000_000_000_000
with open(f"{d}/lines.log", "w") as text, open(f"{d}/entries.export", "wb") as export:
    for i in range(n):
        level = levels[i % 5]
        line = f"2026-11-28T14:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z {level} GET /api/v1/items/{i} 200 3.{i % 10}ms user=alice req={i:08x}"
        text.write(line + "\n")
        prio = {"INFO": 6, "WARN": 4, "ERROR": 3}[level]
        export.write(f"__REALTIME_TIMESTAMP={t0 + i}\n__MONOTONIC_TIMESTAMP={i + 1}\n_BOOT_ID=0123456789abcdef0123456789abcdef\nMESSAGE={line}\nPRIORITY={prio}\n_SYSTEMD_UNIT=bench.service\n\n".encode())
PY
REMOTE=/lib/systemd/systemd-journal-remote
[ -x $REMOTE ] || REMOTE=/usr/lib/systemd/systemd-journal-remote
mkdir -p "$DIR/journal"
$REMOTE --output="$DIR/journal/remote.journal" "$DIR/entries.export" 2>/dev/null
processed4() { curl -s http://127.0.0.1:3910/api/websocket/stats | python3 -c 'import sys,json; print(json.load(sys.stdin)["batcherStats"]["messagesProcessed"])'; }
source_run() { # $1 label, $2 run, $3 application config
  base=$(processed4)
  agent_config "$DIR/state-src-$1-$2" "
[metrics]
enabled = false
[logs]
start_at = \"beginning\"
$3" > "$DIR/agent-src.toml"
  start=$(date +%s.%N)
  RUST_LOG=warn $BIN/o1-agent --config "$DIR/agent-src.toml" 2> "$DIR/agent-src.err" &
  AGENT=$!
  while [ "$(( $(processed4) - base ))" -lt "$N" ]; do sleep 0.05; done
  end=$(date +%s.%N)
  acpu=$(cpu_seconds $AGENT)
  jcpu=0
  for child in $(pgrep -P $AGENT -x journalctl || true); do jcpu=$(cpu_seconds "$child"); done
  kill $AGENT; wait $AGENT 2>/dev/null || true
  awk -v s="$start" -v e="$end" -v n="$N" -v a="$acpu" -v j="$jcpu" 'BEGIN { t=e-s; printf "%s run=%d entries/s=%.0f seconds=%.2f agent_cpu=%.2fs journalctl_cpu=%.2fs cpu_per_entry_us=%.2f\n", "'"$1"'", '"$2"', n/t, t, a, j, (a+j)/n*1e6 }'
}
for run in 1 2 3; do
  source_run journald "$run" "[[application]]
name = \"bench\"
journal = { units = [\"bench.service\"], directory = \"$DIR/journal\" }"
  source_run file "$run" "[[application]]
name = \"bench\"
logs = [\"$DIR/lines.log\"]"
done
fi

if want 5; then
echo "## 5. file -> subscriber latency, lines written one by one"
hosts_has() { curl -s http://127.0.0.1:3910/api/hosts | grep -q "\"host\":\"$1\""; }
latency_run() { # $1 label, $2 agent binary, $3 run, $4 rate
  local log="$DIR/latency-$1-$3-$4.log"
  : > "$log"
  agent_config "$DIR/state-lat-$1-$3-$4" "
[metrics]
enabled = false
[logs]
start_at = \"end\"
[[application]]
name = \"api\"
logs = [\"$log\"]
" | sed "s/^host = \"bench\"/host = \"lat-$1-$3-$4\"/" > "$DIR/agent-lat.toml"
  RUST_LOG=warn $2 --config "$DIR/agent-lat.toml" 2> "$DIR/agent-lat.err" &
  AGENT=$!
  for _ in $(seq 100); do hosts_has "lat-$1-$3-$4" && break; sleep 0.1; done
  sleep 1
  echo -n "$1 run=$3 "
  $BIN/o1-loadgen file-latency --url ws://127.0.0.1:3910/api/websocket --file "$log" \
    --host "lat-$1-$3-$4" --rate "$4" --seconds 10
  kill $AGENT; wait $AGENT 2>/dev/null || true
}
for rate in ${LATENCY_RATES:-2000}; do
  for run in 1 2 3; do
    latency_run o1 "$BIN/o1-agent" "$run" "$rate"
    if [ -n "${BASELINE_AGENT:-}" ]; then latency_run baseline "$BASELINE_AGENT" "$run" "$rate"; fi
  done
done
fi
