#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md in one go, on this machine over loopback, and
# regenerates BENCHMARKS.md, bench/chart.svg and bench/results/*.json from what it measured.
#
#   scripts/bench.sh                 about 30-40 minutes
#   SWEEPS=1 scripts/bench.sh        one sweep per system, about 15-20 minutes
#
# Systems, each started fresh for each scenario on free ports and stopped after:
#   hablar-memory    hablar-server, embedded backend (first: the ceiling needs the size of
#                    the frames it delivers)
#   ceiling          bench's hablar-ceiling (bare tokio broadcast of the client's frame)
#   ceiling-same-frames  hablar-ceiling again, the client's frames padded to the mean size
#                    of the new_message frames hablar-memory delivered in the same layout
#                    (same bytes on the wire); layouts a and b only
#   hablar-redis     hablar-server, Redis backend, one instance (+ its redis-server)
#   hablar-redis-2x  two hablar-server instances on one Redis, members split across them
#   django-channels  the tests/django baseline: daphne + channels_redis (+ its redis-server)
# Scenarios (same generator, same 100-byte message content everywhere but in
# ceiling-same-frames, whose content is padded to the frame size):
#   a   1 chat × 1,000 members, one publisher, rate sweep
#   b   1,000 chats × 10 members (10,000 connections: also the idle-memory figure), sweep
#   d   connect/disconnect churn, 32 loops, 8 s
#   e-a, e-b  layouts a and b on hablar-redis-2x
# The systems a goal compares are swept SWEEPS times, alternating (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The machine is shared (other builds and tests may run): the benchmark and everything it
# starts run at a higher priority so that they disturb the figures less. Not fatal if
# not permitted.
renice -n -10 -p $$ >/dev/null 2>&1 || true
PROFILE=bench-release
BIN=target/$PROFILE
OUT=target/bench-results
export BENCH_LOGS=$OUT/logs
rm -rf "$OUT"
mkdir -p "$OUT" "$BENCH_LOGS"
source scripts/bench-lib.sh
trap stop_all EXIT

say() { printf '\n=== %s\n' "$*" >&2; }

say "building ($PROFILE)"
cargo build --quiet --profile "$PROFILE" -p hablar-server -p hablar-bench

say "preparing the Django baseline (venv, DB with the bench layouts)"
export HABLAR_DJANGO_DB=$PWD/$OUT/django.sqlite3
tests/django/setup.sh >/dev/null
tests/django/.venv/bin/python tests/django/manage.py bench_seed --prefix fa --chats 1 --members 1000
tests/django/.venv/bin/python tests/django/manage.py bench_seed --prefix fb --chats 1000 --members 10

# The machine, for the report.
{
  echo '```'
  echo "cpu:      $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores online)"
  echo "memory:   $(free -m | awk '/^Mem:/ {print $2}') MiB"
  echo "kernel:   $(uname -r)"
  echo "rustc:    $(rustc --version)"
  echo "redis:    $(redis-server --version | cut -d' ' -f3)"
  echo "python:   $(tests/django/.venv/bin/python --version), daphne $(tests/django/.venv/bin/python -c 'import daphne; print(daphne.__version__)'), channels_redis $(tests/django/.venv/bin/python -c 'import importlib.metadata as m; print(m.version("channels_redis"))')"
  echo "ports:    ip_local_port_range $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range), ulimit -n $(ulimit -n)"
  echo "run:      $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
  echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min load average before the run)"
} >"$OUT/machine.txt"

# Layouts.
A=(--prefix fa --chats 1 --members 1000)
B=(--prefix fb --chats 1000 --members 10)
A_DESC="1 chat × 1,000 members, one publisher"
B_DESC="1,000 chats × 10 members, one publisher per chat"
# Sweeps continue past the 50 ms bound up to p99 250 ms, so the chart shows the knee.
SWEEP=(--factor 2 --window-secs 3 --drain-secs 4 --content-bytes 100 --stop-p99-ms 250)

bench() { "$BIN/hablar-bench" "$@" --secret "$BENCH_SECRET" --admin-key "$BENCH_ADMIN_KEY"; }

# A run that fails leaves no results file, and its system would just be missing from the
# report: say so under "Machine" too, where the reader of BENCHMARKS.md sees it.
failed() {
  echo "bench: $1 failed (logs in $BENCH_LOGS)" >&2
  echo "warning:  the $1 run failed; its figures are missing below" >>"$OUT/machine.txt"
}

# fanout NAME SCENARIO START_RATE MAX_RATE LAYOUT_VAR DESC [target flags…]
fanout() {
  local name=$1 scenario=$2 start=$3 max=$4 layout=$5 desc=$6
  shift 6
  local -n lay=$layout
  bench fanout --target-name "$name" --scenario "$scenario" --description "$desc" \
    "${lay[@]}" "${SWEEP[@]}" --start-rate "$start" --max-rate "$max" "$@" \
    --out "$OUT/$name-$scenario${SWEEP_SUFFIX:-}.json" || failed "$name $scenario"
}

churn() {
  local name=$1
  shift
  bench churn --target-name "$name" --scenario d --description "connect/close loops" \
    "${B[@]}" --concurrency 32 --duration-secs 8 "$@" --out "$OUT/$name-d.json" ||
    failed "$name churn"
}

# The size of the new_message frames hablar-server delivered per layout (the protocol's
# envelope: id, seq, chat_id, sender, created_at and client_id around the same content),
# for the ceiling to send as much. If that run failed, a constant close to it (100 B of
# content in that envelope come to ~300 B), with a warning here and in the report.
FALLBACK_FRAME_BYTES=300
frame_bytes_of() {
  local s=$1 bytes
  if bytes=$(mean_frame_bytes "$OUT/hablar-memory-$s.json"); then
    echo "$bytes"
  else
    echo "bench: WARNING: no delivered frame size in $OUT/hablar-memory-$s.json;" \
      "ceiling-same-frames $s sends $FALLBACK_FRAME_BYTES B frames instead" >&2
    echo "warning:  ceiling-same-frames $s: hablar-memory's frame size was not measured, fell back to $FALLBACK_FRAME_BYTES B" \
      >>"$OUT/machine.txt"
    echo "$FALLBACK_FRAME_BYTES"
  fi
}

# Every system a goal judges against another is swept SWEEPS times (default 3), alternating
# with the system it is compared to, and the report keeps each one's median sweep by
# figure and lists every sweep's figure: the machine's background noise drifts over
# minutes, and whole single sweeps of one build put the same pair at 0.59× one run and
# 1.19× another (embedded against the ceiling), or 0.25× and 0.59× (two instances against
# one). Sweeps after the first write NAME-SCENARIO.sweepN.json.
SWEEPS=${SWEEPS:-3}
# sweep_suffix I: the results-file suffix of the I-th sweep.
sweep_suffix() {
  SWEEP_SUFFIX=
  if (($1 > 1)); then SWEEP_SUFFIX=.sweep$1; fi
}

# --- hablar-server, embedded, and the bare ceiling, scenario by scenario, back to back:
# the systems that the 70 % goal compares run next to each other. The ceiling runs with
# frames as large as hablar-server's (what the goal is judged against) in every sweep,
# and with the client's own frame (as a base-layer relay would forward it, shown for
# comparison) in the first. Churn sends no message and is judged by no goal: each system
# churns once.
for s in a b d; do
  sweeps=$SWEEPS
  [[ $s == d ]] && sweeps=1
  for ((i = 1; i <= sweeps; i++)); do
    sweep_suffix "$i"
    start_server "$BIN/hablar-server" "memory-$s$SWEEP_SUFFIX"
    t=(--ws "ws://127.0.0.1:$PORT" --pid "$PID" --wait-ready --admin "127.0.0.1:$PORT")
    case $s in
      a) fanout hablar-memory a 20 5120 A "$A_DESC" "${t[@]}" ;;
      b) fanout hablar-memory b 500 256000 B "$B_DESC" "${t[@]}" ;;
      d) churn hablar-memory "${t[@]}" ;;
    esac
    stop_all
    for name in ceiling ceiling-same-frames; do
      [[ $s == d && $name != ceiling ]] && continue
      [[ $name == ceiling && $i -gt 1 ]] && continue
      size=()
      [[ $name == ceiling-same-frames ]] && size=(--frame-bytes "$(frame_bytes_of "$s")")
      start_ceiling "$BIN/hablar-ceiling" "$name-$s$SWEEP_SUFFIX"
      t=(--ws "ws://127.0.0.1:$PORT" --pid "$PID")
      case $s in
        a) fanout "$name" a 20 5120 A "$A_DESC" "${t[@]}" "${size[@]}" ;;
        b) fanout "$name" b 500 256000 B "$B_DESC" "${t[@]}" "${size[@]}" ;;
        d) churn "$name" "${t[@]}" ;;
      esac
      stop_all
    done
  done
  SWEEP_SUFFIX=
done

# --- hablar-server, Redis: one instance, then two (scenario e), layout by layout,
# alternating: (e) is judged against the one instance.
redis_one() {
  local s=$1
  start_redis "redis-1-$s${SWEEP_SUFFIX:-}"
  rpid=$PID rport=$PORT
  start_server "$BIN/hablar-server" "redis-1-$s${SWEEP_SUFFIX:-}" --backend redis --redis-url "redis://127.0.0.1:$rport/0"
  t=(--ws "ws://127.0.0.1:$PORT" --pid "$PID" --pid "$rpid" --wait-ready --admin "127.0.0.1:$PORT")
  case $s in
    a) fanout hablar-redis a 20 5120 A "$A_DESC" "${t[@]}" ;;
    b) fanout hablar-redis b 500 256000 B "$B_DESC" "${t[@]}" ;;
    d) churn hablar-redis "${t[@]}" ;;
  esac
  stop_all
}
redis_two() {
  local s=$1
  start_redis "redis-2-$s${SWEEP_SUFFIX:-}"
  rpid=$PID rport=$PORT
  start_server "$BIN/hablar-server" "redis-2-$s${SWEEP_SUFFIX:-}-1" --backend redis --redis-url "redis://127.0.0.1:$rport/0"
  pid1=$PID port1=$PORT
  start_server "$BIN/hablar-server" "redis-2-$s${SWEEP_SUFFIX:-}-2" --backend redis --redis-url "redis://127.0.0.1:$rport/0"
  t=(--ws "ws://127.0.0.1:$port1" --ws "ws://127.0.0.1:$PORT" --pid "$pid1" --pid "$PID" --pid "$rpid"
    --wait-ready --admin "127.0.0.1:$port1")
  case $s in
    a) fanout hablar-redis-2x e-a 20 5120 A "two instances + Redis; $A_DESC, members alternate instances" "${t[@]}" ;;
    b) fanout hablar-redis-2x e-b 500 256000 B "two instances + Redis; $B_DESC, members alternate instances" "${t[@]}" ;;
  esac
  stop_all
}
for s in a b; do
  for ((i = 1; i <= SWEEPS; i++)); do
    sweep_suffix "$i"
    redis_one "$s"
    redis_two "$s"
  done
  SWEEP_SUFFIX=
done
redis_one d

# --- Django Channels baseline (stock Channels refuses handshakes without an Origin)
for s in a b d; do
  start_redis "django-redis-$s"
  rpid=$PID rport=$PORT
  start_daphne "django-$s" "redis://127.0.0.1:$rport/0"
  t=(--ws "ws://127.0.0.1:$PORT" --pid "$PID" --pid "$rpid" --origin "http://127.0.0.1")
  case $s in
    a) fanout django-channels a 0.5 5120 A "$A_DESC" "${t[@]}" ;;
    b) fanout django-channels b 10 256000 B "$B_DESC" "${t[@]}" ;;
    d) churn django-channels "${t[@]}" ;;
  esac
  stop_all
done

{
  echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) (after the run; other processes on the machine compete for the 2 cores)"
  echo '```'
} >>"$OUT/machine.txt"

say "report"
rm -rf bench/results
mkdir -p bench/results
cp "$OUT"/*.json bench/results/
"$BIN/hablar-bench" report --results bench/results --template bench/BENCHMARKS.template.md \
  --machine "$OUT/machine.txt" --out BENCHMARKS.md --svg bench/chart.svg --svg-link bench/chart.svg
echo "wrote BENCHMARKS.md, bench/chart.svg, bench/results/ (logs in $BENCH_LOGS)" >&2
