#!/usr/bin/env bash
# Browser end-to-end tests: the demo page (www/) on hablar-server --dev, and the SDK
# against the Django Channels base-layer backend, in Debian's headless Chromium
# (playwright-core), with node's test runner. Screenshots: test-output/e2e/*.png.
#
#   tests/e2e/run.sh
#
# Builds the npm package (client/scripts/build.sh: wasm-pack --target web --release, then
# wasm-opt -Oz, as a frontend gets it) when the SDK's sources are newer than it, and the
# debug server binary; prepares the Django backend;
# starts hablar-server on a free port; runs `node --test tests/e2e/`; stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

tmp=$(mktemp -d /tmp/hablar-e2e.XXXXXX)
cleanup() {
  local pidfile
  for pidfile in "$tmp"/*.pid; do
    [[ -f $pidfile ]] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf 'e2e: %s\n' "$*"; }

# playwright-core (drives Debian's Chromium) and the rest: scripts/setup.sh installs them.
if [[ ! -d node_modules/playwright-core || ! -x /usr/bin/chromium ]] || ! command -v redis-server >/dev/null; then
  scripts/setup.sh
fi

pkg=client/pkg/hablar_client_bg.wasm
if [[ ! -f $pkg ]] || [[ -n $(find client/src client/Cargo.toml protocol/src protocol/Cargo.toml Cargo.toml Cargo.lock client/scripts/build.sh -newer "$pkg" -print -quit) ]]; then
  say "building the npm package (client/scripts/build.sh)"
  client/scripts/build.sh
fi
# HABLAR_SERVER_BIN: use this server binary (the tests' helpers read it too) instead of
# building target/debug's.
if [[ -z ${HABLAR_SERVER_BIN:-} ]]; then
  say "building the server (debug)"
  cargo build --quiet -p hablar-server
fi

say "preparing the Django Channels backend"
export HABLAR_DJANGO_DB="$tmp/django.sqlite3"
tests/django/setup.sh

# The server the page tests share. The restart test kills it and starts another on the
# same port, writing that one's pid to the same file, so the trap stops the right one.
export HABLAR_E2E_TMP="$tmp"
export HABLAR_E2E_PIDFILE="$tmp/hablar-server.pid"
export HABLAR_E2E_SERVER_LOG="$tmp/hablar-server.log"
source scripts/server-lib.sh
RUST_LOG=${RUST_LOG:-warn} start_hablar_server "$tmp/hablar-server.out" "$HABLAR_E2E_SERVER_LOG" \
  "${HABLAR_SERVER_BIN:-target/debug/hablar-server}" --dev --www-dir www --pkg-dir client/pkg || {
  say "the server did not start"
  exit 1
}
echo "$SERVER_PID" >"$HABLAR_E2E_PIDFILE"
disown "$SERVER_PID"  # the restart test kills it: no "Killed" job notice
url="http://$SERVER_ADDR"
export HABLAR_E2E_URL="$url"
say "hablar-server on $url"

rm -rf test-output/e2e && mkdir -p test-output/e2e  # no stale screenshots
status=0
# One file at a time: the demo test rebuilds client/pkg, and two Chromiums on two cores
# would only make the timings noisy.
node --test --test-concurrency=1 tests/e2e/ || status=$?
if ((status)); then
  say "FAILED; hablar-server log (last 40 lines):"
  tail -n 40 "$HABLAR_E2E_SERVER_LOG" || true
fi
say "screenshots in test-output/e2e/"
exit "$status"
