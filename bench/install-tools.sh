#!/usr/bin/env bash
# Debian's wrk and redis-server, for bench/on-spin.sh (no-op when both are there).
set -euo pipefail
missing=()
command -v wrk > /dev/null || missing+=(wrk)
command -v redis-server > /dev/null || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then apt=(apt-get); else apt=(sudo apt-get); fi
"${apt[@]}" update -qq
DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${missing[@]}"
