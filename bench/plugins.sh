#!/usr/bin/env bash
# What plugins cost in the plain-proxy run: Portico without plugins (bench/portico.yaml,
# port 18090) against Portico checking an ES256 token on every request
# (bench/portico-jwt.yaml: port 18091 with the verified-token cache off, 18092 with it on),
# and against a rate limit checked on every request (bench/portico-ratelimit.yaml, 18093:
# a token bucket per client IP, high enough never to refuse). Needs the benchmark backend on 127.0.0.1:18080 (../shared/bench),
# wrk, python3 with PyJWT, and target/release/portico. Each proxy is pinned to CPU 1 with
# one worker thread; wrk runs on CPU 0. Prints req/s and CPU us/req per round.
# usage: bench/plugins.sh [rounds] [secs]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}; SECS=${2:-8}
KEYS=$(mktemp -d)
python3 tests/it/jwt_tool.py keys "$KEYS"
NOW=$(date +%s)
TOKEN=$(echo "[{\"alg\":\"ES256\",\"key\":\"$KEYS/ec256.key\",\"headers\":{\"kid\":\"ec\"},\"claims\":{\"iss\":\"https://idp.bench\",\"aud\":\"api\",\"sub\":\"user-123\",\"iat\":$NOW,\"exp\":$((NOW + 86400)),\"roles\":[\"reader\"],\"scope\":\"orders:read\"}}]" | python3 tests/it/jwt_tool.py mint)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$KEYS"' EXIT
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/portico.yaml 2>/dev/null & pids+=($!)
BENCH_KEYS=$KEYS TOKEN_CACHE=0 TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/portico-jwt.yaml 2>/dev/null & pids+=($!)
sleep 1
sed 's/18091/18092/; s/19091/19092/' bench/portico-jwt.yaml > "$KEYS/cached.yaml"
BENCH_KEYS=$KEYS TOKEN_CACHE=10000 TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c "$KEYS/cached.yaml" 2>/dev/null & pids+=($!)
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/portico run -c bench/portico-ratelimit.yaml 2>/dev/null & pids+=($!)
sleep 1
curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" http://127.0.0.1:18091/api/users/123
curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" http://127.0.0.1:18092/api/users/123
measure() { # name port header...
    local name=$1 port=$2; shift 2
    local pid; pid=$(ss -ltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    taskset -c 0 wrk -t1 -c64 -d2s "$@" "http://127.0.0.1:$port/api/users/123" >/dev/null
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    local out; out=$(taskset -c 0 wrk -t1 -c64 -d"${SECS}"s "$@" "http://127.0.0.1:$port/api/users/123")
    read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    local req rps; req=$(echo "$out" | awk '/requests in/ {print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    local non2xx; non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    printf '%-14s rps %9s  cpu_us_per_req %6s  non2xx %s\n' "$name" "$rps" \
        "$(echo "scale=2; ($u2-$u1+$s2-$s1)*10000/$req" | bc)" "${non2xx:-0}"
}
for r in $(seq "$ROUNDS"); do
    echo "round $r"
    measure plain 18090
    measure jwt-es256 18091 -H "Authorization: Bearer $TOKEN"
    measure jwt-cached 18092 -H "Authorization: Bearer $TOKEN"
    measure rate-limit 18093
done
