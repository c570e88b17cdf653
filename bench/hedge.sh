#!/usr/bin/env bash
# Hedging's effect on tail latency (bench/hedge.yaml, port 18095, one worker thread
# pinned to CPU 1): two Python upstreams (bench/slow_upstream.py, CPU 0) answer after
# 2 ms and stall 5% of requests for 200 ms; bench/latency.py (CPU 0, 8 connections; see
# there why not wrk) reads /plain (no hedging), /fixed (hedge after 10 ms) and /p90 (hedge
# after the route's p90). Prints per round and path: req/s, p50, p90, p99, p99.9 and how
# many hedges were sent and won. Needs python3, curl and target/release/portico.
# usage: bench/hedge.sh [rounds] [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-10}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
for port in 18211 18212; do
    taskset -c 0 python3 bench/slow_upstream.py $port 2 5 200 & pids+=($!)
done
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/hedge.yaml 2>/dev/null & pids+=($!)
sleep 1
metric() { curl -s http://127.0.0.1:19095/metrics | awk -v m="$1" '$1 == m {print $2}'; }
for r in $(seq "$ROUNDS"); do
    for path in /plain /fixed /p90; do
        url=http://127.0.0.1:18095$path
        taskset -c 0 python3 bench/latency.py "$url" 8 2 >/dev/null
        h1=$(metric 'gateway_upstream_hedges_total{upstream="u"}'); w1=$(metric 'gateway_upstream_hedge_wins_total{upstream="u"}')
        out=$(taskset -c 0 python3 bench/latency.py "$url" 8 "$SECS")
        h2=$(metric 'gateway_upstream_hedges_total{upstream="u"}'); w2=$(metric 'gateway_upstream_hedge_wins_total{upstream="u"}')
        echo "round=$r $path $out hedges=$(( ${h2%.*} - ${h1%.*} )) won=$(( ${w2%.*} - ${w1%.*} ))"
    done
done
