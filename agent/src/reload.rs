//! Live reload: the agent watches its config file and swaps in each valid
//! version as soon as it is written; in-flight requests finish on the
//! snapshot they started with. An invalid file is rejected (logged and
//! counted) and the previous config stays in force.
//!
//! The watcher sleeps until the kernel says something changed (inotify on
//! the directories holding the file), so an idle agent has no timer for it
//! but a slow fallback poll ([`FALLBACK_POLL`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::compile;
use crate::model::Snapshot;
use crate::proxy::Shared;

/// How often the file's metadata is looked at when inotify reports nothing.
/// inotify does not see changes made on another host to a network
/// filesystem, nor writes by a process that keeps the file open without
/// closing it; those wait at most this long. Local writes, renames and
/// symlink swaps are seen at once.
const FALLBACK_POLL: Duration = Duration::from_secs(10);

/// How often the file's metadata is looked at where inotify cannot be set
/// up (not Linux, or the user's inotify instances are used up).
const POLL: Duration = Duration::from_millis(200);

/// What a file's metadata says of its content: a write changes the size or
/// the change time, a replacement by rename (a Kubernetes ConfigMap volume
/// swaps a symlink) changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The config file as first read: its bytes, and its metadata as looked at
/// just before they were read.
pub struct Baseline {
    /// The bytes the config in force is compiled from.
    pub bytes: Vec<u8>,
    stamp: Option<Stamp>,
}

impl Baseline {
    /// Reads the file at `path` (at most
    /// [`MAX_CONFIG_BYTES`](crate::config::source::MAX_CONFIG_BYTES)). The
    /// metadata is looked at first: a change made after that look shows in
    /// the watcher's first look, so nothing between the two is missed.
    pub fn read(path: &Path) -> Result<Self, crate::config::diagnostics::ConfigRejected> {
        let stamp = std::fs::metadata(path).ok().map(|meta| Stamp::of(&meta));
        let bytes = compile::read_file(path)?;
        Ok(Self { bytes, stamp })
    }
}

/// Watches `path` until the future is dropped; `baseline` is what the
/// config in force was compiled from. Each version of the file that differs
/// from the config in force is compiled on a blocking thread (see
/// [`Watcher::next_change`]), so the admin API on this runtime answers
/// throughout a slow reload.
pub async fn watch(path: PathBuf, baseline: Baseline, shared: Arc<Shared>) {
    let mut watcher = Watcher::new(path, baseline, Some(FALLBACK_POLL));
    loop {
        let Some(bytes) = watcher.next_change().await else {
            return; // the runtime is shutting down
        };
        let (path, shared) = (watcher.path.clone(), shared.clone());
        let _ = tokio::task::spawn_blocking(move || reload(&path, &bytes, &shared)).await;
    }
}

/// The config file's watcher: the bytes in force, the metadata they were
/// read under, and what wakes it.
struct Watcher {
    path: Arc<PathBuf>,
    /// The bytes the config in force was compiled from.
    last: Arc<Vec<u8>>,
    /// The file's metadata when `last` (or a read equal to it) was read.
    stamp: Option<Stamp>,
    changes: Changes,
    /// The first look is due without waiting for a wakeup: the file may
    /// have changed between the baseline's read and the watch being set up,
    /// a change no event will report.
    look_now: bool,
    /// The file could not be read at the last look (warned once per spell).
    unreadable: bool,
}

impl Watcher {
    /// Sets up the watch on `path`; `fallback` as for [`Changes::new`].
    fn new(path: PathBuf, baseline: Baseline, fallback: Option<Duration>) -> Self {
        let changes = Changes::new(&path, fallback);
        Self {
            path: Arc::new(path),
            last: Arc::new(baseline.bytes),
            stamp: baseline.stamp,
            changes,
            look_now: true,
            unreadable: false,
        }
    }

    /// Completes with the file's bytes once they differ from those in
    /// force (which they then become); `None` when the runtime is shutting
    /// down. The file's metadata (through symlinks) is looked at at once,
    /// then whenever [`Changes`] wakes; the file is read only when its
    /// metadata says it changed. Comparing metadata through the path
    /// (rather than trusting which file an event names) also sees files
    /// replaced by rename or through symlinks, as Kubernetes ConfigMap
    /// volumes are updated.
    async fn next_change(&mut self) -> Option<Arc<Vec<u8>>> {
        loop {
            if !std::mem::take(&mut self.look_now) {
                self.changes.next().await;
            }
            let path = self.path.as_path();
            let now = match tokio::fs::metadata(path).await.map(|m| Stamp::of(&m)) {
                Ok(now) if Some(now) == self.stamp => continue,
                Ok(now) => now,
                Err(error) => {
                    self.warn_unreadable(&error);
                    continue;
                }
            };
            let read = {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || crate::config::source::read_file_bounded(&path))
                    .await
            };
            let current = match read {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(error)) => {
                    self.warn_unreadable(&error);
                    continue;
                }
                Err(_) => return None,
            };
            self.unreadable = false;
            self.stamp = Some(now);
            if current != *self.last {
                self.last = Arc::new(current);
                return Some(self.last.clone());
            }
        }
    }

    /// Warns once per spell of the file being unreadable.
    fn warn_unreadable(&mut self, error: &dyn std::fmt::Display) {
        if !std::mem::replace(&mut self.unreadable, true) {
            tracing::warn!(%error, file = %self.path.display(), "config file unreadable; keeping the config in force");
        }
    }
}

/// What wakes the watcher: an inotify event in the directory of the path as
/// given (an editor's rename, a ConfigMap's `..data` symlink swap, a write
/// closed) or in the directory of the file it resolves to (a write through
/// a symlink); else the fallback poll. Events are not filtered by name: a
/// wakeup only costs a look at the file's metadata.
struct Changes {
    #[cfg(target_os = "linux")]
    inotify: Option<inotify::Watch>,
    /// Wake at least this often even without an event.
    fallback: Option<Duration>,
}

impl Changes {
    /// Watches the directories of `path`; polls every [`POLL`] where
    /// inotify cannot be set up.
    fn new(path: &Path, fallback: Option<Duration>) -> Self {
        #[cfg(target_os = "linux")]
        {
            let inotify = match inotify::Watch::new(path) {
                Ok(watch) => Some(watch),
                Err(error) => {
                    tracing::warn!(%error, file = %path.display(), "cannot watch the config file with inotify; polling it every 200 ms");
                    None
                }
            };
            Self { inotify, fallback }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            Self { fallback }
        }
    }

    /// Completes when the file may have changed.
    async fn next(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(watch) = self.inotify.as_mut() {
            let changed = watch.changed();
            let outcome = match self.fallback {
                Some(period) => tokio::time::timeout(period, changed).await.ok(),
                None => Some(changed.await),
            };
            if let Some(Err(error)) = outcome {
                tracing::warn!(%error, "inotify failed; polling the config file every 200 ms");
                self.inotify = None;
            }
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(target_os = "linux")]
mod inotify {
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    use rustix::io::Errno;
    use tokio::sync::Notify;

    /// Changes to a directory's entries that can change what a path in it
    /// reads: a write closed, an entry created, moved or removed, its
    /// metadata changed. Not `MODIFY`: a file being written (truncated,
    /// then filled) would be read half-written; its `CLOSE_WRITE` follows.
    const EVENTS: WatchFlags = WatchFlags::CLOSE_WRITE
        .union(WatchFlags::CREATE)
        .union(WatchFlags::DELETE)
        .union(WatchFlags::MOVED_FROM)
        .union(WatchFlags::MOVED_TO)
        .union(WatchFlags::ATTRIB)
        .union(WatchFlags::ONLYDIR);

    /// An inotify instance watching the directory of a path and that of
    /// the file the path resolves to. A thread of its own sleeps in a
    /// blocking read of the instance and wakes the watcher per batch of
    /// events; it ends when the watch is dropped.
    pub(super) struct Watch {
        fd: Arc<OwnedFd>,
        path: PathBuf,
        /// The watch on the path's own directory.
        own: i32,
        /// The directory of the file `path` resolves to, when it is not
        /// `path`'s own directory, and its watch.
        target: Option<(PathBuf, i32)>,
        shared: Arc<Shared>,
    }

    /// What the reading thread and the watcher share.
    #[derive(Default)]
    struct Shared {
        /// Woken per batch of events read.
        events: Notify,
        /// The read failed: inotify cannot be used any more.
        failed: AtomicBool,
        /// The watch was dropped: the thread ends at its next event.
        stopped: AtomicBool,
    }

    /// The directory holding `path` (`.` for a bare file name).
    fn parent(path: &Path) -> PathBuf {
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    impl Watch {
        pub(super) fn new(path: &Path) -> std::io::Result<Self> {
            let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC)?);
            let own = inotify::add_watch(&*fd, parent(path), EVENTS)?;
            let shared = Arc::new(Shared::default());
            let (reader_fd, reader) = (fd.clone(), shared.clone());
            std::thread::Builder::new()
                .name("config-watch".into())
                .spawn(move || read_events(&reader_fd, &reader))?;
            let mut watch = Self {
                fd,
                path: path.to_path_buf(),
                own,
                target: None,
                shared,
            };
            watch.follow();
            Ok(watch)
        }

        /// Watches the directory of the file the path now resolves to (a
        /// symlink may point elsewhere since the last look), and stops
        /// watching the one it resolved to before.
        fn follow(&mut self) {
            let own = std::fs::canonicalize(parent(&self.path)).ok();
            let target = std::fs::canonicalize(&self.path)
                .ok()
                .map(|file| parent(&file))
                .filter(|dir| Some(dir) != own.as_ref());
            if self.target.as_ref().map(|(dir, _)| dir) == target.as_ref() {
                return;
            }
            if let Some((_, wd)) = self.target.take() {
                // Gone already when its directory was removed.
                let _ = inotify::remove_watch(&*self.fd, wd);
            }
            if let Some(dir) = target {
                match inotify::add_watch(&*self.fd, &dir, EVENTS) {
                    Ok(wd) => self.target = Some((dir, wd)),
                    Err(error) => {
                        tracing::debug!(%error, dir = %dir.display(), "cannot watch the config file's directory")
                    }
                }
            }
        }

        /// Completes once events have arrived since the last call; an
        /// error means inotify cannot be used any more.
        pub(super) async fn changed(&mut self) -> std::io::Result<()> {
            self.shared.events.notified().await;
            if self.shared.failed.load(Ordering::Acquire) {
                return Err(std::io::Error::other("reading inotify events failed"));
            }
            self.follow();
            Ok(())
        }
    }

    impl Drop for Watch {
        /// Removing the watches queues `IN_IGNORED` events, which end the
        /// reading thread's blocking read.
        fn drop(&mut self) {
            self.shared.stopped.store(true, Ordering::Release);
            if let Some((_, wd)) = self.target.take() {
                let _ = inotify::remove_watch(&*self.fd, wd);
            }
            let _ = inotify::remove_watch(&*self.fd, self.own);
        }
    }

    /// The reading thread: blocks until events arrive, wakes the watcher
    /// once per batch read.
    fn read_events(fd: &OwnedFd, shared: &Shared) {
        // Room for many events with long names (each is 16 bytes and its name).
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(fd, &mut buf);
        loop {
            match events.next() {
                Ok(_) if shared.stopped.load(Ordering::Acquire) => return,
                Ok(_) => {
                    if events.is_buffer_empty() {
                        shared.events.notify_one();
                    }
                }
                Err(Errno::INTR) => {}
                Err(error) => {
                    tracing::debug!(%error, "reading inotify events failed");
                    shared.failed.store(true, Ordering::Release);
                    shared.events.notify_one();
                    return;
                }
            }
        }
    }
}

/// Compiles `bytes` and swaps it in if valid.
pub fn reload(path: &Path, bytes: &[u8], shared: &Shared) {
    let old = shared.config.load_full();
    let version = old.version + 1;
    let file: Arc<str> = Arc::from(path.display().to_string());
    let text = String::from_utf8_lossy(bytes);
    let metrics = &shared.metrics;
    // An ingress gateway's file is compiled as the gateway loaded it.
    let compiled = match &old.gateway {
        Some(_) => compile::compile_gateway_text(&file, &text, version, &shared.live).map(|c| {
            compile::Compiled {
                snapshot: c.proxy,
                diagnostics: c.diagnostics,
            }
        }),
        None => compile::compile_text(&file, &text, version, &shared.live),
    };
    match compiled {
        Ok(compiled) => {
            for warning in compiled.diagnostics.warnings() {
                tracing::warn!("{warning}");
            }
            warn_fixed_settings(&old, &compiled.snapshot);
            // The Telemetry's metric shapes and log files before the first
            // request under the new config.
            metrics.apply_telemetry(&compiled.snapshot.telemetry);
            shared.access_logs.open_for(&compiled.snapshot.telemetry);
            shared.config.store(Arc::new(compiled.snapshot));
            metrics
                .config_reloads
                .with_label_values(&["accepted"])
                .inc();
            metrics.config_version.set(version as i64);
            tracing::info!(version, "config reloaded");
        }
        Err(rejected) => {
            metrics
                .config_reloads
                .with_label_values(&["rejected"])
                .inc();
            for error in rejected.0.errors() {
                tracing::error!("{error}");
            }
            tracing::error!(
                in_force = old.version,
                "config rejected; the previous config stays in force"
            );
        }
    }
}

/// Listeners and telemetry are set up once; a change to them needs a restart.
fn warn_fixed_settings(old: &Snapshot, new: &Snapshot) {
    let (a, b) = (&old.listeners, &new.listeners);
    let listeners_changed = a.inbound != b.inbound
        || a.outbound != b.outbound
        || a.admin != b.admin
        || a.outbound_tcp != b.outbound_tcp
        || a.app_protocol != b.app_protocol;
    let ports = |s: &Snapshot| {
        s.gateway.as_ref().map(|g| {
            let ports = &g.listeners.ports;
            ports
                .iter()
                .map(|p| (p.number, p.listen))
                .collect::<Vec<_>>()
        })
    };
    if ports(old) != ports(new) {
        tracing::warn!(
            "the gateway's ports or their addresses changed; they take effect after a restart"
        );
    }
    if listeners_changed {
        tracing::warn!(
            "listener addresses and appProtocol changed; they take effect after a restart"
        );
    }
    let (a, b) = (&old.bootstrap, &new.bootstrap);
    if a.telemetry.otlp != b.telemetry.otlp {
        tracing::warn!(
            in_force = %a.telemetry.otlp.endpoint,
            configured = %b.telemetry.otlp.endpoint,
            "the span exporter's endpoint (spec.telemetry.otlp, or the workload's tracing \
             provider) changed; it takes effect after a restart"
        );
    }
    let rest = |t: &crate::model::bootstrap::Telemetry| crate::model::bootstrap::Telemetry {
        otlp: b.telemetry.otlp.clone(),
        ..t.clone()
    };
    if rest(&a.telemetry) != b.telemetry
        || a.access_log != b.access_log
        || a.concurrency != b.concurrency
        || a.certificate != b.certificate
    {
        tracing::warn!(
            "telemetry, accessLog and concurrency changed; they take effect after a restart"
        );
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fresh directory of its own, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "tracemesh-reload-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("a directory");
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Waits for the watcher to wake from inotify alone (no fallback poll);
    /// fails instead of hanging when the event never comes.
    async fn woken(changes: &mut Changes) {
        tokio::time::timeout(Duration::from_secs(30), changes.next())
            .await
            .expect("inotify never woke the watcher");
    }

    /// A write between the baseline's read and the watch's setup reports
    /// no event; the watcher's first look sees it anyway. With no fallback
    /// poll, a watcher that waited for an event would never report it.
    #[tokio::test]
    async fn a_write_before_the_watch_is_set_up_is_seen_at_once() {
        let dir = Dir::new("early");
        let path = dir.0.join("agent.yaml");
        std::fs::write(&path, "first").unwrap();
        let baseline = Baseline::read(&path).unwrap();
        std::fs::write(&path, "second").unwrap();
        let mut watcher = Watcher::new(path.clone(), baseline, None);
        let seen = tokio::time::timeout(Duration::from_secs(30), watcher.next_change())
            .await
            .expect("the early write was never seen")
            .expect("a runtime");
        assert_eq!(seen.as_slice(), b"second");

        // Then events: a rewrite with the same bytes is no change, a
        // different one is.
        std::fs::write(&path, "second").unwrap();
        std::fs::write(&path, "third").unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(30), watcher.next_change())
            .await
            .expect("the write was never seen")
            .expect("a runtime");
        assert_eq!(seen.as_slice(), b"third");
    }

    #[tokio::test]
    async fn a_write_to_the_file_wakes_the_watcher() {
        let dir = Dir::new("write");
        let path = dir.0.join("agent.yaml");
        std::fs::write(&path, "a").unwrap();
        let mut changes = Changes::new(&path, None);
        assert!(changes.inotify.is_some(), "inotify is available here");
        std::fs::write(&path, "b").unwrap();
        woken(&mut changes).await;
    }

    #[tokio::test]
    async fn a_write_through_a_symlink_wakes_the_watcher() {
        let (links, files) = (Dir::new("links"), Dir::new("files"));
        let file = files.0.join("agent.yaml");
        std::fs::write(&file, "a").unwrap();
        let path = links.0.join("agent.yaml");
        symlink(&file, &path).unwrap();
        let mut changes = Changes::new(&path, None);
        // Only the target's directory sees this write.
        std::fs::write(&file, "b").unwrap();
        woken(&mut changes).await;
    }

    /// A Kubernetes ConfigMap volume: `agent.yaml → ..data/agent.yaml`,
    /// `..data → ..<timestamp>`, updated by swapping `..data` by rename.
    #[tokio::test]
    async fn a_configmap_swap_wakes_the_watcher_and_changes_the_stamp() {
        let dir = Dir::new("configmap");
        let version = |name: &str, text: &str| {
            std::fs::create_dir(dir.0.join(name)).unwrap();
            std::fs::write(dir.0.join(name).join("agent.yaml"), text).unwrap();
        };
        version("..2026_a", "first");
        symlink("..2026_a", dir.0.join("..data")).unwrap();
        let path = dir.0.join("agent.yaml");
        symlink("..data/agent.yaml", &path).unwrap();
        let before = Stamp::of(&std::fs::metadata(&path).unwrap());
        let mut changes = Changes::new(&path, None);

        version("..2026_b", "second, longer");
        symlink("..2026_b", dir.0.join("..data_tmp")).unwrap();
        std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
        woken(&mut changes).await;
        let after = Stamp::of(&std::fs::metadata(&path).unwrap());
        assert_ne!(before, after, "the watcher sees a different file");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second, longer");
    }
}
