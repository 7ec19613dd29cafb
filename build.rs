//! Hot text: a release build of the `tracemesh` binary lays the functions a
//! proxied request runs side by side at the start of `.text`, in the order
//! of `hot-text.order` (bench/README.md, "Hot text").
//!
//! At the rates a sidecar mostly sees (1000 req/s and below) the core idles
//! between requests and each request starts on cold caches and TLBs: what it
//! pays follows the code it touches. Left to the compiler, the ~900
//! functions of the request path (ours, hyper's, tokio's, mimalloc's) lie
//! scattered over 606 pages of a 30 MB text; in this order they fill 217,
//! and the agent spends about 6% less CPU per request at 1000 req/s
//! (paired runs) and 12% less at 4000 (bench/README.md).
//!
//! `hot-text.order` holds mangled symbol names, one per line, hottest first,
//! as `bench/agent/hot_text.sh` writes them from a callgrind profile of the
//! agent under the cost bench's load. A name the build does not define is
//! skipped (`--no-warn-symbol-ordering`): a stale file costs the benefit,
//! never the build. The names carry each crate's hash, which follows the
//! toolchain, `Cargo.lock` and the features in play — not the checkout's
//! path or the source of the functions — so the file holds for
//! `cargo build --release`, `cargo run --release` and `cargo install`, and
//! a dependency or toolchain update asks for `hot_text.sh` again. (About a
//! fifth of the names end in ThinLTO's `.llvm.<hash>`, which does follow
//! the code of the unit they are in: those lapse one by one with edits.)
//!
//! Applied only where rustc links with its own LLD, which reads the file:
//! x86_64 Linux (`x86_64-unknown-linux-gnu`) from Rust 1.90, with no linker
//! chosen in cargo's config or `RUSTFLAGS`. `TRACEMESH_HOT_TEXT=off` links
//! in the compiler's order.

use std::env;
use std::path::Path;
use std::process::Command;

const ORDER_FILE: &str = "hot-text.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=TRACEMESH_HOT_TEXT");
    if not_applied().is_some() {
        return;
    }
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join(ORDER_FILE);
    println!(
        "cargo:rustc-link-arg-bin=tracemesh=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=tracemesh=-Wl,--no-warn-symbol-ordering");
}

/// Why the order is not applied to this build, if it is not (a build that
/// skips it is right, only laid out by the compiler).
fn not_applied() -> Option<&'static str> {
    if env::var("TRACEMESH_HOT_TEXT").is_ok_and(|v| v == "off") {
        return Some("TRACEMESH_HOT_TEXT=off");
    }
    if env::var("PROFILE").as_deref() != Ok("release") {
        return Some("not a release build");
    }
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return Some("rustc links with LLD by default on x86_64-unknown-linux-gnu only");
    }
    if env::var_os("RUSTC_LINKER").is_some() {
        return Some("a linker is configured");
    }
    if env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("link")) {
        return Some("RUSTFLAGS choose how to link");
    }
    if !Path::new(ORDER_FILE).try_exists().unwrap_or(false) {
        return Some("no readable hot-text.order");
    }
    match rustc_minor() {
        Some(minor) if minor >= 90 => None,
        _ => Some("rustc before 1.90 links with the system linker"),
    }
}

/// The minor version of the rustc cargo builds with (`1.95.0` → 95).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC")?;
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    let mut parts = version.split_whitespace().nth(1)?.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}
