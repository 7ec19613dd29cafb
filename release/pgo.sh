#!/usr/bin/env bash
# The tracemesh binary as it is shipped: built profile-guided (PGO) from a
# training run of the demo, and linked with the hot text of that profile
# (README, "The binary to deploy: profile-guided"). Less CPU per proxied
# request than `cargo build --release` (bench/README.md, "Profile-guided
# build").
#
#   bash release/pgo.sh            # writes target/pgo/tracemesh
#
# A second run with the same source, Cargo.lock and toolchain keeps the
# binary it built (target/pgo/stamp); PGO_FRESH=1 trains and builds again.
#
# Steps, each in its own target directory under target/pgo (so neither
# rebuilds target/release), both builds with fat LTO in one codegen unit:
#   1. an instrumented build (-Cprofile-generate);
#   2. training, TRAIN_SECONDS: that binary runs an agent as the cost bench
#      runs it (one worker, every request traced to a `tracemesh collector`,
#      metrics on) in front of a Bookinfo application, loaded by `tracemesh
#      load` at TRAIN_QPS outbound and inbound, then as fast as it goes over
#      HTTP/1.1 and HTTP/2; beside it `tracemesh demo` at 15 req/s (the
#      ingress gateway, a sidecar per workload, several hops a request) and
#      the query calls Jaeger UI and Grafana make; each process writes its
#      counts as it exits;
#   3. llvm-profdata merges the counts (it must be of rustc's LLVM major
#      version: rustup's llvm-tools, or a distribution's llvm-profdata-N);
#   4. the optimised build (-Cprofile-use; -pgso=false keeps code the
#      training did not run optimised for speed, not size), linked once,
#      then again in the order release/pgo_order.py derives from the
#      training agent's own counts and that binary's symbols (build.rs,
#      TRACEMESH_HOT_TEXT_ORDER): the request path side by side, as
#      hot-text.order lays out the plain build's.
#
# Knobs (environment): TRAIN_SECONDS (40, at least 8; the loads take 7/8 of
# it in whole eighths, beside the demo for all of it), TRAIN_QPS (1000),
# LLVM_PROFDATA (the tool, if not found by itself), PGO_FRESH.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK="$ROOT/target/pgo"
TRAIN_SECONDS=${TRAIN_SECONDS:-40}
TRAIN_QPS=${TRAIN_QPS:-1000}
log() { printf '%s pgo: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

for tool in nm curl sha256sum python3 git; do
  command -v "$tool" >/dev/null || die "$tool is needed$([ "$tool" = nm ] && echo " (binutils)")"
done
[[ $TRAIN_SECONDS =~ ^[0-9]+$ ]] && [ "$TRAIN_SECONDS" -ge 8 ] ||
  die "TRAIN_SECONDS must be whole seconds, at least 8 (not \"$TRAIN_SECONDS\")"
[[ $TRAIN_QPS =~ ^[1-9][0-9]*$ ]] || die "TRAIN_QPS must be a whole number of requests a second (not \"$TRAIN_QPS\")"
# (the training writes its counts where -Cprofile-generate says, and logs at
# the level the script reads)
unset LLVM_PROFILE_FILE CARGO_ENCODED_RUSTFLAGS
export RUST_LOG=info

# What the binary is built from: the checkout (committed, changed, and new
# files of the kinds the build reads, not a log written beside it), the
# lock file, the toolchain, these scripts and the training's knobs.
stamp() {
  {
    git -C "$ROOT" rev-parse 'HEAD^{tree}'
    git -C "$ROOT" diff HEAD
    (cd "$ROOT" && git ls-files --others --exclude-standard -z -- '*.rs' '*.toml' '*.proto' '*.order' \
      '*.sh' '*.py' '*.yaml' '*.json' | xargs -0r sha256sum --)
    rustc -vV
    echo "TRAIN_SECONDS=$TRAIN_SECONDS TRAIN_QPS=$TRAIN_QPS"
  } | sha256sum | cut -c1-16
}
STAMP=$(stamp)
if [ -z "${PGO_FRESH:-}" ] && [ -x "$WORK/tracemesh" ] && [ "$(cat "$WORK/stamp" 2>/dev/null)" = "$STAMP" ]; then
  log "target/pgo/tracemesh is built from this source already (PGO_FRESH=1 builds it again)"
  exit 0
fi
rm -f "$WORK/stamp"

HOST=$(rustc -vV | sed -n 's/^host: //p')
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$HOST" ] && [ -n "$LLVM_MAJOR" ] || die "cannot read rustc -vV"

# llvm_major TOOL: the LLVM major version TOOL's --version gives (or nothing).
llvm_major() { "$1" --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9]*\).*/\1/p' | head -1; }
# llvm-profdata of rustc's LLVM major version: another version's reader
# may not take the profile the instrumented binary writes.
find_profdata() {
  local candidate major
  if [ -n "${LLVM_PROFDATA:-}" ]; then
    command -v "$LLVM_PROFDATA" >/dev/null 2>&1 || die "LLVM_PROFDATA=$LLVM_PROFDATA: no such program"
    major=$(llvm_major "$LLVM_PROFDATA")
    [ "$major" = "$LLVM_MAJOR" ] ||
      die "LLVM_PROFDATA=$LLVM_PROFDATA is not of LLVM $LLVM_MAJOR, rustc's (its --version gives ${major:+LLVM }${major:-no version})"
    echo "$LLVM_PROFDATA"
    return
  fi
  for candidate in \
    "$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata" \
    "llvm-profdata-$LLVM_MAJOR" llvm-profdata; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    major=$(llvm_major "$candidate")
    if [ "$major" = "$LLVM_MAJOR" ]; then
      echo "$candidate"
      return
    fi
  done
  die "no llvm-profdata of LLVM $LLVM_MAJOR (rustc's): \`rustup component add llvm-tools\`, or Debian's llvm-$LLVM_MAJOR, or set LLVM_PROFDATA"
}
PROFDATA=$(find_profdata)
log "using $PROFDATA (for step 3)"

# build DIR RUSTFLAGS [ENV...]: the tracemesh binary in target/pgo/DIR.
# --target keeps RUSTFLAGS off build scripts and proc macros (an
# instrumented proc macro would write counts from inside rustc). Whole-
# program (fat) LTO in one codegen unit, not the release profile's thin LTO
# in four: with the profile, 11% less CPU per request at 1000 req/s, paired
# (bench/README.md, "Fat LTO under the profile"), for a build twice as long.
build() {
  local dir=$1 flags=$2
  shift 2
  (cd "$ROOT" && env "$@" CARGO_TARGET_DIR="$WORK/$dir" RUSTFLAGS="$flags" \
    CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    cargo build --release --locked --bin tracemesh --target "$HOST")
}

log "1/4 instrumented build"
build generate "-Cprofile-generate=$WORK/raw" TRACEMESH_HOT_TEXT=off
TRAINEE="$WORK/generate/$HOST/release/tracemesh"

log "2/4 training"
TRAIN="$WORK/train"
rm -rf "$TRAIN" "$WORK/raw" "$WORK/raw-agent"
mkdir -p "$TRAIN"
PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_for FILE TEXT: until FILE holds TEXT (60 s at most).
wait_for() {
  local deadline=$((SECONDS + 60))
  until grep -q "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "no \"$2\" in $1 after 60s"
    sleep 0.2
  done
}
# load ARGS...: `tracemesh load`, which must get 2xx for nearly every request
# (a profile of a failing path would teach the compiler the wrong branches).
load() {
  "$TRAINEE" load --json "$@" >"$TRAIN/load.json" 2>>"$TRAIN/load.log" || die "load failed ($TRAIN/load.log)"
  python3 - "$TRAIN/load.json" <<'PY' || die "the training's requests failed ($TRAIN/load.json)"
import json, sys
r = json.load(open(sys.argv[1]))
ok = sum(n for code, n in r["codes"].items() if code.startswith("2"))
sys.exit(0 if r["count"] > 0 and ok >= 0.99 * r["count"] else 1)
PY
  cat "$TRAIN/load.json" >>"$TRAIN/load.log"
}

# The collector, which the agent's spans and the query calls reach.
"$TRAINEE" collector --data-dir "$TRAIN/data" --otlp-grpc 127.0.0.1:0 --otlp-http 127.0.0.1:0 \
  --zipkin 127.0.0.1:0 --http 127.0.0.1:0 >"$TRAIN/collector.log" 2>&1 &
PIDS+=($!)
wait_for "$TRAIN/collector.log" "collector ready"
OTLP=$(sed -n 's/.*collector ready.* otlp_grpc=\([0-9.:]*\).*/\1/p' "$TRAIN/collector.log")
QUERY=$(sed -n 's/.*collector ready.* http=\([0-9.:]*\).*/\1/p' "$TRAIN/collector.log")

# One agent as the cost bench runs it (bench/agent/agent.yaml: one worker,
# every request traced, metrics on), in front of Bookinfo's details.
APP=$(free_port)
"$TRAINEE" demo-app --workload details-v1 --listen "127.0.0.1:$APP" >"$TRAIN/app.log" 2>&1 &
PIDS+=($!)
OUT=$(free_port)
IN=$(free_port)
ADMIN=$(free_port)
cat >"$TRAIN/agent.yaml" <<YAML
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {name: details-v1, namespace: default}
spec:
  service: details
  labels: {app: details, version: v1}
  concurrency: 1
  inbound: {listen: "127.0.0.1:$IN", app: "127.0.0.1:$APP"}
  outbound: {listen: "127.0.0.1:$OUT"}
  admin: {listen: "127.0.0.1:$ADMIN"}
  telemetry:
    otlp: {endpoint: "http://$OTLP", protocol: grpc}
    sampling: 1.0
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details, namespace: default}
spec:
  hosts: [details.train.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: $APP}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details.train.local]
  http:
  - name: default
    route:
    - destination: {host: details.train.local}
YAML
# (its counts also on their own: the hot-text order is the agent's)
LLVM_PROFILE_FILE="$WORK/raw-agent/agent-%m.profraw" \
  "$TRAINEE" agent --config "$TRAIN/agent.yaml" >"$TRAIN/agent.log" 2>&1 &
PIDS+=($!)
deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null --connect-to "details.train.local:80:127.0.0.1:$OUT" \
  http://details.train.local/details/0 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || die "the training agent did not answer in 60s ($TRAIN)"
  sleep 0.2
done

# The demo beside it, below productpage's rate limit: the ingress gateway,
# inbound and outbound sidecars, several hops per request.
"$TRAINEE" demo --duration "${TRAIN_SECONDS}s" --data-dir "$TRAIN/demo" --ui-port 0 \
  --qps 15 -c 2 >"$TRAIN/demo.log" 2>&1 &
DEMO=$!
PIDS+=("$DEMO")

# The query side meanwhile: what Jaeger UI and Grafana ask.
(
  while kill -0 $DEMO 2>/dev/null; do
    for path in /api/services /api/services/details/operations \
      "/api/traces?service=details&limit=20&lookback=1h" \
      "/api/traces?service=details&tags=%7B%22http.status_code%22%3A%22200%22%7D&limit=20" \
      "/api/dependencies?endTs=$(date +%s)000&lookback=3600000" /metrics /search; do
      curl -fsS -o /dev/null "http://$QUERY$path" 2>/dev/null || true
    done
    sleep 1
  done
) &
QUERY_LOOP=$!
PIDS+=("$QUERY_LOOP")

URL=http://details.train.local/details/0
# The rates the cost bench measures, outbound then inbound, then saturation
# and HTTP/2: TRAIN_SECONDS in all.
share=$((TRAIN_SECONDS / 8))
load -c 8 --qps "$TRAIN_QPS" -t "$((share * 3))s" --connect-to "127.0.0.1:$OUT" "$URL"
load -c 8 --qps "$TRAIN_QPS" -t "$((share * 2))s" --connect-to "127.0.0.1:$IN" "$URL"
load -c 50 --qps 0 -t "${share}s" --connect-to "127.0.0.1:$OUT" "$URL"
load -c 8 --qps 0 --h2 -t "${share}s" --connect-to "127.0.0.1:$OUT" "$URL"
wait "$DEMO" || die "the demo failed ($TRAIN/demo.log)"
for pid in "${PIDS[@]}"; do
  # (the demo and the query loop beside it end by themselves)
  [ "$pid" = "$DEMO" ] || [ "$pid" = "$QUERY_LOOP" ] || kill -0 "$pid" 2>/dev/null ||
    die "a training process ended early ($TRAIN)"
done
stop_all
trap - EXIT
compgen -G "$WORK/raw-agent/*.profraw" >/dev/null || die "the training agent wrote no profile"

log "3/4 merging the profile"
"$PROFDATA" merge -o "$WORK/merged.profdata" "$WORK"/raw/*.profraw "$WORK"/raw-agent/*.profraw
# (named by its content: cargo does not watch the file RUSTFLAGS names, but
# a new name rebuilds)
PROFILE="$WORK/tracemesh-$(sha256sum "$WORK/merged.profdata" | cut -c1-16).profdata"
rm -f "$WORK"/tracemesh-*.profdata
mv "$WORK/merged.profdata" "$PROFILE"
"$PROFDATA" merge --text -o "$WORK/agent.proftext" "$WORK"/raw-agent/*.profraw

log "4/4 optimised build, then relinked in the profile's hot-text order"
USE="-Cprofile-use=$PROFILE -Cllvm-args=-pgso=false"
BIN="$WORK/use/$HOST/release/tracemesh"
build use "$USE" TRACEMESH_HOT_TEXT_ORDER="$ROOT/hot-text.order"
python3 "$ROOT/release/pgo_order.py" "$WORK/agent.proftext" "$BIN" "$ROOT/hot-text.order" \
  >"$WORK/hot-text.order.new"
mv "$WORK/hot-text.order.new" "$WORK/hot-text.order"
build use "$USE" TRACEMESH_HOT_TEXT_ORDER="$WORK/hot-text.order"
cp "$BIN" "$WORK/tracemesh"
echo "$STAMP" >"$WORK/stamp"
log "wrote target/pgo/tracemesh"
