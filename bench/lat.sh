#!/usr/bin/env bash
# CPU per request and latency of the process listening on PORT at a fixed 2,000 req/s
# (oha -q 2000 -c 16 -z 8s --latency-correction, oha pinned to CPU 0).
# usage: lat.sh PORT -> cpu_us (per request) p50 p99 (ms)
PORT=$1
PID=$(ss -ltnp "sport = :$PORT" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$PID/stat)
OUT=$(taskset -c 0 oha -q 2000 -c 16 -z 8s --latency-correction --no-tui http://127.0.0.1:$PORT/api/users/123)
read -r u2 s2 < <(awk '{print $14, $15}' /proc/$PID/stat)
echo "port $PORT cpu_us $(( ((u2-u1)+(s2-s1))*10000/16000 )) p50 $(echo "$OUT" | grep '50.00%' | awk '{print $3}') p99 $(echo "$OUT" | grep '99.00%' | awk '{print $3}')"
