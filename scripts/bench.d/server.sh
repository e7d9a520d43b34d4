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
