#!/usr/bin/env bash
# Smoke run of the load generator (part of the test command; the benchmarks themselves are
# scripts/bench.sh): builds the debug binaries, starts hablar-server (embedded) and the
# bare ceiling on free ports, runs a tiny fan-out sweep against each, and fails unless
# every connection connected, every message was delivered and no error was counted. As
# bench.sh does, the ceiling runs twice: with the client's frames, then with frames padded
# to the size hablar-server delivered, which must arrive at exactly that size.
# Takes well under a minute once built.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --quiet -p hablar-server -p hablar-bench
BIN=target/debug
export BENCH_LOGS
BENCH_LOGS=$(mktemp -d)
source scripts/bench-lib.sh
trap 'stop_all; rm -rf "$BENCH_LOGS"' EXIT

tiny=(--prefix smoke --chats 3 --members 5 --start-rate 20 --factor 2 --max-rate 40
  --window-secs 1 --drain-secs 3 --stop-p99-ms 5000 --idle-secs 0 --strict --trials 1
  --secret "$BENCH_SECRET" --admin-key "$BENCH_ADMIN_KEY")

start_server "$BIN/hablar-server" smoke-server
"$BIN/hablar-bench" fanout --target-name hablar-memory --scenario smoke "${tiny[@]}" \
  --ws "ws://127.0.0.1:$PORT" --pid "$PID" --wait-ready --admin "127.0.0.1:$PORT" \
  --out "$BENCH_LOGS/hablar-memory.json"
frame=$(mean_frame_bytes "$BENCH_LOGS/hablar-memory.json") || {
  echo "bench smoke: hablar-server's delivered frame size was not measured" >&2
  exit 1
}

start_ceiling "$BIN/hablar-ceiling" smoke-ceiling
"$BIN/hablar-bench" fanout --target-name ceiling --scenario smoke "${tiny[@]}" \
  --ws "ws://127.0.0.1:$PORT" --pid "$PID"
start_ceiling "$BIN/hablar-ceiling" smoke-ceiling-same-frames
"$BIN/hablar-bench" fanout --target-name ceiling-same-frames --scenario smoke "${tiny[@]}" \
  --ws "ws://127.0.0.1:$PORT" --pid "$PID" --frame-bytes "$frame" \
  --out "$BENCH_LOGS/ceiling-same-frames.json"
same=$(mean_frame_bytes "$BENCH_LOGS/ceiling-same-frames.json") || same=unmeasured
if [[ $same != "$frame" ]]; then
  echo "bench smoke: the ceiling delivered $same B frames, not the $frame B of hablar-server's" >&2
  exit 1
fi

echo "bench smoke: ok (frames: hablar-server $frame B, ceiling padded to $same B)"
