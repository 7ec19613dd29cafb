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

/// How long after a proxy is ready its start-up is taken to be over: the
/// admin server, the config watcher and the certificate rotation have
/// started by then.
const START_UP_SETTLES: std::time::Duration = std::time::Duration::from_secs(1);

/// A serving proxy's stop future: completes on `stop`; meanwhile, once
/// start-up has settled, [`release_start_up_pages`] (said at DEBUG; a
/// failure is said at DEBUG too: the pages only stay resident).
pub async fn release_start_up_pages_then(stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    tokio::select! {
        () = &mut stop => return,
        () = tokio::time::sleep(START_UP_SETTLES) => {}
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

    fn resident_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| field_kib(l, "RssFile:"))
            .expect("RssFile in /proc/self/status")
    }
}
