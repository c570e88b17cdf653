#!/usr/bin/env bash
# Runs the cargo fuzz targets of fuzz/ for SECONDS each (default 30), one after the other,
# on the committed corpus (fuzz/corpus/TARGET, read only: new inputs go to a scratch
# directory), and fails on the first crash, timeout or out-of-memory. Prints one line per
# target: executions, coverage (cov: edges, ft: features) and time. docs/fuzzing.md says
# what each target checks.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      # every target when none is named
#
# Installs what it needs on a fresh Debian/Ubuntu machine: a C/C++ compiler (libFuzzer is
# C++), rustup and its nightly toolchain (cargo fuzz needs -Z flags), cargo-fuzz.
# FUZZ_TARGET_DIR picks the build directory (default fuzz/target); FUZZ_KEEP keeps the
# scratch directory (grown corpus, logs, crash inputs) at that path.
set -euo pipefail

secs=${1:-30}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v c++ >/dev/null; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq build-essential curl ca-certificates >/dev/null
fi
if ! command -v rustup >/dev/null; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked

target_dir=${FUZZ_TARGET_DIR:-$root/fuzz/target}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd "$root" && cargo +nightly fuzz list)
fi

work=${FUZZ_KEEP:-$(mktemp -d)}
mkdir -p "$work"
[ -n "${FUZZ_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

cd "$root"
echo "building ${#targets[@]} targets (first build: 15 min on 2 cores)" >&2
cargo +nightly fuzz build -O --target-dir "$target_dir" >&2

failed=0
for t in "${targets[@]}"; do
  case $t in
    h1_* | content_length) dict=(-dict="$root/fuzz/dict/http.dict") ;;
    config) dict=(-dict="$root/fuzz/dict/yaml.dict") ;;
    *) dict=() ;;
  esac
  mkdir -p "$work/$t/corpus" "$work/$t/run" "$root/fuzz/corpus/$t"
  start=$(date +%s)
  # -jobs=1 -workers=1: one fuzzing process, its output in fuzz-0.log.
  if (cd "$work/$t/run" && cargo +nightly fuzz run -O --fuzz-dir "$root/fuzz" --target-dir "$target_dir" "$t" \
    "$work/$t/corpus" "$root/fuzz/corpus/$t" -- \
    "${dict[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -jobs=1 -workers=1 \
    -print_final_stats=1 -artifact_prefix="$work/$t/" >"$work/$t/cargo.log" 2>&1); then
    status=ok
  else
    status=FAILED
    failed=1
  fi
  log="$work/$t/run/fuzz-0.log"
  took=$(($(date +%s) - start))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
  echo "$t: $status, ${runs:-?} executions, ${cov:-cov: ?}, ${took}s"
  if [ $status = FAILED ]; then
    grep -m1 -B2 -A20 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer' "$log" || tail -n 40 "$log" "$work/$t/cargo.log"
    ls "$work/$t"/crash-* "$work/$t"/timeout-* "$work/$t"/oom-* 2>/dev/null || true
    break
  fi
done
exit $failed
