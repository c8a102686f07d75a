#!/usr/bin/env bash
# Builds the release npm package into client/pkg: wasm-pack (no wasm-opt of its own),
# then `wasm-opt -Oz` from a binaryen recent enough for wasm-bindgen's externref table,
# then shortens the import names (scripts/shorten-imports.mjs) and minifies the JS glue
# with esbuild (its doc comments and long local names were half of its gzip size; the
# .d.ts keeps the docs).
#
# Why not wasm-pack's wasm-opt step: Debian's binaryen 108 (/usr/bin/wasm-opt here)
# rewrites the module so that `__wbindgen_externrefs` exports the funcref table, and the
# package then fails in `init()` ("WebAssembly.Table.set(): Argument 1 is invalid").
# A recent binaryen comes from the npm registry (pinned), cached under target/.
# WASM_OPT=/path/to/wasm-opt (version >= 116) uses that one instead.
# esbuild comes from the npm registry too (pinned), cached under target/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BINARYEN_VERSION=132
ESBUILD_VERSION=0.28.2
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

esbuild() {
  local dir="$ROOT/target/esbuild-$ESBUILD_VERSION"
  if [[ ! -x "$dir/node_modules/.bin/esbuild" ]]; then
    npm install --silent --no-audit --no-fund --prefix "$dir" "esbuild@$ESBUILD_VERSION" >&2
  fi
  echo "$dir/node_modules/.bin/esbuild"
}

WASM="$PKG/hablar_client_bg.wasm"
# --converge and the strips: the names, producers and target-features sections are of
# no use to a browser.
"$(wasm_opt)" -Oz --converge --enable-reference-types --enable-bulk-memory --enable-sign-ext \
  --enable-mutable-globals --enable-nontrapping-float-to-int --enable-multivalue \
  --strip-debug --strip-producers --strip-target-features \
  "$WASM" -o "$WASM.opt"
mv "$WASM.opt" "$WASM"

JS="$PKG/hablar_client.js"
# wasm-bindgen's hashed import names, in both files, gzip badly: shorten them.
node "$ROOT/client/scripts/shorten-imports.mjs" "$WASM" "$JS"

# No --format: esbuild then keeps top-level names (the exported `HablarClient` class keeps
# its `name`) and only shortens locals. The `@ts-self-types` line it drops is put back.
HEADER="$(head -n 1 "$JS")"
"$(esbuild)" "$JS" --minify --log-level=warning >"$JS.min"
if [[ "$HEADER" == "/* @ts-self-types="* ]]; then
  { echo "$HEADER"; cat "$JS.min"; } >"$JS"
  rm "$JS.min"
else
  mv "$JS.min" "$JS"
fi
