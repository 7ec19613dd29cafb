//! Hot text: a release build of the `tracemesh` binary lays the functions a
//! proxied request runs side by side at the start of `.text`, in the order
//! of `hot-text.order` (bench/README.md, "Hot text").
//!
//! At the rates a sidecar mostly sees (1000 req/s and below) the core idles
//! between requests and each request starts on cold caches and TLBs: what it
//! pays follows the code it touches. Left to the compiler, the ~990
//! functions of the request path (ours, hyper's, tokio's, mimalloc's) lie
//! scattered over 670 pages of a 30 MB text; in this order they fill 236,
//! and the agent spends about 7% less CPU per request at 1000 req/s
//! (paired runs; bench/README.md).
//!
//! `hot-text.order` holds mangled symbol names, one per line, hottest first,
//! as `bench/agent/hot_text.sh` writes them from a callgrind profile of the
//! agent under the cost bench's load. A name the build does not define is
//! skipped (`--no-warn-symbol-ordering`): a stale file costs the benefit,
//! never the build. The names carry each crate's hash, which follows the
//! toolchain, `Cargo.lock` and the features in play — not the checkout's
//! path or the source of the functions — so the file holds for
//! `cargo build --release`, `cargo run --release` and `cargo install --path`
//! with the toolchain its header names, and a dependency or toolchain update
//! asks for `hot_text.sh` again. (About a fifth of the names end in
//! ThinLTO's `.llvm.<hash>`, a hash of their code unit: those lapse one by
//! one with edits, and may with another checkout path.)
//!
//! Applied to release builds for `x86_64-unknown-linux-gnu` (the file's
//! names are that target's) whose linker takes the file: rustup's rustc
//! links with its own LLD there from Rust 1.90, a distribution's rustc may
//! link with GNU ld, which does not. A one-line link of an empty program,
//! with the build's flags and linker, decides; when it fails, the build
//! says so in a warning and links in the compiler's order.
//! `TRACEMESH_HOT_TEXT=off` links in the compiler's order too.
//! `TRACEMESH_HOT_TEXT_ORDER=<file>` takes the order from that file instead:
//! the profile-guided build (release/pgo.sh) writes its own, since its
//! names are not the plain build's.
//!
//! With the order, the segments are linked 2 MiB-aligned and the text
//! starts a 2 MiB page of its own, so that a proxy can move the hot text
//! onto a transparent huge page once started (src/image.rs). Debug builds
//! for the same target get that layout alone (every linker for the target
//! takes it), so that the tests' agents run the move. Without the order
//! (`TRACEMESH_HOT_TEXT=off`, or a linker that refuses it) the layout is
//! the compiler's too: the text's first 2 MiB would be any code.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const ORDER_FILE: &str = "hot-text.order";

fn main() {
    let order = match env::var_os("TRACEMESH_HOT_TEXT_ORDER") {
        Some(file) => PathBuf::from(file),
        None => {
            Path::new(&env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join(ORDER_FILE)
        }
    };
    println!("cargo:rerun-if-changed={}", order.display());
    for var in [
        "TRACEMESH_HOT_TEXT",
        "TRACEMESH_HOT_TEXT_ORDER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var("TRACEMESH_HOT_TEXT").is_ok_and(|v| v == "off")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
    {
        return;
    }
    if env::var("PROFILE").as_deref() != Ok("release") {
        // The segments alone (every linker for this target takes them): the
        // tests' agents run src/image.rs's move to a huge page.
        emit(&segment_args());
        return;
    }
    // (open, not exists: a file the linker cannot read fails the link)
    if let Err(e) = std::fs::File::open(&order) {
        if env::var_os("TRACEMESH_HOT_TEXT_ORDER").is_some() {
            println!(
                "cargo:warning=TRACEMESH_HOT_TEXT_ORDER={}: {e}; linking in the compiler's order (and no hot text on huge pages)",
                order.display()
            );
        }
        return;
    }
    let mut args = order_args(&order);
    args.extend(segment_args());
    match probe(&args) {
        Ok(()) => emit(&args),
        Err(why) => {
            println!(
                "cargo:warning=linking in the compiler's order, not {}'s (and no hot text on huge pages): {why}",
                order.display()
            )
        }
    }
}

fn emit(args: &[OsString]) {
    for arg in args {
        println!(
            "cargo:rustc-link-arg-bin=tracemesh={}",
            arg.to_string_lossy()
        );
    }
}

/// The linker arguments that apply the order: `-Xlinker` pairs, not
/// `-Wl,`, which would split a path at its commas.
fn order_args(order: &Path) -> Vec<OsString> {
    let mut file = OsString::from("--symbol-ordering-file=");
    file.push(order);
    vec![
        "-Xlinker".into(),
        file,
        "-Xlinker".into(),
        "--no-warn-symbol-ordering".into(),
    ]
}

/// The linker arguments that align each segment to 2 MiB and start the
/// text on a 2 MiB boundary of its own (`separate-code`: up to 4 MiB of
/// padding in the file, none in memory): the kernel then loads the binary at
/// a 2 MiB boundary, and src/image.rs can move the text's first 2 MiB — the
/// hot text — onto one huge page. (A 2 MiB-aligned load address has 9 fewer
/// of its 28 bits of randomness, as any 2 MiB-aligned mapping; the
/// libraries, stacks and heap keep theirs.)
fn segment_args() -> Vec<OsString> {
    [
        "-Xlinker",
        "-z",
        "-Xlinker",
        "max-page-size=0x200000",
        "-Xlinker",
        "-z",
        "-Xlinker",
        "separate-code",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// Links an empty program with this build's rustc, target, flags and
/// linker, and `args`: whether the linker takes them.
///
/// # Errors
/// The probe cannot run, or the link fails (its first line of error).
fn probe(args: &[OsString]) -> Result<(), String> {
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    let source = out.join("hot_text_probe.rs");
    std::fs::write(&source, "fn main() {}\n").map_err(|e| e.to_string())?;
    let mut rustc = Command::new(env::var_os("RUSTC").ok_or("no RUSTC")?);
    rustc
        .args(["--crate-type=bin", "--edition=2021", "--target"])
        .arg(env::var_os("TARGET").ok_or("no TARGET")?)
        .arg("-o")
        .arg(out.join("hot_text_probe"))
        .arg(&source);
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        rustc.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut flag = OsString::from("linker=");
        flag.push(linker);
        rustc.arg("-C").arg(flag);
    }
    for arg in args {
        let mut flag = OsString::from("link-arg=");
        flag.push(arg);
        rustc.arg("-C").arg(flag);
    }
    let output = rustc.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("unrecognized option") || l.contains("unknown option"))
        .or_else(|| stderr.lines().find(|l| l.starts_with("error")))
        .unwrap_or("the probe's link failed");
    Err(line.trim().trim_start_matches("= note:").trim().to_owned())
}
