#!/usr/bin/env bash
# Everything the tests and the benchmark need beyond the Rust toolchain, each pinned or
# from Debian; a no-op when it is all there (CI runs it every time).
#   - the wasm32-wasip2 target: rust-toolchain.toml names it, but rustup may not add it
#     to a toolchain that was installed before (our machines: Rust 1.95.0 without the
#     target, and RUSTUP_AUTO_INSTALL=0)
#   - redis-server (Debian): the real-Spin suite's two-instance run on a shared Redis
#   - wrk (Debian): bench/on-spin.sh's load generator
#   - schemathesis, pinned with its dependencies (scripts/schemathesis-constraints.txt),
#     in a virtualenv outside the clone: the real-Spin suite's fuzzer
# Prints nothing but what it installs.
set -euo pipefail
# The repository's rust-toolchain.toml decides which toolchain gets the target.
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
# The suite looks here (or at $KLING_WEBHOOK_VENV).
VENV="${KLING_WEBHOOK_VENV:-$HOME/.cache/kling-webhook/venv-schemathesis-$SCHEMATHESIS_VERSION}"

if command -v rustup > /dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

missing=()
command -v wrk > /dev/null || missing+=(wrk)
command -v redis-server > /dev/null || missing+=(redis-server)
# Debian's python3 needs python3-venv for `python3 -m venv`.
python3 -c 'import ensurepip, venv' 2> /dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then apt=(apt-get); else apt=(sudo apt-get); fi
    "${apt[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${missing[@]}"
fi

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        -c scripts/schemathesis-constraints.txt "schemathesis==$SCHEMATHESIS_VERSION"
fi
