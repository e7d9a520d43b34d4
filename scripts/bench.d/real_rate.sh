#!/usr/bin/env bash
# `scripts/bench real-rate`: the all-in-one on the real engines (Kafka,
# Redis, FerretDB, started with scripts/infra), loaded open-loop at each
# rate of RATES for SECS seconds by FLOOD_PAIRS 1:1 pairs. For every rate it
# prints what parley-load reports (accepted, refused by code, delivered,
# send → deliver p50/p99, Parley's CPU per message) and the CPU each engine
# spent per accepted message, read from /proc before and after the run:
# the figure that says whether the Mongo-wire store sets the pace, and
# FerretDB's commands per accepted message by kind (from its debug
# endpoint's request counters, FERRETDB_DEBUG, 127.0.0.1:27018 by default).
# BINS="a b" runs each of those Parley binaries in turn at every rate
# (A/B in one run, alternating which goes first); the default is this
# checkout's release build. BACKENDS="sqlite postgresql" does the same for
# FerretDB's storage (restarted on each by scripts/infra between runs;
# PostgreSQL's CPU, its postmaster and backends, is then counted apart),
# default: the one running. Every run gets a fresh server on a free
# loopback port with its own data dir, topic prefix, Redis prefix and
# database, so no run inherits another's backlog.
# TARGET=cluster runs a scripts/cluster (two edges behind nginx, two
# chat-svc, auth-svc, presence-svc, one process each) per run instead and
# loads it through nginx; the server CPU and RSS parley-load reports are
# then summed over the cluster's processes (nginx included).
# Bounded: fixed rates and durations, a deadline per run; stops only the
# servers it started (the engines stay up: scripts/infra down stops them).
set -euo pipefail
cd "$(dirname "$0")/../.."

RATES=${RATES:-250 500 1000}
SECS=${SECS:-8}
FLOOD_PAIRS=${FLOOD_PAIRS:-100}
cargo build --release --locked --bin parley --bin parley-load
BINS=${BINS:-$PWD/target/release/parley}
load=$PWD/target/release/parley-load
scripts/infra up >/dev/null
eval "$(scripts/infra env)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

. scripts/bench.d/server.sh

# The engines' processes as scripts/infra tracks them (none, and no CPU
# figure, for an engine it did not start).
engine_pids() {
  ferretdb=$(scripts/infra pid ferretdb || true)
  kafka=$(scripts/infra pid kafka || true)
  redis=$(scripts/infra pid redis || true)
  postgres=$(scripts/infra pid postgres || true)
}
engine_pids
BACKENDS=${BACKENDS:-$(scripts/infra backend)}
ticks() { # CPU of a process and its children (live and reaped), in clock ticks
  if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
    local own children
    own=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat")
    children=$(for c in $(cat "/proc/$1"/task/*/children 2>/dev/null); do
      awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null
    done | awk '{t += $1} END {print t + 0}')
    echo $((own + children))
  else
    echo 0
  fi
}
hz=$(getconf CLK_TCK)
FERRETDB_DEBUG=${FERRETDB_DEBUG:-127.0.0.1:27018}
commands() { # "command count" per line, from FerretDB's request counters
  curl -s --max-time 5 "http://$FERRETDB_DEBUG/debug/metrics" |
    sed -n 's/^ferretdb_client_requests_total{command="\([a-zA-Z]*\)".*} \([0-9]*\)$/\1 \2/p' || true
}

TARGET=${TARGET:-all-in-one}
case $TARGET in all-in-one | cluster) ;; *)
  echo "TARGET must be all-in-one or cluster, not $TARGET" >&2
  exit 2
  ;;
esac
if [ "$TARGET" = cluster ] && scripts/cluster status >/dev/null 2>&1; then
  echo "a cluster is already running (scripts/cluster down first)" >&2
  exit 1
fi

# Every process of the running cluster (nginx included), comma-separated.
cluster_pids() {
  local f pids=""
  for f in .infra/cluster/run/*.pid; do
    [ -f "$f" ] && pids="$pids,$(tr -dc '0-9' <"$f")"
  done
  echo "${pids#,}"
}

start_server() {
  local bin=$1 run=$2
  if [ "$TARGET" = cluster ]; then
    start_cluster "$bin" "$run"
    return 0
  fi
  PORT=0 PARLEY_DATA_DIR="$work/$run" PARLEY_WS_FRAMES_PER_SEC=1000000 \
    PARLEY_USER_SEND_LIMIT=100000000 PARLEY_MAX_SESSIONS_PER_USER=1000000 RUST_LOG=warn \
    PARLEY_TOPIC_PREFIX="$run." PARLEY_REDIS_PREFIX="$run" PARLEY_MONGODB_DATABASE="$run" \
    "$bin" >"$work/$run.out" 2>"$work/$run.log" &
  pid=$!
  wait_listening "$work/$run.out" "$work/$run.log"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $TARGET on Kafka + Redis + FerretDB"
echo "engines: ferretdb pid ${ferretdb:-?} (on $(scripts/infra backend)), kafka pid ${kafka:-?}, redis pid ${redis:-?}"
variants=""
for bin in $BINS; do
  for backend in $BACKENDS; do variants="$variants $bin@$backend"; done
done
n=0 runs=0
for rate in $RATES; do
  order=$variants
  if [ $((n % 2)) = 1 ]; then order=$(echo "$variants" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  n=$((n + 1))
  for variant in $order; do
    bin=${variant%@*} backend=${variant##*@}
    if [ "$backend" != "$(scripts/infra backend)" ]; then
      PARLEY_FERRETDB_BACKEND=$backend scripts/infra up ferretdb >/dev/null
      engine_pids
    fi
    # Numbered per run, not per rate: two variants at one rate must not
    # share topics, consumer group, Redis keys or database.
    runs=$((runs + 1))
    run=rate$$x$runs
    start_server "$bin" "$run"
    # Unmeasured: the sequencer joins its consumer group and the topics
    # are created before the measured run starts.
    "$load" --url "$url" flood --pairs 10 --rate 50 --secs 3 >/dev/null
    commands >"$work/commands.before"
    f0=$(ticks "$ferretdb") k0=$(ticks "$kafka") r0=$(ticks "$redis") p0=$(ticks "$postgres")
    echo "== $bin ($TARGET), FerretDB on $backend, at $rate msg/s"
    server_pids=$pid
    [ "$TARGET" = cluster ] && server_pids=$(cluster_pids)
    "$load" --url "$url" --server-pid "$server_pids" --results "$work/results.jsonl" \
      flood --pairs "$FLOOD_PAIRS" --rate "$rate" --secs "$SECS"
    f1=$(ticks "$ferretdb") k1=$(ticks "$kafka") r1=$(ticks "$redis") p1=$(ticks "$postgres")
    commands >"$work/commands.after"
    accepted=$(tail -1 "$work/results.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted"])')
    python3 - "$accepted" "$hz" "$((f1 - f0))" "$((k1 - k0))" "$((r1 - r0))" "$work/commands.before" "$work/commands.after" "$((p1 - p0))" "$backend" <<'EOF'
import sys
accepted, hz = int(sys.argv[1]), int(sys.argv[2])
def counts(path):
    out = {}
    for line in open(path):
        name, n = line.split()
        out[name] = int(n)
    return out
before, after = counts(sys.argv[6]), counts(sys.argv[7])
if accepted and after:
    per = {k: (after[k] - before.get(k, 0)) / accepted for k in after}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.005)
    print(f"ferretdb commands per accepted msg: {shown}")
names = ["ferretdb", "kafka", "redis"]
ticks = sys.argv[3:6]
if sys.argv[9] == "postgresql":
    names.append("postgresql")
    ticks.append(sys.argv[8])
parts = []
for name, t in zip(names, ticks):
    ms = int(t) * 1000 / hz
    per = ms / accepted if accepted else float("nan")
    parts.append(f"{name} {ms / 1000:.1f} s CPU, {per:.2f} ms/accepted msg")
print("engines: " + "; ".join(parts))
EOF
    if [ "$TARGET" = cluster ]; then
      scripts/cluster down >/dev/null
    else
      stop_server
    fi
    # The run's own topics: left behind, hundreds of partitions pile up
    # on the broker and the next runs pay for them in Kafka's CPU.
    scripts/infra topics --delete --if-exists --topic "$run[.].*" >/dev/null 2>&1 || true
  done
done
