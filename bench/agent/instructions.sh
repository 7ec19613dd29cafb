#!/usr/bin/env bash
# Instructions per request (bench/README.md, "Instructions per request"):
# each proxy of the cost mode (the agent, the hyper floor, nginx; and
# BASELINE, another tracemesh build) runs under valgrind's callgrind while
# `tracemesh load` sends it REQUESTS requests at QPS after a warm-up, with
# the agent configured as in the cost mode (every request traced, spans to
# an OTLP sink, metrics on). Counted: every instruction the proxy's threads
# execute in user space from the first measured request to the last,
# background work (span export, timers) included, divided by the requests.
#
# The count is a property of the code, not of the host: it moves by about
# 1% between runs, where CPU time at 1000 req/s moves by 30% (cost mode),
# so a change to the request path shows here first. It does not count the
# kernel (two thirds of a request's CPU at low rates), nor, unless
# CACHE_SIM=1, cache misses.
#
#   bash bench/agent/instructions.sh
#
# Knobs (environment): REQUESTS (2000), WARMUP (500), QPS (200),
# CONNECTIONS (8), BASELINE (another tracemesh binary; BASELINE_LABEL names
# it), TRACEMESH_BIN and SINK_BIN (prebuilt binaries, as run.sh takes them),
# PATHS (a subset of: agent agent_base hyper_floor nginx), PROFILE_DIR (keep
# each proxy's callgrind profile there as PATH.callgrind, symbols mangled:
# what hot_text.sh reads), RECORD (0: write no record under bench/results),
# CACHE_SIM (1: callgrind also simulates this host's caches — 32 KiB L1
# instruction and data caches, 8-way, and its 1 MiB L2 per core as the last
# level — and each proxy's L1 misses per request are counted beside its
# instructions: the lines a request touches that the one before had let go,
# its footprint).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/support/release.sh
source "$ROOT/bench/support/release.sh"
HERE="$ROOT/bench/agent"
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-500}
QPS=${QPS:-200}
CONNECTIONS=${CONNECTIONS:-8}
BASELINE=${BASELINE:-}
BASELINE_LABEL=${BASELINE_LABEL:-$BASELINE}
PATHS=${PATHS:-agent ${BASELINE:+agent_base }hyper_floor nginx}
PROFILE_DIR=${PROFILE_DIR:-}
RECORD=${RECORD:-1}
CACHE_SIM=${CACHE_SIM:-0}
CACHE_ARGS=()
if [ "$CACHE_SIM" = 1 ]; then
  CACHE_ARGS=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64)
fi
HOST=upstream.bench.local
UPSTREAM_PORT=18080
SINK_PORT=18317

log() { printf '%s instructions: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v valgrind >/dev/null || ! command -v nginx >/dev/null; then
  log "installing valgrind and nginx"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends valgrind nginx curl python3
fi

if [ -n "${TRACEMESH_BIN:-}" ] && [ -n "${SINK_BIN:-}" ]; then
  TRACEMESH=$TRACEMESH_BIN
  SINK=$SINK_BIN
  FLOOR=$(dirname "$SINK_BIN")/hyper_floor
else
  log "building tracemesh, the OTLP sink and the hyper floor (release)"
  build_release "$ROOT" otlp_sink hyper_floor
  TRACEMESH="$RELEASE_BIN"
  SINK="$ROOT/target/release/examples/otlp_sink"
  FLOOR="$ROOT/target/release/examples/hyper_floor"
fi

for port in 18080 18001 18006 18000 18011 18016 18010 18201 18301 18317; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; stop what listens there first"
  fi
done

RUN=$(mktemp -d /tmp/tracemesh-instructions.XXXXXX)
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then log "logs kept in $RUN"; else rm -rf "$RUN"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$RUN/tmp"
for conf in upstream.nginx.conf proxy.nginx.conf; do
  sed "s|@RUN@|$RUN|g" "$HERE/$conf" >"$RUN/$conf"
done
sed -e 's|bench-client|bench-base|g; s|:18006|:18016|; s|:18001|:18011|; s|:18000|:18010|' \
  "$HERE/agent.yaml" >"$RUN/agent-base.yaml"

nginx -e "$RUN/upstream.error.log" -p "$RUN" -c "$RUN/upstream.nginx.conf" &
PIDS+=($!)
"$SINK" "127.0.0.1:$SINK_PORT" >"$RUN/sink.log" 2>&1 &
PIDS+=($!)

# ready PORT: a request through the proxy on PORT answers 200 (valgrind
# starts programs slowly).
ready() {
  local deadline=$((SECONDS + 120))
  until curl -fsS -o /dev/null --connect-to "$HOST:80:127.0.0.1:$1" "http://$HOST/1k" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing answers through 127.0.0.1:$1 after 120s (logs: $RUN)"
    sleep 0.5
  done
}

# load PORT ARGS...: `tracemesh load` through the proxy on PORT.
load() {
  local port=$1
  shift
  "$TRACEMESH" load -c "$CONNECTIONS" --json --connect-to "127.0.0.1:$port" "$@" "http://$HOST/1k" 2>/dev/null
}

# measure PATH PORT CMD...: runs CMD under callgrind, and prints the
# instructions per request of the measured window.
measure() {
  local path=$1 port=$2
  shift 2
  local out="$RUN/$path.callgrind"
  # (mangled names: hot_text.py matches them against the linker's symbols;
  # the counts are the same either way)
  valgrind --tool=callgrind "${CACHE_ARGS[@]}" --demangle=no --callgrind-out-file="$out" "$@" >"$RUN/$path.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  ready "$port"
  load "$port" -n "$WARMUP" --qps 0 >/dev/null
  callgrind_control -z "$pid" >/dev/null
  load "$port" -n "$REQUESTS" --qps "$QPS" >"$RUN/$path.json"
  callgrind_control -d "$pid" >/dev/null
  local deadline=$((SECONDS + 60))
  until [ -s "$out.1" ]; do
    [ $SECONDS -lt $deadline ] || die "callgrind wrote no dump for $path"
    sleep 0.5
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local total count
  # (awk reads to the end: leaving early would stop callgrind_annotate with
  # SIGPIPE, which pipefail makes an error)
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
  count=$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["count"] if not any(r["errors"].values()) else -1)' "$RUN/$path.json")
  [ "$count" -gt 0 ] || die "$path: requests failed (see $RUN/$path.json)"
  # With the cache simulated, the dump's summary line counts, in order:
  # Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
  local misses=""
  if [ "$CACHE_SIM" = 1 ]; then
    misses=$(awk '/^summary:/ {print $5 "\t" $6 + $7}' "$out.1")
    log "$path: $total instructions, L1 misses (instruction, data) $(echo "$misses" | tr '\t' ' ') over $count requests"
  else
    log "$path: $total instructions over $count requests"
  fi
  printf '%s\t%s\t%s\t%s\n' "$path" "$count" "$total" "$misses" >>"$RUN/results.tsv"
  if [ -n "$PROFILE_DIR" ]; then cp "$out.1" "$PROFILE_DIR/$path.callgrind"; fi
}
measures() { [[ " $PATHS " == *" $1 "* ]]; }

: >"$RUN/results.tsv"
# (valgrind runs the proxy itself: an `env` in front would be what it counts;
# TRACEMESH_HUGE_TEXT=off keeps the agent's hot text mapped from its file,
# where callgrind finds the functions' names)
export TRACEMESH_HUGE_TEXT=off
if measures agent; then
  RUST_LOG=warn measure agent 18001 "$TRACEMESH" agent --config "$HERE/agent.yaml"
fi
if [ -n "$BASELINE" ] && measures agent_base; then
  RUST_LOG=warn measure agent_base 18011 "$BASELINE" agent --config "$RUN/agent-base.yaml"
fi
if [ -x "$FLOOR" ] && measures hyper_floor; then
  measure hyper_floor 18301 "$FLOOR" 127.0.0.1:18301 "127.0.0.1:$UPSTREAM_PORT"
fi
if measures nginx; then
  measure nginx 18201 nginx -g 'master_process off;' -e "$RUN/proxy.error.log" -p "$RUN" -c "$RUN/proxy.nginx.conf"
fi
[ "$RECORD" != 0 ] || exit 0

RUN_DATE=$(date -u +%Y-%m-%d)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty" || true)
# The binaries measured, by their content (run.sh's records name them so).
BINARIES=()
if measures agent; then BINARIES+=("binary sha256 $(binary_sha "$TRACEMESH")…"); fi
if [ -n "$BASELINE" ] && measures agent_base; then
  BINARIES+=("baseline sha256 $(binary_sha "$BASELINE")…")
fi
MEASURED=$(IFS=,; echo "${BINARIES[*]:-no tracemesh binary}" | sed 's/,/, /g')
mkdir -p "$ROOT/bench/results"
# A second run on one day writes -2, -3, …: the first run's record stays.
file="$ROOT/bench/results/agent-instructions-$RUN_DATE.md"
n=2
while [ -e "$file" ]; do
  file="$ROOT/bench/results/agent-instructions-$RUN_DATE-$n.md"
  n=$((n + 1))
done
python3 - "$RUN/results.tsv" "$file" <<EOF
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
per = {path: int(total) / int(count) for path, count, total, *_ in rows}
cache = "${CACHE_SIM}" == "1"
labels = {
    "agent": "tracemesh agent (every request traced, metrics on)",
    "agent_base": "baseline: ${BASELINE_LABEL}",
    "hyper_floor": "hyper floor (examples/hyper_floor.rs)",
    "nginx": "nginx $(nginx -v 2>&1 | sed 's|.*nginx/||') (no tracing)",
}
out = [
    "## Agent instructions per request, ${RUN_DATE}",
    "",
    "Commit ${COMMIT}${DIRTY} (${MEASURED}); \`bash bench/agent/instructions.sh\` (valgrind $(valgrind --version | sed 's/valgrind-//'), callgrind):",
    "${REQUESTS} requests for 1 KiB at ${QPS} req/s over ${CONNECTIONS} connections, after ${WARMUP} unmeasured.",
    "User-space instructions of every thread of the proxy over the measured requests, per request"
    + (" (and, with CACHE_SIM=1, L1 misses in callgrind's simulation of 32 KiB 8-way L1 caches)." if cache else "."),
    "",
    "| proxy | requests | instructions per request | against nginx |" + (" L1 instruction misses per request | L1 data misses per request |" if cache else ""),
    "|---|---:|---:|---:|" + ("---:|---:|" if cache else ""),
]
for path, count, total, *misses in rows:
    against = f"{per[path] / per['nginx']:.2f}×" if "nginx" in per else "—"
    line = f"| {labels[path]} | {count} | {per[path]:,.0f} | {against} |"
    if cache:
        i1, d1 = (int(m) / int(count) for m in misses[:2])
        line += f" {i1:,.0f} | {d1:,.0f} |"
    out.append(line)
open(sys.argv[2], "w").write("\n".join(out) + "\n")
EOF
cat "$file"
log "results written to ${file#"$ROOT"/}"
