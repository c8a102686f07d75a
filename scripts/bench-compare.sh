#!/usr/bin/env bash
# Side by side: hablar-server built at two or more commits and measured in ONE run, so
# that a change that could cost speed or memory is judged against the commit before it on
# the same machine minutes apart (the machine's noise drifts over minutes: two separate
# runs of one build have differed by up to 1.7x in a sweep figure, see BENCHMARKS.md).
#
#   scripts/bench-compare.sh BEFORE [AFTER …]   AFTER defaults to HEAD; more commits may follow
#   REPEATS=3 RATES_A="320 640" RATES_B="2560" scripts/bench-compare.sh a98705b HEAD
#   BUILD_ONLY=1 scripts/bench-compare.sh a98705b   build (and cache) the binaries, run nothing
#   LAYOUTS=a BACKENDS=memory scripts/bench-compare.sh A B   only some layouts or backends
#
# What it measures, per layout (a: 1 chat × 1,000 members; b: 1,000 chats × 10 members)
# and backend (embedded, Redis), at FIXED offered publish rates rather than a rate sweep:
# a sweep's figure moves on a ×2 grid and flips between runs of one build, while the
# latency and the server's CPU at one offered rate are steadier and say directly what a
# change costs. Each (layout, backend, rate) is run REPEATS times, the builds alternating
# and their order turned around every repeat; the table shows the median of each figure
# and every repeat's p99. Layout b's connect phase also gives the idle memory per
# connection (10,000 connections).
#
# The load generator is this tree's hablar-bench for every build. Each build runs with
# the limits a benchmark needs out of its way: rate limits, and the per-address and
# instance connection caps where the build has them (the generator's 10,000 connections
# all come from 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

(($#)) || { echo "usage: scripts/bench-compare.sh BEFORE [AFTER …]" >&2; exit 2; }
REVS=("$@")
((${#REVS[@]} > 1)) || REVS+=(HEAD)
REPEATS=${REPEATS:-3}
RATES_A=${RATES_A:-"320 640"}
RATES_B=${RATES_B:-"2560"}
PROFILE=bench-release
OUT=target/bench-compare
export BENCH_LOGS=$OUT/logs
# Results start afresh; the binaries are kept per commit (bin/), so a later run against
# the same commits builds nothing again.
rm -rf "$OUT/logs" "$OUT"/*.json
mkdir -p "$OUT/bin" "$BENCH_LOGS"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
renice -n -10 -p $$ >/dev/null 2>&1 || true
source scripts/bench-lib.sh
trap 'stop_all; for w in "$OUT"/tree-*; do git worktree remove --force "$w" 2>/dev/null || true; done' EXIT

say() { printf '\n=== %s\n' "$*" >&2; }

# build REV: hablar-server at REV into $OUT/bin/SHORT-HASH, unless it is there. Every
# build shares this checkout's target dir, so the dependencies are compiled once.
build() {
  local rev name tree
  rev=$(git rev-parse "$1^{commit}")
  name=$(git rev-parse --short "$rev")
  [[ -x $OUT/bin/$name ]] && return 0
  tree=$(realpath -m "$OUT/tree-$name")
  git worktree add --quiet --detach "$tree" "$rev"
  say "building hablar-server at $name"
  (cd "$tree" && CARGO_TARGET_DIR=$OLDPWD/target cargo build --quiet --profile "$PROFILE" -p hablar-server)
  cp "target/$PROFILE/hablar-server" "$OUT/bin/$name"
  git worktree remove --force "$tree"
}
BUILDS=()
for rev in "${REVS[@]}"; do
  build "$rev"
  BUILDS+=("$(git rev-parse --short "$rev^{commit}")")
done
say "building the load generator (this tree)"
cargo build --quiet --profile "$PROFILE" -p hablar-bench
GEN=target/$PROFILE/hablar-bench
[[ -n ${BUILD_ONLY:-} ]] && exit 0

# start BUILD LOGNAME [flags…]: one build of hablar-server, with the benchmark's limits.
start() {
  local bin=$OUT/bin/$1 log=$BENCH_LOGS/$2
  shift 2
  local caps=()
  if "$bin" --help | grep -q -- --max-connections-per-ip; then
    caps=(--max-connections-per-ip 0 --max-connections 0)
  fi
  RUST_LOG=warn "$bin" --bind 127.0.0.1:0 --jwt-secret "$BENCH_SECRET" --admin-key "$BENCH_ADMIN_KEY" \
    --rate-per-sec 1000000 --rate-burst 1000000 "${caps[@]}" "$@" >"$log.out" 2>"$log.err" &
  PID=$!
  BENCH_PIDS+=("$PID")
  PORT=$(wait_port "$log.out" "hablar-server listening on http://127.0.0.1")
}

# run BUILD LAYOUT BACKEND RATE REPEAT: one fixed-rate fan-out step, results to a file.
run() {
  local build=$1 layout=$2 backend=$3 rate=$4 rep=$5 extra=() pids=()
  local name=$build-$layout-$backend-$rate-$rep
  if [[ $backend == redis ]]; then
    start_redis "$name-redis"
    pids=(--pid "$PID")
    extra=(--backend redis --redis-url "redis://127.0.0.1:$PORT/0")
  fi
  start "$build" "$name" "${extra[@]}"
  local lay=(--prefix "f$layout" --chats 1 --members 1000)
  [[ $layout == b ]] && lay=(--prefix "f$layout" --chats 1000 --members 10)
  "$GEN" fanout --target-name "$build" --scenario "$layout-$backend-$rate" "${lay[@]}" \
    --ws "ws://127.0.0.1:$PORT" --pid "$PID" "${pids[@]}" --wait-ready --admin "127.0.0.1:$PORT" \
    --secret "$BENCH_SECRET" --admin-key "$BENCH_ADMIN_KEY" \
    --start-rate "$rate" --max-rate "$rate" --window-secs 3 --drain-secs 4 --content-bytes 100 \
    --stop-p99-ms 100000 --refine 0 --trials 1 --out "$OUT/$name.json" >/dev/null 2>"$BENCH_LOGS/$name.gen" ||
    echo "bench-compare: $name failed (logs in $BENCH_LOGS)" >&2
  stop_all
}

for ((rep = 1; rep <= REPEATS; rep++)); do
  # Every repeat turns the order around, so that no build always runs first.
  order=("${BUILDS[@]}")
  ((rep % 2 == 0)) && mapfile -t order < <(printf '%s\n' "${BUILDS[@]}" | tac)
  for layout in ${LAYOUTS:-a b}; do
    rates=$RATES_A
    [[ $layout == b ]] && rates=$RATES_B
    for backend in ${BACKENDS:-memory redis}; do
      for rate in $rates; do
        say "repeat $rep/$REPEATS: layout $layout, $backend, $rate publishes/s: ${order[*]}"
        for build in "${order[@]}"; do
          run "$build" "$layout" "$backend" "$rate" "$rep"
        done
      done
    done
  done
done

say "results (medians of $REPEATS repeats)"
python3 - "$OUT" "${BUILDS[@]}" <<'PY'
import glob, json, os, statistics, sys
out, builds = sys.argv[1], sys.argv[2:]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    r = json.load(open(path))
    step = r["steps"][0] if r.get("steps") else None
    runs.setdefault((r["scenario"], r["target"]), []).append((r, step))
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
print(f"builds in commit order: {', '.join(builds)}; delivered/s, latency p50/p99 (ms), "
      "server CPU (cores, Redis included); idle bytes per connection from layout b (10,000)")
print(f"{'layout-backend-rate':<22} {'build':<9} {'delivered/s':>11} {'p50':>6} {'p99':>6} "
      f"{'p99 each':>18} {'cpu':>5} {'idle B/conn':>11}")
for scenario in sorted({k[0] for k in runs}):
    for build in builds:
        rs = runs.get((scenario, build), [])
        steps = [s for _, s in rs if s]
        p99s = [s["latency"]["p99_ms"] for s in steps]
        idle = ""
        if scenario.startswith("b"):
            idle = f"{med([r['idle']['bytes_per_connection'] for r, _ in rs if r.get('idle')]):,.0f}"
        print(f"{scenario:<22} {build:<9} {med([s['delivered_per_sec'] for s in steps]):>11.0f} "
              f"{med([s['latency']['p50_ms'] for s in steps]):>6.1f} {med(p99s):>6.1f} "
              f"{'/'.join(f'{p:.0f}' for p in p99s):>18} {med([s['server_cpu'] for s in steps]):>5.2f} "
              f"{idle:>11}")
PY
