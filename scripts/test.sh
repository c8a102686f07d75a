#!/usr/bin/env bash
# Runs every test of Hablar: formatting and lints (native and wasm32), the native tests
# of every crate (protocol golden tests, server integration tests on real sockets, the
# SDK's decision logic), bounded runs of the fuzz targets, the SDK in headless Chromium
# against a real server, the package size budget, and the browser end-to-end and Django
# Channels compatibility tests.
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

# The fuzz crate is a workspace of its own (fuzz/Cargo.toml says why); it is formatted
# here with the rest, and linted and built in its own stage below.
fmt_check() {
  cargo fmt --all -- --check && cargo fmt --manifest-path fuzz/Cargo.toml -- --check
}

# fuzz_run TARGET RUNS: a bounded, seeded run of one fuzz target from its committed
# corpus. New inputs go to a temporary directory, so the corpus only changes by hand.
# Prints libFuzzer's last line, or everything but its progress lines on a failure (the
# panic, its backtrace, the failing input and how to reproduce it).
fuzz_run() {
  local target=$1 runs=$2 new log status=0
  new=$(mktemp -d)
  log=$(mktemp)
  cargo fuzz run --sanitizer none --dev --target-dir "$fuzz_target_dir" "$target" \
    "$new" "fuzz/corpus/$target" -- -runs="$runs" -seed=1 >"$log" 2>&1 || status=$?
  if ((status)); then grep -vE '^#[0-9]+ ' "$log"; else tail -n 1 "$log"; fi
  rm -rf "$new" "$log"
  return "$status"
}

# The fuzz targets (fuzz/README.md): cargo-fuzz on stable Rust, so without a sanitizer
# (they need nightly), and a debug build: debug assertions and overflow checks on, and
# half the build time of an optimised one. Shares the workspace's target directory, so
# the lints reuse what the clippy stage checked (the instrumented build is kept apart
# under the target triple).
fuzz() {
  fuzz_target_dir=${CARGO_TARGET_DIR:-$PWD/target}
  cargo clippy --manifest-path fuzz/Cargo.toml --target-dir "$fuzz_target_dir" --all-targets -- -D warnings &&
    cargo fuzz build --sanitizer none --dev --target-dir "$fuzz_target_dir" &&
    fuzz_run client_frame 20000 &&
    fuzz_run server_frame 4000
}

stage "cargo fmt --check" fmt_check
stage "clippy (native)" cargo clippy --workspace --all-targets -- -D warnings
stage "clippy (wasm32)" wasm_clippy
stage "native tests" cargo test --workspace
stage "fuzz: client frames and the server's frame handling, bounded runs" fuzz
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
