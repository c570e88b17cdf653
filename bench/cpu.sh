#!/usr/bin/env bash
# CPU per request of the process listening on PORT under wrk -t1 (wrk pinned to CPU 0;
# pin the proxy to CPU 1 yourself). The shared harness measures the same way.
# usage: cpu.sh PORT [conns] [secs] -> req/s and CPU us/req of the process listening on PORT
# CPU_WRK_ARGS adds wrk arguments, e.g. "-s bench/post.lua" for a POST with a 1 KiB body.
PORT=$1; C=${2:-64}; D=${3:-6}
PID=$(ss -ltnp "sport = :$PORT" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
# shellcheck disable=SC2086
taskset -c 0 wrk -t1 -c$C -d2s ${CPU_WRK_ARGS:-} http://127.0.0.1:$PORT/api/users/123 >/dev/null
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$PID/stat)
# shellcheck disable=SC2086
OUT=$(taskset -c 0 wrk -t1 -c$C -d${D}s ${CPU_WRK_ARGS:-} http://127.0.0.1:$PORT/api/users/123)
read -r u2 s2 < <(awk '{print $14, $15}' /proc/$PID/stat)
REQ=$(echo "$OUT" | grep "requests in" | awk '{print $1}')
RPS=$(echo "$OUT" | grep Requests/sec | awk '{print $2}')
TICKS=$(( (u2-u1) + (s2-s1) ))
echo "port $PORT rps $RPS cpu_us_per_req $(echo "scale=2; $TICKS*10000/$REQ" | bc) user $(( (u2-u1) )) sys $(( (s2-s1) ))"
