#!/usr/bin/env bash
# What the response cache costs and saves (docs/benchmarks.md, "Caching"): Portico
# (bench/cache.yaml, port 18097, one worker pinned to CPU 1) against nginx with
# proxy_cache (bench/nginx-cache.conf, port 18098, one worker pinned to CPU 1), wrk on
# CPU 0 with 16 connections, the benchmark backend on 18080 (../shared/bench/run.sh
# start). Cases: a plain proxied GET; a cache hit; a miss on every request (a new path
# each time, bench/unique.lua: fetched, stored, never asked again). Then the Redis tier:
# a first Portico instance fills Redis with distinct keys, and a second one (port 18099)
# is measured asking for them, so that each of its requests misses its memory and hits
# Redis (redis-server on 16379, CPU 0). Prints per round and case: req/s, p50, p99 and the
# serving process's CPU microseconds per request. wrk's latency percentiles are printed but
# not to be trusted for the runs with bench/unique.lua (they claim more time in slow
# requests than 16 connections had in the run), so the script ends with the latency of
# each case one request at a time (bench/latency.py, one connection, 5 s), where the
# added latency shows without queueing.
# Needs wrk, nginx, redis-server, python3 and target/release/portico.
# usage: bench/cache.sh [rounds] [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-8}
RUN=/tmp/portico-bench-cache
rm -rf "$RUN" /dev/shm/portico-bench-nginx-cache; mkdir -p "$RUN/tmp" "$RUN/redis"
sed "s#RUN#$RUN#g" bench/nginx-cache.conf >"$RUN/nginx.conf"
taskset -c 0 redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN/redis" >/dev/null &
REDIS=$!
taskset -c 1 nginx -c "$RUN/nginx.conf" 2>/dev/null &
NGINX=$!
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/cache.yaml 2>/dev/null &
GW=$!
sed -e s/18097/18099/ -e s/19097/19099/ bench/cache.yaml >"$RUN/second.yaml"
trap 'kill $GW $NGINX $REDIS ${GW2:-} 2>/dev/null' EXIT
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# measure PID NAME URL [wrk args]: one warm-up, one measured run.
measure() {
    local pid=$1 name=$2 url=$3; shift 3
    taskset -c 0 wrk -t1 -c16 -d2s "$@" "$url" >/dev/null
    local g1 g2 out
    g1=$(ticks "$pid")
    out=$(taskset -c 0 wrk -t1 -c16 -d"${SECS}"s --latency "$@" "$url")
    g2=$(ticks "$pid")
    local req rps p50 p99 non2xx cpu
    req=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}'); p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    cpu=$(awk -v t=$((g2 - g1)) -v n="$req" -v hz="$hz" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
    echo "round=$r $name req/s=$rps p50=$p50 p99=$p99 cpu_us/req=$cpu non2xx=${non2xx:-0}"
}
for r in $(seq "$ROUNDS"); do
    measure $GW "portico plain" http://127.0.0.1:18097/plain/users/123
    measure $NGINX "nginx plain" http://127.0.0.1:18098/plain/users/123
    measure $GW "portico hit" http://127.0.0.1:18097/cached/users/123
    measure $NGINX "nginx hit" http://127.0.0.1:18098/cached/users/123
    measure $GW "portico miss" "http://127.0.0.1:18097/cached/r$r/miss/" -s bench/unique.lua
    measure $NGINX "nginx miss" "http://127.0.0.1:18098/cached/r$r/miss/" -s bench/unique.lua
done
# The Redis tier: the first instance stores distinct keys (a run of unique paths three
# times as long as the measured one), then the second asks for the same paths in the same
# order, each once: a miss in its memory, a hit in Redis (its metrics say how many were).
# One Host for both, as behind a load balancer. The second instance warms its connections
# on other paths first.
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c "$RUN/second.yaml" 2>/dev/null &
GW2=$!
sleep 1
taskset -c 0 wrk -t1 -c16 -d2s -H "Host: api.test" -s bench/unique.lua "http://127.0.0.1:18099/tiered/warm/" >/dev/null
for r in $(seq "$ROUNDS"); do
    url="/tiered/t$r/"
    taskset -c 0 wrk -t1 -c16 -d$((SECS * 3))s -H "Host: api.test" -s bench/unique.lua "http://127.0.0.1:18097$url" >/dev/null
    lookups() { curl -s http://127.0.0.1:19099/metrics | awk '/^gateway_cache_lookups_total\{route="tiered",result="(hit|miss)"\}/ {print $1, $2}' | tr '\n' ' '; }
    before=$(lookups)
    g1=$(ticks "$GW2")
    out=$(taskset -c 0 wrk -t1 -c16 -d"${SECS}"s --latency -H "Host: api.test" -s bench/unique.lua "http://127.0.0.1:18099$url")
    g2=$(ticks "$GW2")
    req=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}'); p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    cpu=$(awk -v t=$((g2 - g1)) -v n="$req" -v hz="$hz" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')
    echo "round=$r portico redis-tier-hit req/s=$rps p50=$p50 p99=$p99 cpu_us/req=$cpu"
    echo "round=$r second instance lookups before: $before after: $(lookups)"
done
# Latency one request at a time (bench/latency.py on CPU 0, one connection, 5 s each).
lat() { echo "latency $1: $(taskset -c 0 python3 bench/latency.py "$2" 1 5)"; }
for r in $(seq "$ROUNDS"); do
    lat "portico plain" http://127.0.0.1:18097/plain/users/123
    lat "nginx plain" http://127.0.0.1:18098/plain/users/123
    lat "portico hit" http://127.0.0.1:18097/cached/users/123
    lat "nginx hit" http://127.0.0.1:18098/cached/users/123
    lat "portico miss" "http://127.0.0.1:18097/cached/l$r/miss/{n}"
    lat "nginx miss" "http://127.0.0.1:18098/cached/l$r/miss/{n}"
    # The first instance fills Redis with more paths than one connection asks for in 5 s.
    HOST=api.test taskset -c 0 python3 bench/latency.py "http://127.0.0.1:18097/tiered/l$r/{n}" 8 6 >/dev/null
    echo "latency portico redis-tier hit: $(HOST=api.test taskset -c 0 python3 bench/latency.py "http://127.0.0.1:18099/tiered/l$r/{n}" 1 5)"
done
echo "second instance lookups: $(lookups)"
