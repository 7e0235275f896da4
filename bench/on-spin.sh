#!/usr/bin/env bash
# Callbacks on a real Spin, beside the floor (bench/baseline: 200 after one key-value
# write) served by the same Spin, each round on empty stores:
#   floor  bench/baseline, one distinct key per request
#   new    a first delivery of a task never seen (a different signed URL per request)
#   news   a final delivery of a task submitted here (bench/seed.py stores the tasks as
#          a submit leaves them, bound, before the round): the everyday callback
#   dup    the same delivery again (primed once before the round)
#   forged a delivery whose sig is wrong (401 before any store operation): what the
#          component costs without its store (its 401s show under "errors")
#   readfloor  bench/baseline reading one key, the same for every request: the least
#          a receiver that recognises a repeat can do (the yardstick for dup)
#   rwfloor  bench/baseline reading a key that is not there, then writing it, a distinct
#          key per request: the least a receiver that looks before it stores a first
#          delivery can do (the yardstick for new and news)
#   varfloor  bench/baseline reading one variable (mapped from callback_secret, given as
#          the component's is) before its write: what a variable costs
#   layoutfloor  bench/baseline doing with the store what `new` does (two reads of keys
#          that are not there, one batch of four keys of about the same sizes), and
#          nothing else: what the key layout costs a first delivery, without the component
# (forged, readfloor, rwfloor, varfloor and layoutfloor run only when BENCH_SCENARIOS
# names them.)
# on Spin's default SQLite store and on Redis, at 50 connections and at 1 (on SQLite at 1
# the floor, which hands Spin its response before its body, stalls on Nagle's algorithm
# for about 40 ms on most requests: ratios to it there say nothing). Every build named
# runs in a Spin of its own, all at once (on ports from BENCH_PORT up, with SQLite files of
# their own), and each scenario runs on every build in turn, back to back, the order
# changing each round: a shared machine's drift hits every build alike. Prints
# each run, then the medians, p50/p99, Spin's CPU time per request (steadier than req/s on
# a shared machine) and the ratios to the floor measured in the same Spin. Asserts nothing.
#
# Spin runs the shipped spin.toml, its variables given as the README does
# (SPIN_VARIABLE_*, Spin's environment provider), or with BENCH_VARIABLES=flags every
# variable it declares as a `spin up --variable` flag, defaults included (Spin's static
# provider, which answers without the environment provider's block_in_place).
#
#   bench/on-spin.sh                    # everything (about 8 minutes a build)
#   BENCH_STORES=redis BENCH_CONNECTIONS=1 BENCH_ROUNDS=1 BENCH_SECONDS=5 bench/on-spin.sh
#
# Uses `spin` from PATH, else ../shared/tools/spin; wrk and redis-server from Debian
# (scripts/install-tools.sh). KLING_WEBHOOK_WASM / BASELINE_WASM bench other builds.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# Builds named relative to where the bench was started.
absolute() { for path in "$@"; do realpath -m "$path"; done; }
if [ -n "${KLING_WEBHOOK_WASM:-}" ]; then KLING_WEBHOOK_WASM="$(absolute $KLING_WEBHOOK_WASM)"; fi
if [ -n "${BASELINE_WASM:-}" ]; then BASELINE_WASM="$(absolute "$BASELINE_WASM")"; fi
cd "$root"

stores="${BENCH_STORES:-sqlite redis}"
connections="${BENCH_CONNECTIONS:-50 1}"
rounds="${BENCH_ROUNDS:-3}"
seconds="${BENCH_SECONDS:-10}"
scenarios="${BENCH_SCENARIOS:-floor new news dup}"
variables="${BENCH_VARIABLES:-env}"
case "$variables" in env | flags) ;; *) echo "BENCH_VARIABLES is env or flags" >&2; exit 1 ;; esac
base_port="${BENCH_PORT:-3987}"
redis_port="${BENCH_REDIS_PORT:-6397}"
secret="bench-callback-secret-0001"

spin="$(command -v spin || true)"
spin="${spin:-$root/../shared/tools/spin}"
[ -x "$spin" ] || { echo "no spin on PATH and none at $spin" >&2; exit 1; }
"$root/scripts/install-tools.sh"
echo "spin: $spin ($("$spin" --version))"
echo "wrk: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"

target="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "${KLING_WEBHOOK_WASM:-}" ] || [ -z "${BASELINE_WASM:-}" ]; then
  cargo build -q --release --locked --target wasm32-wasip2 -p kling-webhook -p bench-baseline
fi
# KLING_WEBHOOK_WASM may name several builds (space-separated, e.g. before and after a
# change): each runs in a Spin of its own, and every scenario runs on each in turn.
components="$(echo ${KLING_WEBHOOK_WASM:-$target/wasm32-wasip2/release/kling_webhook.wasm})"
baseline="${BASELINE_WASM:-$target/wasm32-wasip2/release/bench_baseline.wasm}"
for component in $components; do
  echo "component $(basename "$component"): $(stat -c %s "$component") bytes"
done
echo "floor: $(stat -c %s "$baseline") bytes"

work="$(mktemp -d)"
spin_pids=(); redis_pid=""
cleanup() {
  stop_spins
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The shipped spin.toml (its variables declared and mapped as users run it, values below
# from SPIN_VARIABLE_*) with build $1 as its source, and the floor beside it on routes
# of its own: Spin routes a request to the longest matching prefix.
manifest() { # $1: the component's .wasm
  python3 - "$root/spin.toml" "$1" "$baseline" <<'PY'
import json, os, sys
manifest, component, floor = sys.argv[1:]
# Spin reads a relative source from the manifest's directory, a temporary one here.
component, floor = (json.dumps(os.path.abspath(path)) for path in (component, floor))
text = open(manifest).read()
shipped = 'source = "target/wasm32-wasip2/release/kling_webhook.wasm"'
if shipped not in text:
    sys.exit(f"{manifest} no longer has {shipped}: update bench/on-spin.sh")
print(text.replace(shipped, f"source = {component}"))
for route in ("/floor/...", "/floor-read/...", "/floor-rw/...", "/floor-var/...", "/floor-layout/..."):
    print(f'[[trigger.http]]\nroute = "{route}"\ncomponent = "floor"')
print(f'[component.floor]\nsource = {floor}\nkey_value_stores = ["default"]')
# The variable every callback reads.
print('[component.floor.variables]\nprobe = "{{ callback_secret }}"')
PY
}

start_store() { # $1: sqlite | redis
  local dir="$work/$1"
  mkdir -p "$dir"
  if [ "$1" = redis ]; then
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$dir" > "$dir/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 50); do
      redis-cli -p "$redis_port" ping > /dev/null 2>&1 && break
      kill -0 "$redis_pid" 2>/dev/null || { cat "$dir/redis.log" >&2; exit 1; }
      sleep 0.1
    done
  fi
}

# The runtime config of build $2 on store $1, in $work/$1/$2/: the builds share Redis (their
# keys never meet: every key carries the build's tag), each has SQLite files of its own.
runtime_config() {
  local dir="$work/$1/$2"
  mkdir -p "$dir"
  if [ "$1" = redis ]; then
    printf '[key_value_store.%s]\ntype = "redis"\nurl = "redis://127.0.0.1:%s/%s"\n' \
      default "$redis_port" 0 index "$redis_port" 1 > "$dir/runtime.toml"
  else
    printf '[key_value_store.%s]\ntype = "spin"\npath = "%s"\n' \
      default "$dir/default.db" index "$dir/index.db" > "$dir/runtime.toml"
  fi
}

stop_store() {
  if [ -n "$redis_pid" ]; then kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true; redis_pid=""; fi
}

start_spin() { # $1: store, $2: build number, $3: the build's .wasm
  local dir="$work/$1/$2" port=$((base_port + $2))
  runtime_config "$1" "$2"
  manifest "$3" > "$dir/spin.toml"
  local values=(callback_secret="$secret" api_token=bench-api-token-000000001
    kling_api_key=bench-kling-key kling_base_url=http://127.0.0.1:9
    public_base_url="http://127.0.0.1:$port")
  local given=() flags=() value
  if [ "$variables" = flags ]; then
    # Every declared variable: these values, else spin.toml's default.
    while IFS= read -r value; do flags+=(--variable "$value"); done < <(python3 - "$root/spin.toml" "${values[@]}" <<'PY'
import sys, tomllib
declared = tomllib.load(open(sys.argv[1], "rb"))["variables"]
given = dict(value.split("=", 1) for value in sys.argv[2:])
for name, spec in declared.items():
    print(f"{name}={given.get(name, spec.get('default', ''))}")
PY
)
  else
    for value in "${values[@]}"; do
      given+=("SPIN_VARIABLE_$(echo "${value%%=*}" | tr a-z A-Z)=${value#*=}")
    done
  fi
  # Only these values: none inherited from the caller's shell. RUST_BACKTRACE (set on
  # some machines) would have Spin capture a backtrace with every error it builds, as no
  # deployment does.
  local inherited=()
  for value in $(compgen -e | grep '^SPIN_VARIABLE_' || true); do inherited+=(-u "$value"); done
  env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "${inherited[@]}" "${given[@]}" \
    "$spin" up --from "$dir/spin.toml" --runtime-config-file "$dir/runtime.toml" \
    --listen "127.0.0.1:$port" "${flags[@]}" > "$dir/spin.log" 2>&1 &
  spin_pids[$2]=$!
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/floor/ready" && return 0
    sleep 0.2
  done
  echo "spin did not start:" >&2; cat "$dir/spin.log" >&2; exit 1
}

stop_spins() {
  local pid
  for pid in "${spin_pids[@]}"; do
    kill "$pid" 2>/dev/null || echo "(a spin had exited)" >&2
    wait "$pid" 2>/dev/null || true
  done
  spin_pids=()
}

# CPU time (user + system, in clock ticks) so far of build $1's Spin process serving
# requests: `spin up` runs the HTTP trigger as its child.
spin_cpu_ticks() {
  local pid; pid="$(pgrep -P "${spin_pids[$1]}" | head -1 || true)"
  awk '{print $14 + $15}' "/proc/${pid:-${spin_pids[$1]}}/stat"
}

# One wrk run on build $1: $2 connections, $3 lines file, $4 path prefix. Prints RESULT,
# with cpu_us: Spin's CPU time per request served, in microseconds.
run_wrk() {
  local threads=2; [ "$2" = 1 ] && threads=1
  local before after result
  before="$(spin_cpu_ticks "$1")"
  result="$(BENCH_LINES="$3" BENCH_PREFIX="$4" BENCH_THREADS="$threads" wrk -t"$threads" -c"$2" \
    -d"${seconds}s" --latency -s "$root/bench/lines.lua" "http://127.0.0.1:$((base_port + $1))" \
    | grep '^RESULT' || true)"
  after="$(spin_cpu_ticks "$1")"
  local served="${result##*requests=}"
  echo "$result cpu_us=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / (served > 0 ? served : 1) ))"
}

results="$work/results"
: > "$results"
read -r -a builds <<< "$components"
# Results are keyed by file name.
if [ "$(for c in "${builds[@]}"; do basename "$c"; done | sort | uniq -d)" ]; then
  echo "give the builds in KLING_WEBHOOK_WASM different file names" >&2; exit 1
fi
for store in $stores; do
  start_store "$store"
  for b in "${!builds[@]}"; do start_spin "$store" "$b" "${builds[$b]}"; done
  for round in $(seq 1 "$rounds"); do
    # Rotate which build goes first.
    order="$(for i in "${!builds[@]}"; do echo $(((i + round - 1) % ${#builds[@]})); done)"
    # Each round starts on empty stores: one grown by the rounds before (Redis rehashing a
    # keyspace of millions, a SQLite table of millions of rows) is noise.
    if [ "$store" = redis ]; then
      redis-cli -p "$redis_port" flushall > /dev/null
    else
      for db in "$work/sqlite/"*/*.db; do
        [ -e "$db" ] || continue
        python3 -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("DELETE FROM spin_key_value")
db.commit()' "$db"
      done
    fi
    for conns in $connections; do
      lines=$(( conns == 1 ? 40000 : 120000 ))
      for b in $order; do
        tag="${store:0:1}${conns}r${round}b${b}"
        dir="$work/$store/$b"
        python3 "$root/bench/requests.py" new "f$tag" "$lines" "$secret" > "$dir/floor.lines"
        python3 "$root/bench/requests.py" new "n$tag" "$lines" "$secret" > "$dir/new.lines"
        python3 "$root/bench/requests.py" dup "d$tag" 1 "$secret" > "$dir/dup.lines"
        if [[ " $scenarios " == *" news "* ]]; then
          python3 "$root/bench/requests.py" new "s$tag" "$lines" "$secret" > "$dir/news.lines"
          if [ "$store" = redis ]; then
            python3 "$root/bench/seed.py" "s$tag" "$lines" redis "$redis_port"
          else
            python3 "$root/bench/seed.py" "s$tag" "$lines" sqlite "$dir"
          fi
        fi
        python3 "$root/bench/requests.py" dup "x$tag" 1 "not-the-secret" > "$dir/forged.lines"
        cp "$dir/dup.lines" "$dir/readfloor.lines"
        cp "$dir/floor.lines" "$dir/rwfloor.lines"
        cp "$dir/floor.lines" "$dir/varfloor.lines"
        cp "$dir/floor.lines" "$dir/layoutfloor.lines"
        IFS=$'\t' read -r dup_path dup_body < "$dir/dup.lines"
        for prime in "" /floor; do
          curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
            --data "$dup_body" "http://127.0.0.1:$((base_port + b))$prime$dup_path"
        done
      done
      # The seeded files reach the disk now, not during the runs (SQLite's waits on the
      # disk are what its figures measure).
      sync
      for scenario in $scenarios; do
        case "$scenario" in
          floor) prefix="/floor" ;;
          readfloor) prefix="/floor-read" ;;
          rwfloor) prefix="/floor-rw" ;;
          varfloor) prefix="/floor-var" ;;
          layoutfloor) prefix="/floor-layout" ;;
          *) prefix="" ;;
        esac
        for b in $order; do
          name="$(basename "${builds[$b]}" .wasm)"
          line="$(run_wrk "$b" "$conns" "$work/$store/$b/$scenario.lines" "$prefix")"
          if [[ "$line" != RESULT* ]]; then
            echo "$store c=$conns round $round $name $scenario: wrk gave no result" >&2
            continue
          fi
          echo "$store c=$conns round $round $name $scenario: ${line#RESULT }"
          echo "$store $conns $name $scenario ${line#RESULT }" >> "$results"
        done
      done
    done
  done
  stop_spins
  stop_store
done

echo
echo "medians of $rounds round(s) of ${seconds}s (p50/p99 are the medians of the rounds')"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    store, conns, name, scenario, *fields = line.split()
    f = dict(x.split("=") for x in fields)
    rows.setdefault((store, conns, name, scenario), []).append(f)
print(f"{'store':6} {'conns':>5} {'component':16} {'scenario':11} {'req/s':>7} {'x floor':>7} {'p50 ms':>7} {'x floor':>7} {'p99 ms':>7} {'errors':>6} {'cpu us':>6} {'x floor':>7}")
for (store, conns, name, scenario), fs in rows.items():
    med = lambda fs, k: statistics.median(float(f[k]) for f in fs)
    floor = rows.get((store, conns, name, "floor"))
    errs = sum(int(f["errors"]) + int(f["non2xx"]) for f in fs)
    ratio = lambda k: f"{med(fs, k) / med(floor, k):7.2f}" if floor else f"{'-':>7}"
    wraps = sum(int(f["wraps"]) for f in fs)
    note = " (ran out of distinct tasks)" if wraps and scenario in ("floor", "rwfloor", "varfloor", "layoutfloor", "new", "news") else ""
    print(f"{store:6} {conns:>5} {name[:16]:16} {scenario:11} {med(fs, 'rps'):7.0f} "
          f"{ratio('rps')} {med(fs, 'p50_us') / 1000:7.2f} "
          f"{ratio('p50_us')} {med(fs, 'p99_us') / 1000:7.2f} {errs:6} "
          f"{med(fs, 'cpu_us'):6.0f} {ratio('cpu_us')}{note}")
PY
