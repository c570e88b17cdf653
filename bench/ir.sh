#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind (deterministic, so
# small A/B differences show through a noisy machine; it does not see kernel time).
# Each binary runs bench/portico.yaml (port 18090) with one worker thread under
# valgrind; after a warm-up the counters are zeroed, wrk sends requests, the counters
# are dumped and divided by the requests wrk completed. The name `nginx` instead of a
# binary runs the harness's nginx peer config (../shared/bench, rendered by its
# `run.sh start`) in one process on port 18091, for reference.
# usage: ir.sh BINARY|nginx... -> "NAME ir_per_req N requests M"
# IR_WRK_ARGS adds wrk arguments, e.g. -H "User-Agent: x" -H "Accept: */*" for a browser-like head.
set -u
cd "$(dirname "$0")/.."
OUT=${IR_OUT:-/tmp/portico-ir}
mkdir -p "$OUT"
for bin in "$@"; do
  pkill -f "run -c bench/portico.yaml"; sleep 0.3
  rm -f "$OUT"/cg.*
  if [ "$bin" = nginx ]; then
    PORT=18091
    mkdir -p "$OUT/nginx"
    sed -e "s/127.0.0.1:18081/127.0.0.1:$PORT/" -e "s#^pid .*#pid $OUT/nginx/nginx.pid;#" \
      -e "1i daemon off; master_process off;" /tmp/bench-run/nginx/nginx.conf >"$OUT/nginx/nginx.conf"
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
      nginx -c "$OUT/nginx/nginx.conf" >/dev/null 2>"$OUT/valgrind.log" &
  else
    PORT=18090
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" \
      "$bin" run -c bench/portico.yaml >/dev/null 2>"$OUT/valgrind.log" &
  fi
  VG=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/api/users/1 && break; sleep 0.2; done
  # shellcheck disable=SC2086
  wrk -t1 -c16 -d3s ${IR_WRK_ARGS:-} http://127.0.0.1:$PORT/api/users/123 >/dev/null
  callgrind_control -z "$VG" >/dev/null
  # shellcheck disable=SC2086
  REQ=$(wrk -t1 -c16 -d5s ${IR_WRK_ARGS:-} http://127.0.0.1:$PORT/api/users/123 | awk '/requests in/ {print $1}')
  callgrind_control -d "$VG" >/dev/null
  sleep 0.5
  IR=$(cat "$OUT"/cg.*.1 | awk '/^summary:/ {s += $2} END {print s}')
  echo "$bin ir_per_req $((IR / REQ)) requests $REQ"
  kill "$VG"; wait "$VG" 2>/dev/null
done
