#!/usr/bin/env bash
# One HTTP/2 stream's throughput through the agent (bench/README.md, "HTTP/2
# windows"): what the flow-control windows the agent grants
# (agent/src/proxy/flow_control.rs) let a single download and a single
# upload reach. The client speaks HTTP/2 cleartext to the agent's outbound
# listener; the agent speaks HTTP/2 to nginx for the download (a port
# declared HTTP2, so the agent's upstream stream window paces it) and
# HTTP/1.1 for the upload (nginx's WebDAV PUT, which reads the whole body,
# so the agent's downstream stream window paces it). Tracing off: the
# windows are what is measured.
#
#   bash bench/agent/h2_window.sh
#
# Download: h2load fetches a 64 MiB file DOWNLOADS times over one stream;
# upload: curl PUTs a 32 MiB file UPLOADS times (the time includes nginx
# writing it to disk). Rates in MiB/s. The agent runs on core 1,
# nginx and the clients on core 0. Each round runs every build once, in
# turn; the table gives each build's median over ROUNDS rounds and the
# range. Loopback has a round trip of tens of microseconds, so a window
# that paces a stream here paces it more on a real network.
#
# Knobs (environment): TRACEMESH_BIN (a prebuilt binary; else built as
# `cargo build --release` builds it), BASELINE (another tracemesh binary,
# measured in the same rounds; BASELINE_LABEL names it), ROUNDS (5),
# DOWNLOADS (20), UPLOADS (10).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-5}
DOWNLOADS=${DOWNLOADS:-20}
UPLOADS=${UPLOADS:-10}
BASELINE=${BASELINE:-}
BASELINE_LABEL=${BASELINE_LABEL:-baseline}
OUTBOUND=28101
INBOUND=28106
ADMIN=28100
H1=28180
H2=28181

log() { printf '%s h2_window: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

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

RUN=$(mktemp -d /tmp/tracemesh-h2-window.XXXXXX)
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

mkdir -p "$RUN/tmp" "$RUN/www/put"
# nginx's workers (nobody) read the file and write the uploads.
chmod 755 "$RUN"
chmod 777 "$RUN/www/put"
head -c $((64 << 20)) /dev/urandom >"$RUN/www/big"
head -c $((32 << 20)) /dev/urandom >"$RUN/up"
cat >"$RUN/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $RUN/nginx.pid;
error_log $RUN/nginx.error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $RUN/tmp/body;
  proxy_temp_path $RUN/tmp/proxy;
  fastcgi_temp_path $RUN/tmp/fastcgi;
  uwsgi_temp_path $RUN/tmp/uwsgi;
  scgi_temp_path $RUN/tmp/scgi;
  keepalive_requests 1000000;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$H1;
    listen 127.0.0.1:$H2 http2;
    root $RUN/www;
    location /put/ { dav_methods PUT; client_body_buffer_size 1m; }
  }
}
EOF
cat >"$RUN/agent.yaml" <<EOF
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: h2-window-v1, namespace: default}
spec:
  service: h2-window
  labels: {app: h2-window, version: v1}
  concurrency: 1
  inbound: {listen: "127.0.0.1:$INBOUND", app: "127.0.0.1:$H1"}
  outbound: {listen: "127.0.0.1:$OUTBOUND"}
  admin: {listen: "127.0.0.1:$ADMIN"}
  telemetry: {sampling: 0.0}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: download, namespace: default}
spec:
  hosts: [download.bench.local]
  ports: [{number: 80, name: http2, protocol: HTTP2}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http2: $H2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: upload, namespace: default}
spec:
  hosts: [upload.bench.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: $H1}}]
EOF

taskset -c 0 nginx -e "$RUN/nginx.error.log" -p "$RUN" -c "$RUN/nginx.conf" &
PIDS+=($!)

# run BIN LABEL: one round of BIN; appends "LABEL download upload" (MB/s)
# to $RUN/results.
run() {
  local bin=$1 label=$2
  taskset -c 1 "$bin" agent --config "$RUN/agent.yaml" >"$RUN/agent-$label.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null --http2-prior-knowledge -r 0-0 \
    -H 'host: download.bench.local' "http://127.0.0.1:$OUTBOUND/big" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "the agent ($label) does not answer (logs: $RUN)"
    sleep 0.2
  done
  # h2load's summary: "finished in 1.23s, 12.34 req/s, 789.01MB/s", its
  # units powers of 1024 (MB/s is MiB/s); it exits 0 whatever the answers.
  local out down
  out=$(taskset -c 0 h2load -n "$DOWNLOADS" -c 1 -m 1 -H ':authority: download.bench.local' \
    "http://127.0.0.1:$OUTBOUND/big")
  grep -q "status codes: $DOWNLOADS 2xx" <<<"$out" || die "downloads through $label failed: $out"
  down=$(awk '/^finished in/ {
      rate = $NF; unit = rate; sub(/^[0-9.]+/, "", unit); sub(/[A-Za-z\/]+$/, "", rate)
      m = (unit == "GB/s") ? 1024 : (unit == "MB/s") ? 1 : (unit == "KB/s") ? 1 / 1024 : 1 / 1048576
      printf "%.0f", rate * m }' <<<"$out")
  [ -n "$down" ] || die "no rate in h2load's summary: $out"
  # Each upload is deleted once timed (nginx writes it to disk first).
  local started ended
  started=$(date +%s.%N)
  for i in $(seq "$UPLOADS"); do
    taskset -c 0 curl -fsS -o /dev/null --http2-prior-knowledge -H 'host: upload.bench.local' \
      -T "$RUN/up" "http://127.0.0.1:$OUTBOUND/put/$label-$i"
    rm -f "$RUN/www/put/$label-$i"
  done
  ended=$(date +%s.%N)
  local up
  up=$(awk -v n="$UPLOADS" -v a="$started" -v b="$ended" 'BEGIN { printf "%.0f", n * 32 / (b - a) }')
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  log "$label: download $down MiB/s, upload $up MiB/s"
  echo "$label $down $up" >>"$RUN/results"
}

for round in $(seq "$ROUNDS"); do
  log "round $round of $ROUNDS"
  run "$TRACEMESH" agent
  if [ -n "$BASELINE" ]; then run "$BASELINE" "$BASELINE_LABEL"; fi
done

python3 - "$RUN/results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, down, up = line.split()
    rows.setdefault(label, []).append((int(down), int(up)))
print("| build | download, one stream (MiB/s) | upload, one stream (MiB/s) |")
print("|---|---:|---:|")
for label, runs in rows.items():
    cells = []
    for i in (0, 1):
        values = [r[i] for r in runs]
        cells.append(f"{statistics.median(values):.0f} ({min(values)}–{max(values)})")
    print(f"| {label} | {cells[0]} | {cells[1]} |")
EOF
