#!/usr/bin/env bash
# Throughput, latency and CPU of a `publish` route (bench/publish.yaml, port 18094, one
# worker thread pinned to CPU 1) against a redis-server on 127.0.0.1:18379 pinned to CPU 0
# with wrk, next to a 1 KiB POST proxied to the benchmark backend (127.0.0.1:18080,
# ../shared/bench) for comparison. Redis runs without persistence (appendonly no) and with
# `appendfsync always` in turn: what a durable 202 costs. Needs wrk, redis-server and
# target/release/portico. Prints per round and mode: req/s, p50/p99 latency, the
# gateway's CPU us/req, Redis's CPU us/req.
# usage: bench/publish.sh [rounds] [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-8}
DIR=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$DIR"' EXIT
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/publish.yaml 2>/dev/null & pids+=($!)
GW=$!
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for persist in none always; do
    case $persist in
        none) args=(--appendonly no) ;;
        always) args=(--appendonly yes --appendfsync always) ;;
    esac
    taskset -c 0 redis-server --port 18379 --bind 127.0.0.1 --save "" "${args[@]}" --dir "$DIR" >/dev/null &
    REDIS=$!
    sleep 1
    for r in $(seq "$ROUNDS"); do
        for path in /events/orders /api/users/123; do
            url=http://127.0.0.1:18094$path
            taskset -c 0 wrk -t1 -c16 -d2s -s bench/post.lua "$url" >/dev/null
            g1=$(ticks $GW); r1=$(ticks $REDIS)
            out=$(taskset -c 0 wrk -t1 -c16 -d"${SECS}"s --latency -s bench/post.lua "$url")
            g2=$(ticks $GW); r2=$(ticks $REDIS)
            req=$(echo "$out" | awk '/requests in/ {print $1}')
            rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
            p50=$(echo "$out" | awk '$1 == "50%" {print $2}'); p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
            non2xx=$(echo "$out" | awk '/Non-2xx/ {print $4}')
            hz=$(getconf CLK_TCK)
            gcpu=$(awk -v t=$((g2 - g1)) -v n="$req" -v hz="$hz" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
            rcpu=$(awk -v t=$((r2 - r1)) -v n="$req" -v hz="$hz" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
            echo "redis-persist=$persist round=$r $path req/s=$rps p50=$p50 p99=$p99 gw_cpu_us/req=$gcpu redis_cpu_us/req=$rcpu non2xx=${non2xx:-0}"
        done
    done
    kill $REDIS; wait $REDIS 2>/dev/null || true
    rm -rf "${DIR:?}"/*
done
