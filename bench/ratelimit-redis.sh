#!/usr/bin/env bash
# What a Redis-shared rate limit costs in the plain-proxy run: one Portico
# (bench/portico-ratelimit-redis.yaml, port 18094, one worker thread, pinned to CPU 1)
# proxying with no limit, with a strict Redis limit (one EVALSHA per request), and with a
# batched one (a reservation of 100 units per round trip), against a redis-server on
# 127.0.0.1:18379 pinned to CPU 0 with wrk. Needs the benchmark backend on 127.0.0.1:18080
# (../shared/bench), wrk, redis-server and target/release/portico. Prints per round: req/s,
# the gateway's CPU us/req, Redis's CPU us/req, and the EVALSHA calls per request.
# usage: bench/ratelimit-redis.sh [rounds] [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-8}
DIR=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
taskset -c 0 redis-server --port 18379 --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" >/dev/null & pids+=($!)
REDIS=$!
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/portico-ratelimit-redis.yaml 2>/dev/null & pids+=($!)
GW=$!
sleep 1
evalsha() { redis-cli -p 18379 info commandstats | awk -F'[=,:]' '/cmdstat_evalsha/ {print $3}' | tr -d '\r'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$ROUNDS"); do
    echo "round $r"
    for mode in plain strict batched; do
        taskset -c 0 wrk -t1 -c64 -d2s -H "x-mode: $mode" http://127.0.0.1:18094/api/users/123 >/dev/null
        g1=$(ticks $GW); r1=$(ticks $REDIS); e1=$(evalsha); e1=${e1:-0}
        out=$(taskset -c 0 wrk -t1 -c64 -d"${SECS}"s -H "x-mode: $mode" http://127.0.0.1:18094/api/users/123)
        g2=$(ticks $GW); r2=$(ticks $REDIS); e2=$(evalsha); e2=${e2:-0}
        req=$(echo "$out" | awk '/requests in/ {print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
        printf '%-8s rps %9s  gateway_cpu_us_per_req %6s  redis_cpu_us_per_req %6s  evalsha_per_req %5s  non2xx %s\n' \
            "$mode" "$rps" "$(echo "scale=2; ($g2-$g1)*10000/$req" | bc)" "$(echo "scale=2; ($r2-$r1)*10000/$req" | bc)" \
            "$(echo "scale=3; ($e2-$e1)/$req" | bc)" "${non2xx:-0}"
    done
done
