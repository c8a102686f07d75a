# Shared helpers of scripts/bench.sh and scripts/bench-smoke.sh (sourced, not run):
# start the systems under test on free loopback ports, remember their pids, stop
# them all on exit. Each start_* sets PID and PORT of what it started.

BENCH_SECRET=${BENCH_SECRET:-hablar-bench-secret}
BENCH_ADMIN_KEY=${BENCH_ADMIN_KEY:-hablar-bench-admin}
BENCH_PIDS=()
BENCH_LOGS=${BENCH_LOGS:-$(mktemp -d)}
source "$(dirname "${BASH_SOURCE[0]}")/server-lib.sh"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_all() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

# wait_port FILE PATTERN: waits (≤ 60 s) for a line matching PATTERN, prints the port
# (the ceiling's announcement; hablar-server has its port file).
wait_port() {
  local file=$1 pattern=$2 i
  for i in $(seq 1 600); do
    if grep -q "$pattern" "$file" 2>/dev/null; then
      sed -n "s|.*$pattern.*:\([0-9][0-9]*\).*|\1|p" "$file" | head -n1
      return 0
    fi
    sleep 0.1
  done
  echo "timed out waiting for '$pattern' in $file" >&2
  cat "$file" >&2
  return 1
}

# start_server BIN NAME [extra flags…]: hablar-server on a free port.
start_server() {
  local bin=$1 name=$2
  shift 2
  # The generator's thousands of connections all come from 127.0.0.1: no connection caps.
  RUST_LOG=${RUST_LOG:-warn} start_hablar_server "$BENCH_LOGS/$name.out" "$BENCH_LOGS/$name.err" \
    "$bin" --jwt-secret "$BENCH_SECRET" \
    --admin-key "$BENCH_ADMIN_KEY" --rate-per-sec 1000000 --rate-burst 1000000 \
    --max-connections-per-ip 0 --max-connections 0 "$@"
  PID=$SERVER_PID
  BENCH_PIDS+=("$PID")
  PORT=${SERVER_ADDR##*:}
}

# start_ceiling BIN NAME
start_ceiling() {
  local log="$BENCH_LOGS/$2.out"
  "$1" >"$log" 2>"$BENCH_LOGS/$2.err" &
  PID=$!
  BENCH_PIDS+=("$PID")
  PORT=$(wait_port "$log" "hablar-ceiling listening on http://127.0.0.1")
}

# start_redis NAME: a private redis-server, no persistence.
start_redis() {
  PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no --maxclients 20000 \
    >"$BENCH_LOGS/$1.log" 2>&1 &
  PID=$!
  BENCH_PIDS+=("$PID")
  local i
  for i in $(seq 1 100); do
    redis-cli -p "$PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis did not start" >&2
  return 1
}

# start_daphne NAME REDIS_URL: the Django Channels baseline (its DB seeded beforehand).
start_daphne() {
  PORT=$(free_port)
  HABLAR_JWT_SECRET=$BENCH_SECRET tests/django/run-daphne.sh "$PORT" "$2" >"$BENCH_LOGS/$1.log" 2>&1 &
  PID=$!
  BENCH_PIDS+=("$PID")
  local i
  for i in $(seq 1 300); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "daphne did not start" >&2
  cat "$BENCH_LOGS/$1.log" >&2
  return 1
}

# mean_frame_bytes RESULTS_JSON: prints the mean payload length, rounded to a byte, of
# the new_message frames a fan-out run delivered (all its steps, weighted by the
# deliveries of each). Fails, printing nothing, when the file is missing or unreadable or
# holds no measured frame (a failed run, or results from before the size was measured).
mean_frame_bytes() {
  python3 -c '
import json, sys
try:
    steps = json.load(open(sys.argv[1]))["steps"]
    pairs = [(s.get("mean_frame_bytes", 0), s["latency"]["count"]) for s in steps]
except (OSError, ValueError, KeyError, TypeError):
    sys.exit(1)
count = sum(c for b, c in pairs if b > 0)
if count == 0:
    sys.exit(1)
print(int(sum(b * c for b, c in pairs if b > 0) / count + 0.5))
' "$1"
}
