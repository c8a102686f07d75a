# Starting hablar-server from a shell script (sourced, not run): on a free loopback port,
# ready once it wrote its --port-file (whole, so present means listening). The one way
# the scripts start it; node has scripts/server.mjs, Rust hablar_tests::process.

# start_hablar_server OUT ERR BIN [flags…]: runs `BIN --bind 127.0.0.1:0 --port-file …
# [flags…]` in the background (a later --bind is refused by the binary: pass none), stdout
# to OUT, stderr appended to ERR (a log other servers may share). Once it listens, sets SERVER_PID and SERVER_ADDR (IP:PORT). Fails,
# printing ERR, if it exits first or does not listen within 60 s (then it is killed).
start_hablar_server() {
  local out=$1 err=$2 bin=$3
  shift 3
  local port_file i
  port_file=$(mktemp -u "${TMPDIR:-/tmp}/hablar-server.XXXXXX")
  "$bin" --bind 127.0.0.1:0 --port-file "$port_file" "$@" >"$out" 2>>"$err" &
  SERVER_PID=$!
  SERVER_ADDR=""
  for i in $(seq 1 600); do
    if [[ -f $port_file ]]; then
      SERVER_ADDR=$(<"$port_file")
      rm -f "$port_file"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  echo "hablar-server did not start ($bin $*):" >&2
  cat "$err" >&2
  return 1
}
