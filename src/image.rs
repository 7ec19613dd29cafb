//! The binary's own pages. `tracemesh` is one binary for every role, and
//! starting a sidecar or a gateway runs far more of it than serving does:
//! the YAML and Istio resource parsing, the compile of the config, TLS and
//! runtime set-up. Those pages stay mapped — and counted in the process's
//! RSS — long after they last ran. Once a proxy has served for a second, it
//! unmaps the read-only pages of its own executable (`MADV_DONTNEED`); what
//! the request path runs faults back in from the page cache on first use
//! (with the kernel's fault-around, 64 KiB at a time), and the rest is left
//! to the page cache, which can reclaim it like any unmapped file page.
//! Measured (bench/README.md, "Agent cost"): idle RSS right after start-up
//! 5.6–6.3 MiB instead of 18–19, peak RSS under `wrk -c50` 21.7 MiB
//! instead of 26.8; the price is about 5% more CPU per request at 1000
//! req/s (paired runs), none measurable at 4000.
//!
//! Only mappings that are byte-for-byte the file are touched: the text
//! (`r-xp`) and the first read-only segment (`r--p` at file offset 0: ELF
//! headers, `.rodata`, unwind tables), and only when none of their pages
//! was ever written (smaps `Anonymous: 0 kB`). The relocated read-only data
//! (RELRO) and every writable segment hold private copies and are never
//! touched: dropping those would lose their contents.
//!
//! Before that, the hot text goes onto a huge page. A release build lays
//! the request path's functions at the start of `.text` (`hot-text.order`,
//! build.rs) and, on x86_64 Linux, links its segments 2 MiB-aligned
//! (`-z max-page-size=0x200000`: the kernel then loads the binary at a
//! 2 MiB boundary, and the 2 MiB block holding the text's start overlaps
//! no other mapping). That block is copied into anonymous memory on a
//! transparent huge page (`MADV_HUGEPAGE`, which THP's default `madvise`
//! mode honours) and moved over the text with one `mremap`: one TLB entry
//! instead of ~240 for the code a request runs, where at 1000 req/s every
//! request starts on cold TLBs. Measured (bench/README.md, "Hot text on a
//! huge page"): about 3% less CPU per request at 1000 req/s, paired, for
//! 2 MiB more RSS. Profilers that name functions by the file an address is
//! mapped from (`perf`, valgrind) see that block as anonymous memory:
//! `TRACEMESH_HUGE_TEXT=off` leaves the text on the file's pages.

use std::io;
use std::path::Path;

/// One mapping of the executable that may be unmapped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileMapping {
    start: usize,
    end: usize,
    /// Resident pages now, in KiB (smaps `Rss`).
    rss_kib: u64,
}

/// Unmaps the executable's read-only, never-written pages from this
/// process. Returns the KiB that were resident in them (smaps `Rss`).
///
/// # Errors
/// `/proc/self/exe` or `/proc/self/smaps` cannot be read, or `madvise`
/// fails (it does not for these mappings on Linux).
#[allow(unsafe_code)] // madvise: the workspace's one audited `unsafe`
pub fn release_start_up_pages() -> io::Result<u64> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for mapping in read_only_file_mappings(&smaps, &exe) {
        // SAFETY: the range is a whole mapping of the executable that is
        // read-only and has no private (written) page: its contents are the
        // file's, and after MADV_DONTNEED every access faults them back in
        // from the file unchanged. No Rust object lives in it.
        unsafe {
            rustix::mm::madvise(
                mapping.start as *mut std::ffi::c_void,
                mapping.end - mapping.start,
                rustix::mm::Advice::LinuxDontNeed,
            )?;
        }
        released += mapping.rss_kib;
    }
    Ok(released)
}

/// The size of a transparent huge page on x86_64 (one PMD mapping), in
/// bytes.
const HUGE_PAGE: usize = 2 << 20;

/// How much of the start of `.text` the hot text fills, in bytes: the
/// functions `hot-text.order` lays there (924 KiB in 234 pages:
/// `python3 bench/agent/hot_text.py check`).
const HOT_TEXT_BYTES: usize = 1 << 20;

/// Puts the start of the executable's text — where `hot-text.order` lays
/// the request path — on a transparent huge page. Returns the bytes now on
/// huge pages: 0 when the layout does not allow it (the huge pages would
/// overlap another mapping: a binary linked without 2 MiB segments) or the
/// kernel gives no huge page (THP `never`, or no free 2 MiB of memory).
///
/// # Errors
/// `/proc/self/exe`, `/proc/self/maps` or `/proc/self/smaps` cannot be
/// read, or a memory call fails.
#[allow(unsafe_code)] // the call below: its contract is checked here
pub fn hot_text_onto_huge_pages() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let Some((previous_end, start, end)) = text_mapping(&maps, &exe) else {
        return Ok(0);
    };
    let first = start & !(HUGE_PAGE - 1);
    let last = (start + HOT_TEXT_BYTES).next_multiple_of(HUGE_PAGE);
    if first < previous_end || last > end {
        return Ok(0);
    }
    // SAFETY: [start, last) is the executable's text, read-only and
    // executable, and [first, start) is mapped by nothing.
    unsafe { onto_huge_pages(first, start, last) }
}

/// Replaces the read-only, executable mapping [`start`, `last`) and the
/// unmapped gap [`first`, `start`) before it with anonymous memory on huge
/// pages holding the same bytes (zeros in the gap), read-only and
/// executable: a copy is made beside it, then one `mremap` moves the copy
/// over it, atomically — a thread running code there sees the same bytes
/// before and after. `first` and `last` are multiples of [`HUGE_PAGE`].
/// Returns `last - first`, or 0 (and nothing changed) when the kernel gave
/// no huge page for the copy.
///
/// # Safety
/// [`start`, `last`) must be one mapping, read-only and executable, that
/// nothing writes; [`first`, `start`) must be unmapped.
#[allow(unsafe_code)] // mmap/mremap of our own text
unsafe fn onto_huge_pages(first: usize, start: usize, last: usize) -> io::Result<usize> {
    use rustix::mm::{self, MapFlags, MprotectFlags, MremapFlags, ProtFlags};
    let len = last - first;
    // SAFETY: the anonymous mappings are this function's alone until the
    // mremap; the copy reads [start, last), which the caller says is
    // mapped and unwritten; the mremap puts the same bytes where they were.
    unsafe {
        let reserved = mm::mmap_anonymous(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )?;
        let copy = (reserved as usize).next_multiple_of(HUGE_PAGE);
        let head = copy - reserved as usize;
        if head > 0 {
            mm::munmap(reserved, head)?;
        }
        if head < HUGE_PAGE {
            mm::munmap((copy + len) as *mut _, HUGE_PAGE - head)?;
        }
        let copy = copy as *mut std::ffi::c_void;
        mm::madvise(copy, len, mm::Advice::LinuxHugepage)?;
        std::ptr::copy_nonoverlapping(
            start as *const u8,
            copy.cast::<u8>().add(start - first),
            last - start,
        );
        if anonymous_huge_kib(copy as usize)? * 1024 < len as u64 {
            mm::munmap(copy, len)?;
            return Ok(0);
        }
        mm::mprotect(copy, len, MprotectFlags::READ | MprotectFlags::EXEC)?;
        mm::mremap_fixed(copy, len, len, MremapFlags::MAYMOVE, first as *mut _)?;
    }
    Ok(len)
}

/// The executable's text mapping in `maps` (`r-xp`), and the end of the
/// mapping before it: (previous end, start, end).
fn text_mapping(maps: &str, exe: &Path) -> Option<(usize, usize, usize)> {
    let mut previous_end = 0;
    for line in maps.lines() {
        let Some(header) = parse_header(line) else {
            continue;
        };
        if header.perms == "r-xp" && header.path.is_some_and(|p| Path::new(p) == exe) {
            return Some((previous_end, header.start, header.end));
        }
        previous_end = header.end;
    }
    None
}

/// smaps `AnonHugePages` of the mapping that starts at `start`, in KiB.
fn anonymous_huge_kib(start: usize) -> io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some(header) = parse_header(line) {
            inside = header.start == start;
        } else if inside && let Some(kib) = field_kib(line, "AnonHugePages:") {
            return Ok(kib);
        }
    }
    Ok(0)
}

/// How long after a proxy is ready its start-up is taken to be over: the
/// admin server, the config watcher and the certificate rotation have
/// started by then.
const START_UP_SETTLES: std::time::Duration = std::time::Duration::from_secs(1);

/// The environment variable that keeps the text on the file's pages when
/// `off` (for profilers that name functions by the file a sample's address
/// is mapped from: `perf`, valgrind).
pub const HUGE_TEXT_VAR: &str = "TRACEMESH_HUGE_TEXT";

/// A serving proxy's stop future: completes on `stop`; meanwhile, once
/// start-up has settled, [`hot_text_onto_huge_pages`] (unless
/// [`HUGE_TEXT_VAR`] is `off`), then [`release_start_up_pages`] (each said
/// at DEBUG; a failure is said at DEBUG too: the pages only stay where and
/// as they were).
pub async fn release_start_up_pages_then(stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    tokio::select! {
        () = &mut stop => return,
        () = tokio::time::sleep(START_UP_SETTLES) => {}
    }
    if std::env::var_os(HUGE_TEXT_VAR).is_some_and(|v| v == "off") {
        tracing::debug!("{HUGE_TEXT_VAR}=off: the text stays on the file's pages");
    } else {
        match hot_text_onto_huge_pages() {
            Ok(bytes) => tracing::debug!(bytes, "the hot text is on huge pages"),
            Err(error) => tracing::debug!(%error, "cannot put the hot text on huge pages"),
        }
    }
    match release_start_up_pages() {
        Ok(kib) => tracing::debug!(kib, "unmapped the executable's start-up pages"),
        Err(error) => tracing::debug!(%error, "cannot unmap the executable's start-up pages"),
    }
    stop.await;
}

/// The mappings of `exe` in `smaps` that hold the file's own bytes: the
/// text, and the read-only segment at offset 0, with no anonymous page.
fn read_only_file_mappings(smaps: &str, exe: &Path) -> Vec<FileMapping> {
    let mut found = Vec::new();
    // The mapping being read: (candidate, anonymous KiB seen so far).
    let mut current: Option<(FileMapping, u64)> = None;
    let mut finish = |current: Option<(FileMapping, u64)>| {
        if let Some((mapping, 0)) = current {
            found.push(mapping);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = parse_header(line) {
            finish(current.take());
            current = header.candidate(exe).map(|m| (m, 0));
            continue;
        }
        let Some((mapping, anonymous)) = current.as_mut() else {
            continue;
        };
        if let Some(kib) = field_kib(line, "Rss:") {
            mapping.rss_kib = kib;
        } else if let Some(kib) = field_kib(line, "Anonymous:") {
            *anonymous += kib;
        }
    }
    finish(current);
    found
}

/// A mapping's header line: `start-end perms offset dev inode path`.
struct Header<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    offset: u64,
    path: Option<&'a str>,
}

impl Header<'_> {
    fn candidate(&self, exe: &Path) -> Option<FileMapping> {
        let of_exe = self.path.is_some_and(|p| Path::new(p) == exe);
        let text = self.perms == "r-xp";
        let headers_and_rodata = self.perms == "r--p" && self.offset == 0;
        (of_exe && (text || headers_and_rodata)).then_some(FileMapping {
            start: self.start,
            end: self.end,
            rss_kib: 0,
        })
    }
}

fn parse_header(line: &str) -> Option<Header<'_>> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    // The path is the rest of the line (it may hold spaces).
    let path = line
        .splitn(6, |c: char| c.is_ascii_whitespace())
        .nth(5)
        .map(str::trim)
        .filter(|p| !p.is_empty());
    Some(Header {
        start,
        end,
        perms,
        offset,
        path,
    })
}

fn field_kib(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5581a0000000-5581a0645000 r--p 00000000 fd:01 123 /opt/tracemesh
Size:               6420 kB
Rss:                2240 kB
Anonymous:             0 kB
5581a0646000-5581a1d0e000 r-xp 00645000 fd:01 123 /opt/tracemesh
Size:              23332 kB
Rss:               12856 kB
Anonymous:             0 kB
5581a1d0f000-5581a1dcc000 r--p 01d0d000 fd:01 123 /opt/tracemesh
Size:                756 kB
Rss:                 756 kB
Anonymous:           748 kB
5581a1dcc000-5581a1dd3000 rw-p 01dc9000 fd:01 123 /opt/tracemesh
Size:                 28 kB
Rss:                  28 kB
Anonymous:            28 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
Anonymous:          1024 kB
";

    #[test]
    fn only_the_executables_unwritten_read_only_mappings_are_chosen() {
        let found = read_only_file_mappings(SMAPS, Path::new("/opt/tracemesh"));
        assert_eq!(
            found,
            vec![
                FileMapping {
                    start: 0x5581a0000000,
                    end: 0x5581a0645000,
                    rss_kib: 2240
                },
                FileMapping {
                    start: 0x5581a0646000,
                    end: 0x5581a1d0e000,
                    rss_kib: 12856
                },
            ]
        );
    }

    #[test]
    fn a_text_page_that_was_written_keeps_its_mapping() {
        // A debugger's breakpoint makes a private copy of a text page.
        let smaps = SMAPS.replacen(
            "Rss:               12856 kB\nAnonymous:             0 kB",
            "Rss:               12856 kB\nAnonymous:             4 kB",
            1,
        );
        let found = read_only_file_mappings(&smaps, Path::new("/opt/tracemesh"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].start, 0x5581a0000000);
    }

    #[test]
    fn the_process_runs_on_after_its_pages_are_released() {
        let before = resident_file_kib();
        let released = release_start_up_pages().expect("release");
        assert!(released > 0, "the test binary's text was resident");
        // Code and read-only data fault back in: formatting, allocation and
        // the standard library still work.
        let text = format!("{:?}", vec![1u32, 2, 3]);
        assert_eq!(text, "[1, 2, 3]");
        let after = resident_file_kib();
        assert!(
            after < before,
            "file-backed RSS fell: {before} KiB before, {after} KiB after"
        );
    }

    #[test]
    fn the_text_mapping_and_the_end_of_the_one_before_it_are_found() {
        let maps: String = SMAPS
            .lines()
            .filter(|l| parse_header(l).is_some())
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            text_mapping(&maps, Path::new("/opt/tracemesh")),
            Some((0x5581a0645000, 0x5581a0646000, 0x5581a1d0e000))
        );
        assert_eq!(text_mapping(&maps, Path::new("/opt/other")), None);
    }

    #[test]
    fn the_process_runs_on_after_its_hot_text_moves() {
        // The test binary is not linked with 2 MiB segments: its text's
        // first huge page overlaps the read-only data, and nothing moves.
        let moved = hot_text_onto_huge_pages().expect("reads its maps");
        let text = format!("{:?}", vec![1u32, 2, 3]);
        assert_eq!(text, "[1, 2, 3]");
        assert_eq!(moved % HUGE_PAGE, 0);
    }

    fn resident_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| field_kib(l, "RssFile:"))
            .expect("RssFile in /proc/self/status")
    }
}
