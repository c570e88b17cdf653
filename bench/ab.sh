#!/usr/bin/env bash
# A/B of Portico builds on the same core: each binary is started in turn on bench/portico.yaml
# (port 18090), measured with cpu.sh, stopped; nginx (18081, started by ../shared/bench/run.sh
# start) is measured in every round for reference. Pins the gateway to CPU 1.
# usage: ab.sh ROUNDS BINARY... -> one cpu.sh line per binary and round, then nginx's
set -u
cd "$(dirname "$0")/.."
ROUNDS=$1; shift
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    pkill -f "run -c bench/portico.yaml"; sleep 0.3
    TOKIO_WORKER_THREADS=1 taskset -c 1 "$bin" run -c bench/portico.yaml >/dev/null 2>&1 &
    sleep 0.7
    echo "$bin $(bash bench/cpu.sh 18090)"
  done
  echo "nginx $(bash bench/cpu.sh 18081)"
done
pkill -f "run -c bench/portico.yaml"
