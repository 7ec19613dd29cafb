#!/usr/bin/env bash
# What the whole `tracemesh demo` costs at its default load (10 connections
# at 10 qps to productpage, the article's `fortio load -c 10 -qps 10`): the
# resident memory and CPU of the one demo process, which holds the
# collector, seven sidecar agents, Bookinfo's applications and the load
# generator.
#
#   bench/demo/cost.sh [MEASURE_SECONDS] [-- extra demo flags]
#
# Builds the release binary, starts the demo on free ports, lets it warm up,
# then samples /proc every second for MEASURE_SECONDS (default 60): CPU as
# utime+stime over the window, RSS as mean and max of VmRSS, and VmHWM.
# Prints one Markdown table row for bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

MEASURE=${1:-60}
shift || true
[ "${1:-}" = "--" ] && shift
WARMUP=${WARMUP:-15}

cargo build --release --quiet
BIN=target/release/tracemesh
DATA=$(mktemp -d)
OUT=$DATA/demo.out
trap 'kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT

"$BIN" demo --ui-port 0 --data-dir "$DATA/data" --report-every 10s "$@" >"$OUT" 2>"$DATA/demo.err" &
PID=$!
for _ in $(seq 1 600); do
  grep -q '^demo ready ' "$OUT" 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$DATA/demo.err" >&2; exit 1; }
  sleep 0.1
done
grep -q '^demo ready ' "$OUT" || { echo "demo not ready" >&2; exit 1; }
sleep "$WARMUP"

HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
T0=$(ticks); S0=$(date +%s.%N)
SUM=0; MAX=0; N=0
for _ in $(seq 1 "$MEASURE"); do
  sleep 1
  R=$(rss_kib); SUM=$((SUM + R)); N=$((N + 1)); [ "$R" -gt "$MAX" ] && MAX=$R
done
T1=$(ticks); S1=$(date +%s.%N)
HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")
THREADS=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

kill -TERM "$PID"
wait "$PID"
trap 'rm -rf "$DATA"' EXIT
DONE=$(grep '^demo done ' "$OUT" || true)
QPS=$(sed -n 's/.* qps=\([0-9.]*\).*/\1/p' <<<"$DONE")
P99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$DONE")

awk -v t0="$T0" -v t1="$T1" -v s0="$S0" -v s1="$S1" -v hz="$HZ" \
    -v sum="$SUM" -v n="$N" -v max="$MAX" -v hwm="$HWM" -v threads="$THREADS" \
    -v qps="$QPS" -v p99="$P99" -v load="$LOAD" -v measure="$MEASURE" '
BEGIN {
  cpu = (t1 - t0) / hz / (s1 - s0) * 100
  printf "| %s | %d s | %.1f | %.2f | %.1f%% | %.0f | %.0f | %.0f | %d | %s |\n",
    strftime("%Y-%m-%d"), measure, qps, p99, cpu, sum / n / 1024, max / 1024, hwm / 1024, threads, load
}'
echo "(date | window | load req/s | load p99 ms | CPU (% of one core) | RSS mean MiB | RSS max MiB | VmHWM MiB | threads | loadavg)" >&2
