#!/usr/bin/env bash
# What request validation costs the gateway (bench/validate.yaml, port 18096, one worker
# pinned to CPU 1; wrk on CPU 0 with 16 connections; the benchmark backend on 18080 from
# ../shared/bench/run.sh start): a 1 KiB JSON POST (bench/order.lua) proxied as it is and
# validated against examples/contracts/orders.yaml, and a GET with query parameters
# (an integer, an array of an enum) likewise. Prints per round and case: req/s, p50, p99 and the gateway's CPU
# microseconds per request. Needs wrk and target/release/portico.
# usage: bench/validate.sh [rounds] [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-8}
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/validate.yaml 2>/dev/null &
GW=$!
trap 'kill $GW 2>/dev/null' EXIT
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
    q="limit=20&status=open&status=shipped"
    for case in "post plain /plain/orders" "post checked /checked/orders" "get plain /plain/orders?$q" "get checked /checked/orders?$q"; do
        set -- $case
        args=(-H "X-Tenant: acme")
        [ "$1" = post ] && args=(-s bench/order.lua)
        url="http://127.0.0.1:18096$3"
        taskset -c 0 wrk -t1 -c16 -d2s "${args[@]}" "$url" >/dev/null
        g1=$(ticks $GW)
        out=$(taskset -c 0 wrk -t1 -c16 -d"${SECS}"s --latency "${args[@]}" "$url")
        g2=$(ticks $GW)
        req=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p50=$(echo "$out" | awk '$1 == "50%" {print $2}'); p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
        non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
        cpu=$(awk -v t=$((g2 - g1)) -v n="$req" -v hz="$hz" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
        echo "round=$r $1 $2 req/s=$rps p50=$p50 p99=$p99 gw_cpu_us/req=$cpu non2xx=${non2xx:-0}"
    done
done
