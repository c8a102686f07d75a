#!/usr/bin/env bash
# Installs what Hablar's demo and tests need, only what is missing: a second run takes
# seconds. Safe to run on a fresh machine of this kind (Debian, root, registries only).
#
#   scripts/setup.sh           everything (Rust targets and tools, Debian packages, npm)
#   scripts/setup.sh --demo    only what the demo needs (no browser, no Redis, no fuzzer)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

demo_only=false
[[ "${1:-}" == "--demo" ]] && demo_only=true

say() { printf 'setup: %s\n' "$*"; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if ! command -v wasm-pack >/dev/null; then
  say "installing wasm-pack (about 2 minutes, once)"
  cargo install --locked wasm-pack
fi

# cargo-fuzz drives the fuzz targets in fuzz/ (scripts/test.sh runs them on stable Rust).
if ! $demo_only && ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz (about a minute, once)"
  cargo install --locked cargo-fuzz --version "^0.13"
fi

# Debian packages: the browser and its driver for the browser tests, Redis for the
# Redis backend's tests, binaryen for wasm-opt (wasm-pack finds /usr/bin/wasm-opt).
apt_missing=()
command -v wasm-opt >/dev/null || apt_missing+=(binaryen)
if ! $demo_only; then
  command -v chromium >/dev/null || apt_missing+=(chromium)
  command -v chromedriver >/dev/null || apt_missing+=(chromium-driver)
  command -v redis-server >/dev/null || apt_missing+=(redis-server)
  # libfuzzer-sys builds libFuzzer from its C++ source.
  command -v c++ >/dev/null || apt_missing+=(g++)
fi
if ((${#apt_missing[@]})); then
  say "installing Debian packages: ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
# Debian starts a system redis-server on 6379 when it installs it; our tests start their
# own on free ports and must never depend on (or disturb) that one.

if ! $demo_only; then
  # npm dependencies (playwright-core drives Debian's Chromium; it downloads no browser).
  lock_hash=$(sha256sum package.json package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
  if [[ ! -f node_modules/.hablar-stamp || "$(cat node_modules/.hablar-stamp)" != "$lock_hash" ]]; then
    say "installing npm dependencies"
    if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
    echo "$lock_hash" > node_modules/.hablar-stamp
  fi
fi

say "ready"
