//! The agent's own pages, as its process's memory map shows them: once it
//! has served for a second, the start of its text — where the request
//! path's functions are laid — is on a transparent huge page (an anonymous,
//! read-only, executable mapping right before the file's text), unless
//! `TRACEMESH_HUGE_TEXT=off`; and it serves on, through code that was moved
//! while it ran. (Test builds link their segments 2 MiB-aligned as release
//! builds do: build.rs.)

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::{Agent, binary};
use common::client::Client;
use common::mesh::{NO_COLLECTOR, agent};
use common::upstream::Upstream;

/// The debug lines of each outcome (`RUST_LOG` below turns them on).
const MOVED: &str = "the hot text is on huge pages";
const LEFT: &str = "the text stays on the file's pages";

/// The mappings of `pid` as (header line, AnonHugePages KiB), in order.
fn mappings(pid: u32) -> Vec<(String, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut found: Vec<(String, u64)> = Vec::new();
    for line in smaps.lines() {
        if is_header(line) {
            found.push((line.to_owned(), 0));
        } else if let Some(kib) = line.strip_prefix("AnonHugePages:") {
            found.last_mut().unwrap().1 = kib.trim().trim_end_matches("kB").trim().parse().unwrap();
        }
    }
    found
}

/// An smaps header: `start-end perms offset dev inode [path]`.
fn is_header(line: &str) -> bool {
    let hex = |s: &str| u64::from_str_radix(s, 16).is_ok();
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(start, end)| hex(start) && hex(end))
}

/// Whether the executable's text is preceded by an anonymous `r-xp`
/// mapping on huge pages (KiB of them, or 0).
fn huge_text_kib(pid: u32) -> u64 {
    let exe = std::fs::canonicalize(binary()).unwrap();
    let maps = mappings(pid);
    let text = maps
        .iter()
        .position(|(header, _)| {
            header.contains(" r-xp ") && header.ends_with(exe.to_str().unwrap())
        })
        .expect("the executable's text mapping");
    match text.checked_sub(1).map(|i| &maps[i]) {
        // Anonymous: no path after the inode.
        Some((header, kib))
            if header.contains(" r-xp ") && header.split_whitespace().count() == 5 =>
        {
            *kib
        }
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_text_moves_onto_a_huge_page_and_the_agent_serves_on() {
    let app = Upstream::start("app").await;
    let yaml = agent("frontend", app.addr, NO_COLLECTOR);
    let log = [("RUST_LOG", "info,tracemesh::image=debug")];
    let agent = Agent::start_with_env(&yaml, &log);
    let client = Client::h1(agent.inbound);
    assert_eq!(client.get("http://frontend/before").await.status, 200);

    let line = agent.wait_stderr_line(&[MOVED, LEFT]);
    if line.contains(MOVED) {
        // The text starts a 2 MiB page of its own: exactly one moves.
        assert!(line.ends_with("bytes=2097152"), "{line}");
        assert_eq!(
            huge_text_kib(agent.pid()),
            2048,
            "{:#?}",
            mappings(agent.pid())
        );
    } else {
        // Only the kernel may refuse (THP `never`, or no free 2 MiB): a
        // layout the move cannot use is a build that lost its link args.
        assert!(line.ends_with("the kernel gave no huge page"), "{line}");
        eprintln!("no huge page here, the text stays on the file's pages: {line}");
        assert_eq!(huge_text_kib(agent.pid()), 0);
    }
    // Served through the moved code, on the connection opened before.
    for i in 0..50 {
        let reply = client.get(&format!("http://frontend/after/{i}")).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(app.count(), 51);

    let agent = Agent::start_with_env(&yaml, &[log[0], ("TRACEMESH_HUGE_TEXT", "off")]);
    let line = agent.wait_stderr_line(&[MOVED, LEFT]);
    assert!(line.ends_with("TRACEMESH_HUGE_TEXT=off"), "{line}");
    assert_eq!(
        huge_text_kib(agent.pid()),
        0,
        "{:#?}",
        mappings(agent.pid())
    );
    let reply = Client::h1(agent.inbound).get("http://frontend/off").await;
    assert_eq!(reply.status, 200);
}
