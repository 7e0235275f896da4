#!/usr/bin/env bash
# Composes the example with kling-webhook into one component, the `wac plug` way:
#   examples/pipeline-starter/compose.sh  ->  target/pipeline_starter_composed.wasm
# (under $CARGO_TARGET_DIR instead of target/ when that is set)
# The host tests do the same composition with the `wac-graph` library (the one `wac`
# is built on), so CI never needs this tool; this script is for shipping the file.
set -euo pipefail
cd "$(dirname "$0")/../.."

WAC_VERSION=0.12.0
if ! wac --version 2>/dev/null | grep -q "$WAC_VERSION"; then
    cargo install wac-cli --version "$WAC_VERSION" --locked
fi

cargo build --release --target wasm32-wasip2 -p kling-webhook -p pipeline-starter
target="${CARGO_TARGET_DIR:-target}"
release="$target/wasm32-wasip2/release"
wac plug --plug "$release/kling_webhook.wasm" "$release/pipeline_starter.wasm" \
    -o "$target/pipeline_starter_composed.wasm"
echo "$target/pipeline_starter_composed.wasm"
