#!/usr/bin/env bash
# `scripts/bench peer`: Parley (embedded all-in-one) against Centrifugo
# v6.9.1 on the same workload, with the same generator (parley-load), in one
# run, alternating which goes first from scenario to scenario:
#   flood   1:1 pairs, open-loop, at each rate of RATES for SWEEP_SECS each:
#           accepted, delivered, send → deliver p50/p99, server CPU per
#           delivered message, peak RSS
#   chat    1:1 pairs, closed-loop (a window in flight)
#   group   GROUP_MEMBERS members all online, one sends at GROUP_RATE/s:
#           send → last member
#   idle    IDLE_CONNECTIONS idle authenticated WebSockets: RSS per
#           connection, idle CPU
# Centrifugo is built from the Go module proxy into .infra/bin (once) and
# configured as a chat backend would use it: HMAC connection tokens minted by
# the generator, user-limited personal channels `personal:#<user>` that only
# their user subscribes to and any user publishes into (client publish), a
# `group` namespace, memory engine, no history, bound to 127.0.0.1.
# Every run gets a fresh server on a free loopback port (Parley with a
# throw-away data dir), so no run inherits another's memory or data.
# Before each run the 1-minute load average is read; above MAX_LOAD it waits
# up to LOAD_WAIT_SECS for it to fall, then (ON_LOAD=mark, the default)
# marks the figure with it, or (ON_LOAD=refuse) stops without a report.
# Writes $OUT/peer.md (tables), peer-sweep.csv, peer-latency.png (p50/p99 vs
# offered rate, with matplotlib from a venv in .infra/venv) and the raw
# peer-results.jsonl. NICE=19 runs builds, servers and the generator niced.
# Bounded: fixed counts and rates, a deadline per run; stops only the
# servers it started.
set -euo pipefail
cd "$(dirname "$0")/../.."

CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v6
CENTRIFUGO_VERSION=v6.9.1
RATES=${RATES:-250 500 1000 2000 4000}
SWEEP_SECS=${SWEEP_SECS:-8}
FLOOD_PAIRS=${FLOOD_PAIRS:-100}
CHAT_PAIRS=${CHAT_PAIRS:-20}
CHAT_MESSAGES=${CHAT_MESSAGES:-500}
CHAT_WINDOW=${CHAT_WINDOW:-16}
GROUP_MEMBERS=${GROUP_MEMBERS:-500}
GROUP_MESSAGES=${GROUP_MESSAGES:-300}
GROUP_RATE=${GROUP_RATE:-100}
# The hard limit on open files here is 20,000 for the generator and for the
# server alike.
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-19500}
# Longer than Centrifugo's ping interval (25 s), so its keep-alives count.
IDLE_HOLD_SECS=${IDLE_HOLD_SECS:-30}
MAX_LOAD=${MAX_LOAD:-1.5}
LOAD_WAIT_SECS=${LOAD_WAIT_SECS:-30}
ON_LOAD=${ON_LOAD:-mark}
NICE=${NICE:-0}
OUT=${OUT:-docs/bench}
SCENARIOS=${SCENARIOS:-flood chat group idle}
export PARLEY_GROUP_MAX_MEMBERS=$((GROUP_MEMBERS > 500 ? GROUP_MEMBERS : 500))

# Not for a background server: $! must be the server itself (nice execs it).
n() { nice -n "$NICE" "$@"; }

# --- builds (each skipped when already done) ---------------------------------
n cargo build --release --locked --bin parley --bin parley-load
centrifugo=$PWD/.infra/bin/centrifugo
if ! go version -m "$centrifugo" 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+$CENTRIFUGO_MODULE[[:space:]]+$CENTRIFUGO_VERSION[[:space:]]"; then
  mkdir -p .infra/bin
  GOBIN=$PWD/.infra/bin n go install "$CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION"
fi
python=.infra/venv/bin/python
if ! "$python" -c 'import matplotlib' 2>/dev/null; then
  if ! { python3 -m venv .infra/venv && n "$python" -m pip install -q matplotlib; }; then
    echo "matplotlib could not be installed: the plot is skipped" >&2
  fi
fi
"$python" -c 'import matplotlib' 2>/dev/null || python=python3

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
load=$PWD/target/release/parley-load
. scripts/bench.d/server.sh
results=$work/results.jsonl
: >"$results"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_parley() {
  local dir=$work/parley-$1
  mkdir -p "$dir"
  # The per-connection and per-user limits protect against runaway
  # clients; the load generator is one on purpose.
  PORT=0 PARLEY_DATA_DIR="$dir" PARLEY_WS_FRAMES_PER_SEC=1000000 \
    PARLEY_USER_SEND_LIMIT=100000000 PARLEY_MAX_SESSIONS_PER_USER=1000000 RUST_LOG=warn \
    nice -n "$NICE" ./target/release/parley >"$dir/stdout" 2>"$dir/log" &
  pid=$!
  wait_listening "$dir/stdout" "$dir/log"
}

start_centrifugo() {
  local dir=$work/centrifugo-$1 port
  mkdir -p "$dir" .infra/peer
  port=$(free_port)
  # The secret is per run and never leaves this machine; the generator
  # mints connection tokens with it.
  export CENTRIFUGO_HMAC_SECRET=bench-$$-$RANDOM$RANDOM
  cat >.infra/peer/config.json <<EOF
{
  "log": {"level": "warn"},
  "http_server": {"address": "127.0.0.1", "port": $port},
  "engine": {"type": "memory"},
  "usage_stats": {"disabled": true},
  "http_api": {"disabled": true},
  "health": {"enabled": true},
  "client": {"token": {"hmac_secret_key": "$CENTRIFUGO_HMAC_SECRET"}},
  "channel": {"namespaces": [
    {"name": "personal", "allow_user_limited_channels": true, "allow_publish_for_client": true},
    {"name": "group", "allow_subscribe_for_client": true, "allow_publish_for_client": true}
  ]}
}
EOF
  nice -n "$NICE" "$centrifugo" --config .infra/peer/config.json >"$dir/log" 2>&1 &
  pid=$!
  url=http://127.0.0.1:$port
  for _ in $(seq 1 300); do
    curl -fs "$url/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "centrifugo did not start; log:" >&2
  cat "$dir/log" >&2
  exit 1
}

# Waits up to LOAD_WAIT_SECS for the 1-minute load average to fall to
# MAX_LOAD; prints it.
settle() {
  local waited=0 l
  while :; do
    l=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$l" -v m="$MAX_LOAD" 'BEGIN { exit !(l <= m) }' || [ "$waited" -ge "$LOAD_WAIT_SECS" ]; then
      break
    fi
    sleep 5
    waited=$((waited + 5))
  done
  echo "$l"
}

# run SIDE SCENARIO -- parley-load args: one run on a fresh server, its
# figures appended to the results with the scenario and the load before it.
run=0
run() {
  local side=$1 scenario=$2 l part
  shift 3
  run=$((run + 1))
  l=$(settle)
  if [ "$ON_LOAD" = refuse ] && ! awk -v l="$l" -v m="$MAX_LOAD" 'BEGIN { exit !(l <= m) }'; then
    echo "refusing to report: 1-minute load average $l > $MAX_LOAD before a run" >&2
    exit 1
  fi
  if [ "$side" = parley ]; then start_parley "$run"; else start_centrifugo "$run"; fi
  part=$work/run-$run.jsonl
  echo "[$run] $side $scenario (load $l): $*"
  if ! n "$load" --target "$side" --url "$url" --server-pid "$pid" --results "$part" "$@"; then
    echo "  (run failed; its figures, if any, are kept and marked)" >&2
  fi
  stop_server
  if [ -s "$part" ]; then
    jq -c --arg s "$scenario" --argjson l "$l" --argjson order "$run" \
      '. + {scenario: $s, load1: $l, order: $order}' "$part" >>"$results"
  fi
}

# Both sides, the first one alternating from call to call.
first=parley
both() {
  local second=centrifugo
  [ "$first" = centrifugo ] && second=parley
  run "$first" "$@"
  run "$second" "$@"
  first=$second
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for scenario in $SCENARIOS; do
  case $scenario in
    flood)
      for rate in $RATES; do
        both flood -- flood --pairs "$FLOOD_PAIRS" --rate "$rate" --secs "$SWEEP_SECS"
      done
      ;;
    chat) both chat -- chat --pairs "$CHAT_PAIRS" --messages "$CHAT_MESSAGES" --window "$CHAT_WINDOW" ;;
    group)
      both group -- group --members "$GROUP_MEMBERS" --messages "$GROUP_MESSAGES" --rate "$GROUP_RATE"
      ;;
    idle) both idle -- idle --connections "$IDLE_CONNECTIONS" --hold-secs "$IDLE_HOLD_SECS" ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT"
cp "$results" "$OUT/peer-results.jsonl"
"$python" scripts/bench.d/peer_report.py "$OUT/peer-results.jsonl" "$OUT" \
  --max-load "$MAX_LOAD" --machine "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m), $(uname -r); NICE=$NICE"
cat "$OUT/peer.md"
