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
//! build.rs) and, on x86_64 Linux, links its segments 2 MiB-aligned with
//! the text starting a 2 MiB page of its own (`-z max-page-size=0x200000
//! -z separate-code`: the kernel then loads the binary at a 2 MiB
//! boundary). That first 2 MiB of text is read from the file into
//! anonymous memory on a transparent huge page (`MADV_HUGEPAGE`, which
//! THP's default `madvise` mode honours) and moved over the text with one
//! `mremap`: one TLB entry instead of ~240 for the code a request runs,
//! where at 1000 req/s every request starts on cold TLBs. Measured
//! (bench/README.md, "Hot text on a huge page"): about 3% less CPU per
//! request at 1000 req/s, paired, for 2 MiB of anonymous memory (RSS
//! under load up by about 1 MiB: the block replaces the hot pages' page
//! cache). Tools that find functions by the file their code is mapped
//! from (`perf` and valgrind name them so; uprobes fire only there) see
//! that block as anonymous memory: `TRACEMESH_HUGE_TEXT=off` leaves the
//! text on the file's pages, as does a breakpoint or uprobe already in it.

use std::io;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

/// Held by each function here from its read of `/proc/self/smaps` to its
/// last memory call: each acts on the mappings it read, which another
/// thread's move or release would change under it (a release of a range
/// the move had just filled would zero running code).
static MAPPINGS: Mutex<()> = Mutex::new(());

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
#[allow(unsafe_code)] // madvise: audited (see the workspace's lints)
pub fn release_start_up_pages() -> io::Result<u64> {
    let _alone = MAPPINGS.lock().unwrap_or_else(PoisonError::into_inner);
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

/// What [`hot_text_onto_huge_pages`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugeText {
    /// The first `bytes` of the text are on huge pages.
    Moved {
        /// A multiple of 2 MiB.
        bytes: usize,
    },
    /// The text stays on the file's pages, for this reason.
    Left(&'static str),
}

/// Puts the start of the executable's text — where `hot-text.order` lays
/// the request path — on transparent huge pages: a copy of the file's bytes
/// is made in anonymous memory, made read-only and executable, and moved
/// over the text with one `mremap`, atomically (a thread running code there
/// sees the same instructions before and after). Nothing changes when the
/// layout does not allow it (a binary linked without 2 MiB segments), when
/// a text page was written (a debugger's breakpoint or a uprobe: moved, it
/// would trap with no one to catch it), or when the kernel gives no huge
/// page (THP `never` or disabled for the process, or no free 2 MiB).
///
/// # Errors
/// `/proc/self/exe` or `/proc/self/smaps` cannot be read, or a memory call
/// fails (a policy that forbids executable anonymous memory, such as
/// systemd's `MemoryDenyWriteExecute`, fails the `mprotect`); the text is
/// then left as it was, and the copy unmapped.
#[allow(unsafe_code)] // the call below: its contract is checked here
pub fn hot_text_onto_huge_pages() -> io::Result<HugeText> {
    let _alone = MAPPINGS.lock().unwrap_or_else(PoisonError::into_inner);
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let Some(text) = text_mapping(&smaps, &exe) else {
        return Ok(HugeText::Left("no text mapping of the executable"));
    };
    if text.previous_executable && text.previous_end == text.start {
        return Ok(HugeText::Left("it was moved before"));
    }
    let first = text.start & !(HUGE_PAGE - 1);
    let last = (text.start + HOT_TEXT_BYTES).next_multiple_of(HUGE_PAGE);
    if first < text.previous_end || last > text.end {
        return Ok(HugeText::Left(
            "its huge pages would overlap another mapping (not linked with 2 MiB segments)",
        ));
    }
    if text.anonymous_kib > 0 {
        return Ok(HugeText::Left(
            "a text page was written (a breakpoint or a uprobe)",
        ));
    }
    let file = std::fs::File::open("/proc/self/exe")?;
    // SAFETY: [text.start, last) lies in the executable's text mapping,
    // read-only and executable, whose bytes are the file's from
    // `text.offset`; [first, text.start) lies between it and the mapping
    // before it, so is mapped by nothing (and `MAPPINGS` keeps this
    // module from mapping anything meanwhile).
    unsafe { onto_huge_pages(first, text.start, last, &file, text.offset) }
}

/// An anonymous mapping of ours, unmapped when dropped unless forgotten.
struct Scratch {
    at: *mut std::ffi::c_void,
    len: usize,
}

impl Drop for Scratch {
    #[allow(unsafe_code)] // munmap of memory only this value refers to
    fn drop(&mut self) {
        // SAFETY: `at..at + len` was mapped by this module for this value,
        // and nothing else refers to it.
        let _ = unsafe { rustix::mm::munmap(self.at, self.len) };
    }
}

/// Replaces the read-only, executable mapping [`start`, `last`) and the
/// unmapped gap [`first`, `start`) before it (empty when the text starts on
/// a huge page's boundary) with anonymous memory on huge pages holding the
/// bytes `file` holds from `offset` (`int3`s in the gap), read-only and
/// executable: the copy is made beside it, then one `mremap` moves the copy
/// over it. `first` and `last` are multiples of [`HUGE_PAGE`].
///
/// # Safety
/// [`start`, `last`) must be one read-only, executable mapping of `file`
/// from `offset`; [`first`, `start`) must be unmapped.
#[allow(unsafe_code)] // mmap/mremap of our own text
unsafe fn onto_huge_pages(
    first: usize,
    start: usize,
    last: usize,
    file: &std::fs::File,
    offset: u64,
) -> io::Result<HugeText> {
    use rustix::mm::{self, MapFlags, MprotectFlags, MremapFlags, ProtFlags};
    use std::os::unix::fs::FileExt;
    let len = last - first;
    // SAFETY: every mapping made here is this function's alone until the
    // mremap (and unmapped by `Scratch` on every early return); the
    // mremap replaces the caller's range with the same bytes, read-only
    // and executable as before.
    unsafe {
        let reserved = mm::mmap_anonymous(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )?;
        // The copy is the reservation's 2 MiB-aligned part: the rest goes.
        let aligned = (reserved as usize).next_multiple_of(HUGE_PAGE);
        let head = aligned - reserved as usize;
        if head > 0 {
            mm::munmap(reserved, head)?;
        }
        mm::munmap((aligned + len) as *mut _, HUGE_PAGE - head)?;
        let copy = Scratch {
            at: aligned as *mut _,
            len,
        };
        mm::madvise(copy.at, len, mm::Advice::LinuxHugepage)?;
        let bytes = std::slice::from_raw_parts_mut(copy.at.cast::<u8>(), len);
        let (gap, text) = bytes.split_at_mut(start - first);
        gap.fill(0xCC);
        file.read_exact_at(text, offset)?;
        if anonymous_huge_kib(aligned)? * 1024 < len as u64 {
            return Ok(HugeText::Left("the kernel gave no huge page"));
        }
        mm::mprotect(copy.at, len, MprotectFlags::READ | MprotectFlags::EXEC)?;
        mm::mremap_fixed(copy.at, len, len, MremapFlags::MAYMOVE, first as *mut _)?;
        std::mem::forget(copy);
    }
    Ok(HugeText::Moved { bytes: len })
}

/// The executable's text mapping (`r-xp`), as smaps shows it.
#[derive(Debug, PartialEq, Eq)]
struct TextMapping {
    /// The end of the mapping before it.
    previous_end: usize,
    /// Whether the mapping before it is executable too (this function's
    /// copy, when the text was moved before).
    previous_executable: bool,
    start: usize,
    end: usize,
    /// The file offset mapped at `start`.
    offset: u64,
    /// Pages of it that were written (smaps `Anonymous`), in KiB.
    anonymous_kib: u64,
}

fn text_mapping(smaps: &str, exe: &Path) -> Option<TextMapping> {
    let mut previous_end = 0;
    let mut previous_executable = false;
    let mut found: Option<TextMapping> = None;
    for line in smaps.lines() {
        if let Some(header) = parse_header(line) {
            if found.is_some() {
                break;
            }
            if header.perms == "r-xp" && header.path.is_some_and(|p| Path::new(p) == exe) {
                found = Some(TextMapping {
                    previous_end,
                    previous_executable,
                    start: header.start,
                    end: header.end,
                    offset: header.offset,
                    anonymous_kib: 0,
                });
            }
            previous_end = header.end;
            previous_executable = header.perms.contains('x');
        } else if let (Some(text), Some(kib)) = (found.as_mut(), field_kib(line, "Anonymous:")) {
            text.anonymous_kib = kib;
        }
    }
    found
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
/// `off`: for tools that find functions by the file their code is mapped
/// from — `perf` and valgrind name them by it, and a uprobe placed after
/// the move never fires.
pub const HUGE_TEXT_VAR: &str = "TRACEMESH_HUGE_TEXT";

/// A serving proxy's stop future: completes on `stop`; meanwhile, once
/// start-up has settled, [`hot_text_onto_huge_pages`] (unless
/// [`HUGE_TEXT_VAR`] is `off`), then [`release_start_up_pages`], on a
/// blocking thread (they read `/proc`, copy 2 MiB and may wait for the
/// kernel to compact memory). Each outcome is said at DEBUG, a failure too:
/// the pages only stay where and as they were.
pub async fn release_start_up_pages_then(stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    tokio::select! {
        () = &mut stop => return,
        () = tokio::time::sleep(START_UP_SETTLES) => {}
    }
    let settle = tokio::task::spawn_blocking(|| {
        if std::env::var_os(HUGE_TEXT_VAR).is_some_and(|v| v == "off") {
            tracing::debug!("the text stays on the file's pages: {HUGE_TEXT_VAR}=off");
        } else {
            match hot_text_onto_huge_pages() {
                Ok(HugeText::Moved { bytes }) => {
                    tracing::debug!(bytes, "the hot text is on huge pages");
                }
                Ok(HugeText::Left(why)) => {
                    tracing::debug!("the text stays on the file's pages: {why}");
                }
                Err(error) => tracing::debug!(%error, "cannot put the hot text on huge pages"),
            }
        }
        match release_start_up_pages() {
            Ok(kib) => tracing::debug!(kib, "unmapped the executable's start-up pages"),
            Err(error) => tracing::debug!(%error, "cannot unmap the executable's start-up pages"),
        }
    });
    tokio::select! {
        () = &mut stop => return,
        _ = settle => {}
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
        assert_eq!(
            text_mapping(SMAPS, Path::new("/opt/tracemesh")),
            Some(TextMapping {
                previous_end: 0x5581a0645000,
                previous_executable: false,
                start: 0x5581a0646000,
                end: 0x5581a1d0e000,
                offset: 0x645000,
                anonymous_kib: 0,
            })
        );
        assert_eq!(text_mapping(SMAPS, Path::new("/opt/other")), None);
        // A breakpoint's page is seen, and keeps the text where it is.
        let written = SMAPS.replacen(
            "Rss:               12856 kB\nAnonymous:             0 kB",
            "Rss:               12856 kB\nAnonymous:             4 kB",
            1,
        );
        let text = text_mapping(&written, Path::new("/opt/tracemesh")).unwrap();
        assert_eq!(text.anonymous_kib, 4);
    }

    #[test]
    fn the_process_runs_on_after_its_hot_text_moves() {
        // The bin's test harness is linked as the binary is (build.rs):
        // with 2 MiB segments, its text moves when THP allows it.
        let outcome = hot_text_onto_huge_pages().expect("moves or says why not");
        let text = format!("{:?}", vec![1u32, 2, 3]);
        assert_eq!(text, "[1, 2, 3]");
        if let HugeText::Moved { bytes } = outcome {
            assert_eq!(bytes % HUGE_PAGE, 0);
            // Moved once: the text's start is no longer the file's.
            assert!(matches!(
                hot_text_onto_huge_pages().unwrap(),
                HugeText::Left(_)
            ));
        }
    }

    fn resident_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| field_kib(l, "RssFile:"))
            .expect("RssFile in /proc/self/status")
    }
}
