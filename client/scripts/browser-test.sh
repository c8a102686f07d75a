#!/usr/bin/env bash
# Browser tests of the wasm SDK against the real server, in headless Chromium.
#
# Builds the server, starts client/scripts/harness.mjs (server on a free port, a
# cuttable proxy, an HTTP control endpoint for restarts), runs
# `wasm-pack test --headless --chrome client` with their URLs in the environment (read
# by the tests at compile time with option_env!), then builds the release package
# (client/scripts/build.sh) and smoke-tests it through its JS API (smoke/index.html via
# smoke.mjs and chromedriver). Stops everything on exit.
# Extra arguments go to wasm-pack test (e.g. `-- --test web`). HABLAR_SERVER_BIN skips
# building the server and uses that binary.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

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
  if [[ -n "$HARNESS_PID" ]] && kill -0 "$HARNESS_PID" 2>/dev/null; then
    kill -TERM "$HARNESS_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$HARNESS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HARNESS_PID" 2>/dev/null || true
  fi
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

: >"$WORK/harness.out"
node client/scripts/harness.mjs "$SERVER_BIN" "$WORK/server.log" \
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
  echo "browser-test: the harness did not start" >&2
  cat "$WORK/harness.err" >&2 || true
  exit 1
fi

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$READY"; }
export HABLAR_TEST_SERVER="$(field server)"
export HABLAR_TEST_CONTROL="$(field control)"
export HABLAR_TEST_PROXY="$(field proxy)"
export HABLAR_TEST_BASE="$(field base)"
echo "browser-test: server $HABLAR_TEST_SERVER, control $HABLAR_TEST_CONTROL, proxy $HABLAR_TEST_PROXY"

# The whole run shares one timeout in wasm-bindgen-test-runner (default 20 s).
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-300}"
run wasm-pack test --headless --chrome client "$@"

# The release package itself (what npm users get, wasm-opt'd), through its JS API.
run client/scripts/build.sh
# The file must exist before the loop reads it: a background job's redirection is
# made asynchronously.
: >"$WORK/smoke-server.out"
"$SERVER_BIN" --dev --bind 127.0.0.1:0 --www-dir client/scripts/smoke --pkg-dir client/pkg \
  >"$WORK/smoke-server.out" 2>"$WORK/smoke-server.log" &
SMOKE_SERVER_PID=$!
SMOKE_URL=""
for _ in $(seq 1 300); do
  SMOKE_URL="$(sed -n 's/^hablar-server listening on \(http:[^ ]*\)$/\1/p' "$WORK/smoke-server.out" || true)"
  [[ -n "$SMOKE_URL" ]] && break
  sleep 0.1
done
[[ -n "$SMOKE_URL" ]] || { echo "browser-test: smoke server did not start" >&2; exit 1; }
echo "browser-test: release package smoke test"
run node client/scripts/smoke.mjs "$SMOKE_URL/index.html"
