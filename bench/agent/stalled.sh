#!/usr/bin/env bash
# What HTTP/2 clients that stop reading make the agent hold, and whether
# healthy HTTP/2 traffic is left alone (bench/README.md, "Stalled HTTP/2
# streams"): spec.overload.maxStalledStreams and the stream idle timeout
# over flow-control stalls (agent/src/proxy/stalled.rs).
#
#   bash bench/agent/stalled.sh
#
# Per build, on a fresh agent each (two workers, tracing off, nginx as the
# HTTP/2 upstream):
# - healthy: h2load fetches a 1 MiB file HEALTHY_REQUESTS times over 10
#   connections of 100 concurrent streams each, every response read at
#   once; the responses that came back whole, the rate, and the streams
#   the agent cut (none should be);
# - stalled: CONNECTIONS connections of STREAMS streams each ask for an
#   endless download and never grant a stream more than its initial 64 KiB
#   (bench/agent/stalled_client.py), once all at once and once RAMP
#   seconds apart, each kept until HOLD seconds after the first opened; the
#   agent's peak resident memory while they stall (sampled every 100 ms),
#   its resident memory as they close and 5 s after, and the streams it cut.
#
# Knobs (environment): TRACEMESH_BIN (a prebuilt binary; else built as
# `cargo build --release` builds it), BASELINE (another tracemesh binary,
# measured the same way; BASELINE_LABEL names it), CAP (the Agent's
# spec.overload.maxStalledStreams; unset: its default), CONNECTIONS (10),
# STREAMS (200), HOLD (25), RAMP (2), HEALTHY_REQUESTS (3000).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CONNECTIONS=${CONNECTIONS:-10}
STREAMS=${STREAMS:-200}
HOLD=${HOLD:-25}
RAMP=${RAMP:-2}
HEALTHY_REQUESTS=${HEALTHY_REQUESTS:-3000}
BASELINE=${BASELINE:-}
BASELINE_LABEL=${BASELINE_LABEL:-baseline}
CAP=${CAP:-}
OUTBOUND=28201
INBOUND=28206
ADMIN=28200
H1=28280
H2=28281

log() { printf '%s stalled: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
python3 -c 'import h2' 2>/dev/null || python3 -m pip install -q --break-system-packages h2

if [ -n "${TRACEMESH_BIN:-}" ]; then
  TRACEMESH=$TRACEMESH_BIN
else
  log "building tracemesh (release)"
  (cd "$ROOT" && cargo build --release --locked --bin tracemesh)
  TRACEMESH="$ROOT/target/release/tracemesh"
fi

for port in $OUTBOUND $INBOUND $ADMIN $H1 $H2; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; stop what listens there first"
  fi
done

RUN=$(mktemp -d /tmp/tracemesh-stalled.XXXXXX)
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

mkdir -p "$RUN/tmp" "$RUN/www"
chmod 755 "$RUN"
# Endless enough: a sparse 64 GiB file, never read to its end.
truncate -s 64G "$RUN/www/endless"
head -c $((1 << 20)) /dev/urandom >"$RUN/www/1m"
cat >"$RUN/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $RUN/nginx.pid;
error_log $RUN/nginx.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN/tmp/body;
  proxy_temp_path $RUN/tmp/proxy;
  fastcgi_temp_path $RUN/tmp/fastcgi;
  uwsgi_temp_path $RUN/tmp/uwsgi;
  scgi_temp_path $RUN/tmp/scgi;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 4096;
  server {
    listen 127.0.0.1:$H1;
    listen 127.0.0.1:$H2 http2;
    root $RUN/www;
  }
}
EOF
overload=""
[ -z "$CAP" ] || overload="  overload: {maxStalledStreams: $CAP}"
cat >"$RUN/agent.yaml" <<EOF
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: stalled-v1, namespace: default}
spec:
  service: stalled
  labels: {app: stalled, version: v1}
  concurrency: 2
  inbound: {listen: "127.0.0.1:$INBOUND", app: "127.0.0.1:$H1"}
  outbound: {listen: "127.0.0.1:$OUTBOUND"}
  admin: {listen: "127.0.0.1:$ADMIN"}
  telemetry: {sampling: 0.0}
$overload
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: files, namespace: default}
spec:
  hosts: [files.bench.local]
  ports: [{number: 80, name: http2, protocol: HTTP2}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http2: $H2}}]
EOF

nginx -e "$RUN/nginx.error.log" -p "$RUN" -c "$RUN/nginx.conf" &
PIDS+=($!)

# start BIN LABEL: a fresh agent; its pid in AGENT.
start() {
  local bin=$1 label=$2
  "$bin" agent --config "$RUN/agent.yaml" >>"$RUN/agent-$label.log" 2>&1 &
  AGENT=$!
  PIDS+=("$AGENT")
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null --http2-prior-knowledge \
    -H 'host: files.bench.local' "http://127.0.0.1:$OUTBOUND/1m" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "the agent ($label) does not answer (logs: $RUN)"
    sleep 0.2
  done
}

stop() {
  kill "$AGENT"
  wait "$AGENT" 2>/dev/null || true
}

# cuts REASON: the agent's count of streams cut for REASON.
cuts() {
  curl -fsS "http://127.0.0.1:$ADMIN/metrics" |
    awk -v r="reason=\"$1\"" 'index($0, "tracemesh_agent_stalled_streams_cut_total{") == 1 && index($0, r) { n = $NF } END { print n + 0 }'
}

rss_mib() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# measure BIN LABEL: appends one row to $RUN/results.
measure() {
  local bin=$1 label=$2
  start "$bin" "$label"
  local out ok rate
  out=$(h2load -n "$HEALTHY_REQUESTS" -c 10 -m 100 -H ':authority: files.bench.local' \
    "http://127.0.0.1:$OUTBOUND/1m")
  ok=$(awk '/^status codes:/ { print $3 }' <<<"$out")
  rate=$(awk '/^finished in/ {
      rate = $NF; unit = rate; sub(/^[0-9.]+/, "", unit); sub(/[A-Za-z\/]+$/, "", rate)
      m = (unit == "GB/s") ? 1024 : (unit == "MB/s") ? 1 : (unit == "KB/s") ? 1 / 1024 : 1 / 1048576
      printf "%.0f", rate * m }' <<<"$out")
  HEALTHY_OK=$ok HEALTHY_RATE=$rate
  HEALTHY_CUTS=$(($(cuts overload) + $(cuts stream_idle_timeout)))
  stop
  log "$label healthy: $ok of $HEALTHY_REQUESTS whole, $rate MiB/s, $HEALTHY_CUTS cut"

  stall "$bin" "$label" 0
  stall "$bin" "$label" "$RAMP"
}

# stall BIN LABEL RAMP: one stalled run; appends a row to $RUN/results.
stall() {
  local bin=$1 label=$2 ramp=$3
  start "$bin" "$label"
  local idle peak=0 now=0
  idle=$(rss_mib "$AGENT")
  python3 "$ROOT/bench/agent/stalled_client.py" "$OUTBOUND" files.bench.local /endless \
    "$CONNECTIONS" "$STREAMS" "$HOLD" "$ramp" >"$RUN/client-$label.json" &
  local client=$!
  while kill -0 "$client" 2>/dev/null; do
    now=$(rss_mib "$AGENT")
    [ "$now" -le "$peak" ] || peak=$now
    sleep 0.1
  done
  wait "$client" || die "the stalled client failed (logs: $RUN)"
  local overload
  overload=$(cuts overload)
  sleep 5
  local after
  after=$(rss_mib "$AGENT")
  stop
  log "$label stalled, ${ramp}s apart: RSS $idle MiB idle, $peak MiB peak, $now MiB at the close, $after MiB 5 s after; $overload cut"
  echo "$label $ramp $HEALTHY_OK $HEALTHY_RATE $HEALTHY_CUTS $peak $now $after $overload" >>"$RUN/results"
}

measure "$TRACEMESH" agent
if [ -n "$BASELINE" ]; then measure "$BASELINE" "$BASELINE_LABEL"; fi

echo "| build | healthy: whole of $HEALTHY_REQUESTS | healthy: MiB/s | healthy: cut | ${CONNECTIONS}×${STREAMS} stalled, opened | RSS peak / at the close / 5 s after (MiB) | stalled: cut |"
echo "|---|---:|---:|---:|---|---:|---:|"
while read -r label ramp ok rate hcuts peak closing after overload; do
  opened="all at once"
  [ "$ramp" = 0 ] || opened="a connection every ${ramp} s"
  echo "| $label | $ok | $rate | $hcuts | $opened | $peak / $closing / $after | $overload |"
done <"$RUN/results"
