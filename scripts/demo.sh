#!/usr/bin/env bash
# Runs the Hablar demo: builds the SDK's npm package and starts the reference server in
# dev mode (embedded in-memory backend, no Redis needed), which serves the demo page.
#
#   scripts/demo.sh                 on http://127.0.0.1:8080
#   HABLAR_BIND=127.0.0.1:9000 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/setup.sh --demo
echo "demo: building the npm package (wasm-pack, release, wasm-opt -Oz)"
client/scripts/build.sh
echo "demo: building the server"
cargo build --quiet -p hablar-server
bind=${HABLAR_BIND:-127.0.0.1:8080}
echo "demo: starting the server; open the URL it prints below. Ctrl-C stops it."
exec target/debug/hablar-server --dev --bind "$bind" --www-dir www --pkg-dir client/pkg
