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
    env -u KAFKA_BROKERS -u REDIS_URL -u MONGODB_URL PORT=0 PARLEY_DATA_DIR="$work/aio" \
      RUST_LOG=warn ./target/release/parley >"$work/aio.out" 2>"$work/aio.log" &
    pid=$!
    wait_listening "$work/aio.out" "$work/aio.log"
    echo "== embedded all-in-one (pid $pid)"
    "$load" --url "$url" --server-pid "$pid" --deadline-secs $((SECS * 2 + 120)) \
      accounts --concurrency "$CONCURRENCY" --secs "$SECS"
    stop_server
    ;;
  cluster)
    if scripts/cluster status >/dev/null 2>&1; then
      echo "a cluster is already running (scripts/cluster down first)" >&2
      exit 1
    fi
    scripts/infra up >/dev/null
    start_cluster "$PWD/target/release/parley" "acct$$"
    auth=$(tr -dc '0-9' <.infra/cluster/run/auth-1.pid)
    echo "== cluster through nginx, auth-svc auth-1 (pid $auth), FerretDB on $(scripts/infra backend)"
    "$load" --url "$url" --server-pid "$auth" \
      --deadline-secs $((SECS * 2 + 120)) accounts --concurrency "$CONCURRENCY" --secs "$SECS"
    scripts/cluster down >/dev/null
    ;;
  *)
    echo "unknown target $target (all-in-one, cluster)" >&2
    exit 2
    ;;
  esac
done
