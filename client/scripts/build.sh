#!/usr/bin/env bash
# Builds the release npm package into client/pkg: wasm-pack (no wasm-opt of its own),
# then `wasm-opt -Oz` from a binaryen recent enough for wasm-bindgen's externref table.
#
# Why not wasm-pack's wasm-opt step: Debian's binaryen 108 (/usr/bin/wasm-opt here)
# rewrites the module so that `__wbindgen_externrefs` exports the funcref table, and the
# package then fails in `init()` ("WebAssembly.Table.set(): Argument 1 is invalid").
# A recent binaryen comes from the npm registry (pinned), cached under target/.
# WASM_OPT=/path/to/wasm-opt (version >= 116) uses that one instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BINARYEN_VERSION=132
PKG="$ROOT/client/pkg"

wasm-pack --quiet build client --target web --release >/dev/null

wasm_opt() {
  if [[ -n "${WASM_OPT:-}" ]]; then echo "$WASM_OPT"; return; fi
  local system
  system="$(command -v wasm-opt || true)"
  if [[ -n "$system" ]]; then
    local v
    v="$("$system" --version | sed -n 's/.*version \([0-9]*\).*/\1/p')"
    if [[ -n "$v" && "$v" -ge 116 ]]; then echo "$system"; return; fi
  fi
  local dir="$ROOT/target/binaryen-$BINARYEN_VERSION"
  if [[ ! -x "$dir/node_modules/.bin/wasm-opt" ]]; then
    npm install --silent --no-audit --no-fund --prefix "$dir" "binaryen@$BINARYEN_VERSION" >&2
  fi
  echo "$dir/node_modules/.bin/wasm-opt"
}

WASM="$PKG/hablar_client_bg.wasm"
"$(wasm_opt)" -Oz --enable-reference-types --enable-bulk-memory --enable-sign-ext \
  --enable-mutable-globals --enable-nontrapping-float-to-int --enable-multivalue \
  "$WASM" -o "$WASM.opt"
mv "$WASM.opt" "$WASM"
