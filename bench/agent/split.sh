#!/usr/bin/env bash
# Where a request's CPU goes at a fixed rate (bench/README.md, "Kernel and
# user time per request"): for the agent (configured as in the cost mode:
# every request traced, spans to an OTLP sink, metrics on), the hyper floor
# and nginx, one after another, each loaded by `tracemesh load` at QPS for
# DURATION and pinned as run.sh pins them (the proxy on CPU 1, everything
# else on CPU 0). Per request: the proxy's time on CPU (run.sh's measure:
# /proc/PID/task/*/schedstat), shared between user space and the kernel as
# `perf record`'s cpu-clock samples of the same run fall (utime and stime
# would not do: with tick accounting they are a 250 Hz sample that wakeups
# bias towards the kernel); its system calls and its context switches
# (`perf stat`, raw_syscalls:sys_enter and context-switches). perf needs
# root or perf_event_paranoid ≤ 1.
#
# System calls and context switches per request are properties of the code;
# the split of CPU time moves with the host as CPU time does (run.sh's cost
# mode: ±30% between runs at 1000 req/s), so read it within one run.
#
#   bash bench/agent/split.sh
#
# Knobs (environment): QPS (1000), DURATION (20s), CONNECTIONS (8), ROUNDS
# (2), TRACEMESH_BIN and SINK_BIN (prebuilt binaries, as run.sh takes them;
# the hyper floor is taken from beside SINK_BIN).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/support/release.sh
source "$ROOT/bench/support/release.sh"
HERE="$ROOT/bench/agent"
QPS=${QPS:-1000}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-8}
ROUNDS=${ROUNDS:-2}
HOST=upstream.bench.local
UPSTREAM_PORT=18080
SINK_PORT=18317

log() { printf '%s split: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

command -v perf >/dev/null || die "perf is needed (Debian: linux-perf)"
command -v nginx >/dev/null || die "nginx is needed (Debian: nginx-light)"
[ "$(nproc)" -ge 2 ] || die "two CPUs are needed for the pinning"

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
[ -x "$FLOOR" ] || die "no hyper_floor beside the OTLP sink at $FLOOR"

for port in 18080 18001 18006 18000 18201 18301 18317; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; stop what listens there first"
  fi
done

RUN=$(mktemp -d /tmp/tracemesh-split.XXXXXX)
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

# start CPU CMD...: runs CMD pinned, in the background.
start() {
  local cpu=$1
  shift
  taskset -c "$cpu" "$@" >>"$RUN/processes.log" 2>&1 &
  PIDS+=($!)
}

start 0 nginx -e "$RUN/upstream.error.log" -p "$RUN" -c "$RUN/upstream.nginx.conf"
start 0 "$SINK" "127.0.0.1:$SINK_PORT"
start 1 env RUST_LOG=warn "$TRACEMESH" agent --config "$HERE/agent.yaml"
AGENT_PID=${PIDS[-1]}
start 1 "$FLOOR" "127.0.0.1:18301" "127.0.0.1:$UPSTREAM_PORT"
FLOOR_PID=${PIDS[-1]}
start 1 nginx -e "$RUN/proxy.error.log" -p "$RUN" -c "$RUN/proxy.nginx.conf"
NGINX_PID=${PIDS[-1]}

ready() {
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null --connect-to "$HOST:80:127.0.0.1:$1" "http://$HOST/1k" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing answers through 127.0.0.1:$1 after 30s (logs: $RUN)"
    sleep 0.2
  done
}
for port in 18001 18301 18201; do ready "$port"; done

# The pids of a proxy: the process, and nginx's worker beside its master.
pids_of() { echo "$1" $(pgrep -P "$1" || true) | tr ' ' ','; }

# cpu_ns PIDS: time on CPU of every thread of PIDS (comma-separated), in ns.
cpu_ns() {
  local total=0 pid f ns rest
  for pid in ${1//,/ }; do
    for f in /proc/"$pid"/task/*/schedstat; do
      read -r ns rest <"$f"
      total=$((total + ns))
    done
  done
  echo "$total"
}

: >"$RUN/results.tsv"
measure() {
  local round=$1 path=$2 port=$3 pids=$4 before after stat record
  # A warm-up at the rate, unmeasured: connections opened, caches in their
  # steady state.
  taskset -c 0 "$TRACEMESH" load -c "$CONNECTIONS" --qps "$QPS" -t 3s \
    --connect-to "127.0.0.1:$port" "http://$HOST/1k" >/dev/null 2>&1
  before=$(cpu_ns "$pids")
  perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "$pids" -o "$RUN/$path.perf" &
  stat=$!
  perf record -q -e cpu-clock -F 4000 -p "$pids" -o "$RUN/$path.data" >/dev/null 2>&1 &
  record=$!
  taskset -c 0 "$TRACEMESH" load -c "$CONNECTIONS" --qps "$QPS" -t "$DURATION" --json \
    --connect-to "127.0.0.1:$port" "http://$HOST/1k" >"$RUN/$path.json" 2>/dev/null
  kill -INT "$stat" "$record"
  wait "$stat" "$record" || true
  after=$(cpu_ns "$pids")
  perf report -q -i "$RUN/$path.data" --sort dso -g none --percentage relative 2>/dev/null \
    | awk '/\[kernel/ {k += $1} END {print k + 0}' >"$RUN/$path.kernel"
  python3 - "$round" "$path" "$RUN/$path.json" "$RUN/$path.perf" \
    "$((after - before))" "$(cat "$RUN/$path.kernel")" \
    >>"$RUN/results.tsv" <<'EOF'
import json, sys
round_, path, report, perf, cpu_ns, kernel_pct = sys.argv[1:]
r = json.load(open(report))
if any(r["errors"].values()) or r["count"] == 0:
    sys.exit(f"{path}: requests failed ({report})")
counts = {}
for line in open(perf):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].replace(".", "").isdigit():
        counts[fields[2]] = float(fields[0])
n = r["count"]
total_us = int(cpu_ns) / 1000 / n
kernel_us = total_us * float(kernel_pct) / 100
print("\t".join(str(v) for v in (round_, path, n, total_us - kernel_us, kernel_us,
      counts["raw_syscalls:sys_enter"] / n, counts["context-switches"] / n)))
EOF
}

for round in $(seq "$ROUNDS"); do
  measure "$round" agent 18001 "$(pids_of "$AGENT_PID")"
  measure "$round" hyper_floor 18301 "$(pids_of "$FLOOR_PID")"
  measure "$round" nginx 18201 "$(pids_of "$NGINX_PID")"
  log "round $round done"
done

python3 - "$RUN/results.tsv" "$QPS" "$DURATION" "$CONNECTIONS" <<'EOF'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
qps, duration, connections = sys.argv[2:]
labels = {"agent": "tracemesh agent (every request traced, metrics on)",
          "hyper_floor": "hyper floor (examples/hyper_floor.rs)",
          "nginx": "nginx (no tracing)"}
print(f"Per request at {qps} req/s, {connections} connections, {duration} per round; "
      f"medians of {len(rows) // 3} rounds:\n")
print("| proxy | user (µs) | kernel (µs) | total (µs) | system calls | context switches |")
print("|---|---:|---:|---:|---:|---:|")
for path in ("agent", "hyper_floor", "nginx"):
    mine = [r for r in rows if r[1] == path]
    med = lambda i: statistics.median(float(r[i]) for r in mine)
    print(f"| {labels[path]} | {med(3):.1f} | {med(4):.1f} | {med(3) + med(4):.1f} "
          f"| {med(5):.2f} | {med(6):.2f} |")
EOF
