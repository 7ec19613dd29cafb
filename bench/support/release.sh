# Sourced by the bench scripts that build what they measure.
#
# build_release ROOT [EXAMPLE...]: builds the tracemesh binary on its own,
# as `cargo build --release` builds it for a newcomer, then the examples
# named. Built together with the examples it would get their
# dev-dependencies' features, other crate hashes, and none of
# hot-text.order's names (build.rs): the bench would measure another layout.
build_release() {
  local root=$1
  shift
  (cd "$root" && cargo build --release --locked --bin tracemesh)
  if [ $# -gt 0 ]; then
    local examples=()
    for example in "$@"; do examples+=(--example "$example"); done
    (cd "$root" && cargo build --release --locked "${examples[@]}")
  fi
}
