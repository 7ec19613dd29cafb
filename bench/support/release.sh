# Sourced by the bench scripts that build what they measure.
#
# build_release ROOT [EXAMPLE...]: builds the tracemesh binary as it is
# shipped — profile-guided, by release/pgo.sh — and sets RELEASE_BIN to it;
# with PGO=0, as `cargo build --release` builds it for a newcomer (the
# binary on its own: built together with the examples it would get their
# dev-dependencies' features, other crate hashes, and none of
# hot-text.order's names). Then the examples named, in target/release.
build_release() {
  local root=$1
  shift
  if [ "${PGO:-1}" = 0 ]; then
    (cd "$root" && cargo build --release --locked --bin tracemesh)
    RELEASE_BIN="$root/target/release/tracemesh"
  else
    bash "$root/release/pgo.sh"
    RELEASE_BIN="$root/target/pgo/tracemesh"
  fi
  if [ $# -gt 0 ]; then
    local examples=()
    for example in "$@"; do examples+=(--example "$example"); done
    (cd "$root" && cargo build --release --locked "${examples[@]}")
  fi
}

# binary_sha FILE: the first 12 hex digits of FILE's SHA-256, by which a
# record names the binary it measured (whatever tree the bench ran from).
binary_sha() {
  sha256sum <"$1" | cut -c1-12
}
