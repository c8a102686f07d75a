#!/usr/bin/env bash
# Runs every test of Hablar: formatting and lints (native and wasm32), the native tests
# of every crate (protocol golden tests, server integration tests on real sockets, the
# SDK's decision logic), the SDK in headless Chromium against a real server, the package
# size budget, and the browser end-to-end and Django Channels compatibility tests.
# Installs what is missing first (scripts/setup.sh). Every service a test needs is started
# by that test or its script on a free port and stopped after.
#
# Runs all stages even when one fails, then prints a summary and exits non-zero if any
# stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

scripts/setup.sh || { echo "setup failed"; exit 1; }

passed=0
failed=0
failed_names=()
summary=()

# stage NAME COMMAND...: runs one stage, records its result and duration.
stage() {
  local name=$1
  shift
  printf '\n===== %s =====\n' "$name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    summary+=("ok    $name ($((SECONDS - start)) s)")
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    summary+=("FAIL  $name ($((SECONDS - start)) s)")
  fi
}

wasm_clippy() {
  cargo clippy --target wasm32-unknown-unknown -p hablar-protocol --no-default-features -- -D warnings &&
    cargo clippy --target wasm32-unknown-unknown -p hablar-client --all-targets -- -D warnings
}

stage "cargo fmt --check" cargo fmt --all -- --check
stage "clippy (native)" cargo clippy --workspace --all-targets -- -D warnings
stage "clippy (wasm32)" wasm_clippy
stage "native tests" cargo test --workspace
stage "SDK in headless Chromium" client/scripts/browser-test.sh
stage "SDK package size" client/scripts/size.sh
django() {
  cargo build -q -p hablar-server && tests/django/run-tests.sh
}
stage "Django Channels baseline and token interop" django
stage "browser end-to-end (demo page, demo command, Django Channels)" tests/e2e/run.sh
stage "load generator smoke run (the benchmarks are scripts/bench.sh)" scripts/bench-smoke.sh

printf '\n===== summary =====\n'
printf '%s\n' "${summary[@]}"
echo "stages: $passed passed, $failed failed"
if ((failed)); then
  echo "failed: ${failed_names[*]}"
  exit 1
fi
