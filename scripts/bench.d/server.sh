# Sourced by the bench scripts: a throw-away work dir ($work) and the one
# server a script runs at a time ($pid), stopped by stop_server and on exit,
# so no run leaves a server behind.
work=$(mktemp -d)
pid=""
stop_server() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

# Waits until the server writing its stdout to $1 prints its URL, and sets
# $url to it; shows its log ($2) and fails if that takes over 60 s.
wait_listening() {
  url=""
  for _ in $(seq 1 600); do
    url=$(sed -n 's/^Parley listening on //p' "$1")
    [ -n "$url" ] && return 0
    sleep 0.1
  done
  echo "parley did not start; log:" >&2
  cat "$2" >&2
  exit 1
}

# Starts a scripts/cluster of the parley binary $1, with topic, key and
# database prefixes named $2 and the per-client limits lifted (the load
# generator is one client on purpose), and sets $url to nginx's. It is
# taken down on exit (or by `scripts/cluster down`).
start_cluster() {
  local bin=$1 run=$2
  trap 'scripts/cluster down >/dev/null 2>&1 || true; stop_server; rm -rf "$work"' EXIT
  PARLEY_CLUSTER_BIN=$bin PARLEY_WS_FRAMES_PER_SEC=1000000 \
    PARLEY_USER_SEND_LIMIT=100000000 PARLEY_MAX_SESSIONS_PER_USER=1000000 RUST_LOG=warn \
    PARLEY_TOPIC_PREFIX="$run." PARLEY_REDIS_PREFIX="$run" PARLEY_MONGODB_DATABASE="$run" \
    scripts/cluster up >"$work/$run.out" 2>&1 || {
    echo "the cluster did not start:" >&2
    tail -30 "$work/$run.out" >&2
    exit 1
  }
  url=http://127.0.0.1:${PARLEY_CLUSTER_PORT:-8080}
}
