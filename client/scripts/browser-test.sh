#!/usr/bin/env bash
# Browser tests of the wasm SDK against the real server, in headless Chromium.
#
# Builds the server; then once per backend (embedded, then Redis: the harness starts a
# redis-server of its own) starts client/scripts/harness.mjs (server on a free port, a
# cuttable proxy, an HTTP control endpoint for restarts), runs
# `wasm-pack test --headless --chrome client` with their URLs in the environment (read
# by the tests at compile time with option_env!, so each run rebuilds the tests) and
# stops the harness; then builds the release package (client/scripts/build.sh) and
# smoke-tests it through its JS API (smoke/index.html via smoke.mjs and chromedriver).
# Stops everything on exit.
# Extra arguments go to wasm-pack test (e.g. `-- --test web`). HABLAR_SERVER_BIN skips
# building the server and uses that binary. HABLAR_TEST_BACKENDS="memory" (or "redis")
# runs the suite on one backend only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

BACKENDS=(${HABLAR_TEST_BACKENDS:-memory redis})
for tool in node wasm-pack chromedriver; do
  command -v "$tool" >/dev/null || { echo "browser-test: $tool is not installed" >&2; exit 1; }
done

# HABLAR_SERVER_BIN: use this server binary instead of building target/debug's.
SERVER_BIN="${HABLAR_SERVER_BIN:-}"
if [[ -z "$SERVER_BIN" ]]; then
  cargo build -q -p hablar-server --bin hablar-server
  SERVER_BIN="$ROOT/target/debug/hablar-server"
fi

WORK="$(mktemp -d -t hablar-browser-test.XXXXXX)"
HARNESS_PID=""
SMOKE_SERVER_PID=""
CHILD_PID=""
# Runs a long step in its own process group and waits for it, so that a signal to this
# script is handled at once (bash defers traps while a foreground child runs) and the
# whole step (wasm-pack, cargo, the test runner, chromedriver) can be stopped.
run() {
  setsid "$@" &
  CHILD_PID=$!
  local status=0
  wait "$CHILD_PID" || status=$?
  CHILD_PID=""
  return "$status"
}
# Stops the harness (it stops its server and its redis-server) and waits for it.
stop_harness() {
  if [[ -n "$HARNESS_PID" ]] && kill -0 "$HARNESS_PID" 2>/dev/null; then
    kill -TERM "$HARNESS_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$HARNESS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HARNESS_PID" 2>/dev/null || true
  fi
  HARNESS_PID=""
}
cleanup() {
  local status=$?
  if [[ -n "$CHILD_PID" ]]; then
    kill -TERM -- "-$CHILD_PID" 2>/dev/null || true
    wait "$CHILD_PID" 2>/dev/null || true
  fi
  if [[ -n "$SMOKE_SERVER_PID" ]]; then
    kill -TERM "$SMOKE_SERVER_PID" 2>/dev/null || true
    wait "$SMOKE_SERVER_PID" 2>/dev/null || true
  fi
  stop_harness
  if [[ $status -ne 0 && -s "$WORK/server.log" ]]; then
    echo "--- server log (last 40 lines) ---" >&2
    tail -n 40 "$WORK/server.log" >&2
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The whole run shares one timeout in wasm-bindgen-test-runner (default 20 s).
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-300}"

for backend in "${BACKENDS[@]}"; do
  started=$SECONDS
  : >"$WORK/harness.out"
  : >"$WORK/server.log"
  node client/scripts/harness.mjs "$SERVER_BIN" "$WORK/server.log" "$backend" \
    >"$WORK/harness.out" 2>"$WORK/harness.err" &
  HARNESS_PID=$!

  READY=""
  for _ in $(seq 1 300); do
    READY="$(grep -m1 '^harness ready' "$WORK/harness.out" || true)"
    [[ -n "$READY" ]] && break
    kill -0 "$HARNESS_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z "$READY" ]]; then
    echo "browser-test: the harness did not start ($backend)" >&2
    cat "$WORK/harness.err" >&2 || true
    exit 1
  fi

  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$READY"; }
  export HABLAR_TEST_SERVER="$(field server)"
  export HABLAR_TEST_CONTROL="$(field control)"
  export HABLAR_TEST_PROXY="$(field proxy)"
  export HABLAR_TEST_BASE="$(field base)"
  echo "browser-test ($backend): server $HABLAR_TEST_SERVER, control $HABLAR_TEST_CONTROL, proxy $HABLAR_TEST_PROXY"

  run wasm-pack test --headless --chrome client "$@"
  stop_harness
  echo "browser-test ($backend): passed in $((SECONDS - started)) s"
done

# The release package itself (what npm users get, wasm-opt'd), through its JS API.
run client/scripts/build.sh
source scripts/server-lib.sh
start_hablar_server "$WORK/smoke-server.out" "$WORK/smoke-server.log" \
  "$SERVER_BIN" --dev --www-dir client/scripts/smoke --pkg-dir client/pkg
SMOKE_SERVER_PID=$SERVER_PID
echo "browser-test: release package smoke test"
run node client/scripts/smoke.mjs "http://$SERVER_ADDR/index.html"
