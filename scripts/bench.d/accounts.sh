#!/usr/bin/env bash
# `scripts/bench accounts`: a flood of registrations, then of logins
# (parley-load accounts: CONCURRENCY clients, SECS seconds each, closed
# loop), against the embedded all-in-one and then against auth-svc on its
# own in a scripts/cluster (real engines, through nginx). Prints requests/s,
# answers by status, p50/p99 and the CPU and peak RSS of the process that
# hashes the passwords: the all-in-one, then the cluster's auth-1.
# TARGETS="all-in-one" (or "cluster") runs one of the two.
# Bounded: fixed durations and a deadline per run; stops what it started
# (the engines stay up: scripts/infra down stops them).
set -euo pipefail
cd "$(dirname "$0")/../.."

CONCURRENCY=${CONCURRENCY:-64}
SECS=${SECS:-10}
TARGETS=${TARGETS:-all-in-one cluster}
cargo build --release --locked --bin parley --bin parley-load
load=$PWD/target/release/parley-load
. scripts/bench.d/server.sh

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $CONCURRENCY clients, $SECS s per phase"
for target in $TARGETS; do
  case $target in
  all-in-one)
    (
      unset KAFKA_BROKERS REDIS_URL MONGODB_URL
      PORT=0 PARLEY_DATA_DIR="$work/aio" RUST_LOG=warn ./target/release/parley >"$work/aio.out" 2>"$work/aio.log" &
      pid=$!
      trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
      url=""
      for _ in $(seq 1 300); do
        url=$(sed -n 's/^Parley listening on //p' "$work/aio.out")
        [ -n "$url" ] && break
        sleep 0.1
      done
      [ -n "$url" ] || { echo "parley did not start:" >&2; cat "$work/aio.log" >&2; exit 1; }
      echo "== embedded all-in-one (pid $pid)"
      "$load" --url "$url" --server-pid "$pid" --deadline-secs $((SECS * 2 + 120)) \
        accounts --concurrency "$CONCURRENCY" --secs "$SECS"
    )
    ;;
  cluster)
    if scripts/cluster status >/dev/null 2>&1; then
      echo "a cluster is already running (scripts/cluster down first)" >&2
      exit 1
    fi
    scripts/infra up >/dev/null
    run=acct$$
    trap 'scripts/cluster down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    PARLEY_CLUSTER_BIN=$PWD/target/release/parley RUST_LOG=warn \
      PARLEY_TOPIC_PREFIX="$run." PARLEY_REDIS_PREFIX="$run" PARLEY_MONGODB_DATABASE="$run" \
      scripts/cluster up >"$work/cluster.out" 2>&1 || {
      echo "the cluster did not start:" >&2
      tail -30 "$work/cluster.out" >&2
      exit 1
    }
    auth=$(tr -dc '0-9' <.infra/cluster/run/auth-1.pid)
    echo "== cluster through nginx, auth-svc auth-1 (pid $auth), FerretDB on $(scripts/infra backend)"
    "$load" --url "http://127.0.0.1:${PARLEY_CLUSTER_PORT:-8080}" --server-pid "$auth" \
      --deadline-secs $((SECS * 2 + 120)) accounts --concurrency "$CONCURRENCY" --secs "$SECS"
    scripts/cluster down >/dev/null
    ;;
  *)
    echo "unknown target $target (all-in-one, cluster)" >&2
    exit 2
    ;;
  esac
done
