#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what the tests need when it is missing:
# curl and h2load (real HTTP/2 client), openssl (an independent TLS client and certificate
# tool for the listener TLS tests), ca-certificates (system roots for the TLS tests),
# Python with PyJWT and cryptography (tokens and keys minted independently of the gateway),
# Chromium (a real browser runs the CORS check; headless, about 145 MB, ~30 s to install),
# redis-server (the shared store of the revocation, rate-limit and cluster tests; started by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v python3 >/dev/null || need+=(python3 python3-jwt python3-cryptography)
command -v chromium >/dev/null || need+=(chromium)
command -v redis-server >/dev/null || need+=(redis-server)
# redis-cli (from redis-tools, which redis-server depends on) builds the test cluster.
command -v redis-cli >/dev/null || need+=(redis-tools)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi

if ! python3 -c "import jwt, cryptography" 2>/dev/null; then
    echo "installing: PyJWT and cryptography for python3"
    python3 -m pip install --quiet pyjwt cryptography 2>/dev/null || {
        SUDO=""
        [ "$(id -u)" = 0 ] || SUDO="sudo"
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-jwt python3-cryptography
    }
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The fuzz targets (fuzz/, outside the workspace) still type-check against the crates: a
# change to a parser's types must not break them unseen. Stable toolchain, no libFuzzer run
# (scripts/fuzz.sh runs them, on nightly); about 2 minutes.
cargo check --manifest-path fuzz/Cargo.toml --bins --locked
