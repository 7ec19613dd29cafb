#!/usr/bin/env bash
# Hot text (bench/README.md, "Hot text"): writes hot-text.order, the order
# build.rs links the plain release build's functions in (release/pgo.sh
# derives the profile-guided build's own from it), from a callgrind
# profile of the agent as the cost bench runs it (instructions.sh: one
# worker, every request traced, spans over OTLP/gRPC, metrics on), then
# relinks the release binary in it and says how it lays out.
#
#   bash bench/agent/hot_text.sh
#
# Rerun it after a toolchain or dependency update (the names carry each
# crate's hash: a stale file is ignored by the linker, so it costs the
# benefit, never the build). Needs valgrind and nginx, as instructions.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/support/release.sh
source "$ROOT/bench/support/release.sh"
HERE="$ROOT/bench/agent"
BIN="$ROOT/target/release/tracemesh"
log() { printf '%s hot text: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PROFILE_DIR=$(mktemp -d /tmp/tracemesh-hot-text.XXXXXX)
trap 'rm -rf "$PROFILE_DIR"' EXIT

log "building tracemesh as \`cargo build --release\` does, and the OTLP sink"
PGO=0 build_release "$ROOT" otlp_sink
cp "$BIN" "$PROFILE_DIR/tracemesh"

log "profiling the agent under load (callgrind)"
PATHS=agent RECORD=0 PROFILE_DIR="$PROFILE_DIR" TRACEMESH_BIN="$PROFILE_DIR/tracemesh" \
  SINK_BIN="$ROOT/target/release/examples/otlp_sink" bash "$HERE/instructions.sh"

# (written aside, then moved: a failure leaves the committed file as it was)
python3 "$HERE/hot_text.py" order "$PROFILE_DIR/agent.callgrind" "$PROFILE_DIR/tracemesh" \
  >"$PROFILE_DIR/hot-text.order"
mv "$PROFILE_DIR/hot-text.order" "$ROOT/hot-text.order"
before=$(python3 "$HERE/hot_text.py" check "$ROOT/hot-text.order" "$PROFILE_DIR/tracemesh")
log "linked with the previous order: $before"

log "relinking in the new order"
PGO=0 build_release "$ROOT"
after=$(python3 "$HERE/hot_text.py" check "$ROOT/hot-text.order" "$BIN")
log "linked in the new order:        $after"
log "wrote hot-text.order"
