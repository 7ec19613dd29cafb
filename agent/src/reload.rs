//! Live reload: the agent watches its config file and swaps in each valid
//! version as soon as it is written; in-flight requests finish on the
//! snapshot they started with. An invalid file is rejected (logged and
//! counted) and the previous config stays in force.
//!
//! The watcher sleeps until the kernel says something changed (inotify on
//! the way to the file, [`changes`]), so an idle agent has no timer for it
//! but a slow fallback poll ([`FALLBACK_POLL`]).

mod changes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::changes::Changes;
use crate::compile;
use crate::config::file_stamp::FileStamp;
use crate::model::Snapshot;
use crate::proxy::Shared;

/// How often the file's metadata is looked at when inotify reports nothing.
/// inotify does not see changes made on another host to a network
/// filesystem, nor writes by a process that keeps the file open without
/// closing it; those wait at most this long. Local writes, renames and
/// symlink swaps are seen at once.
const FALLBACK_POLL: Duration = Duration::from_secs(10);

/// The config file as first read: its bytes, and its metadata as looked at
/// just before they were read.
pub struct Baseline {
    /// The bytes the config in force is compiled from.
    pub bytes: Vec<u8>,
    stamp: Option<FileStamp>,
}

impl Baseline {
    /// Reads the file at `path` (at most
    /// [`MAX_CONFIG_BYTES`](crate::config::source::MAX_CONFIG_BYTES)). The
    /// metadata is looked at first: a change made after that look shows in
    /// the watcher's first look, so nothing between the two is missed.
    pub fn read(path: &Path) -> Result<Self, crate::config::diagnostics::ConfigRejected> {
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|meta| FileStamp::of(&meta));
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
    watcher.refer_to(&shared.config.load().files);
    watcher.shared = Some(shared.clone());
    // The bytes of the config in force (the last version read may have
    // been rejected).
    let mut in_force = watcher.last.clone();
    loop {
        let bytes = match watcher.next_change().await {
            None => return, // the runtime is shutting down
            Some(Change::Bytes(bytes)) => bytes,
            Some(Change::Resolved) => {
                let (path, compiling, compiled) =
                    (watcher.path.clone(), shared.clone(), in_force.clone());
                let _ = tokio::task::spawn_blocking(move || rebuild(&path, &compiled, &compiling))
                    .await;
                continue;
            }
            Some(Change::Referenced(file)) => {
                tracing::info!(file = %file.display(), "a file the config names changed; compiling the config again");
                in_force.clone()
            }
            Some(Change::Unreadable(error)) => {
                tracing::warn!(%error, file = %watcher.path.display(), "config file unreadable; keeping the config in force");
                shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["unreadable"])
                    .inc();
                continue;
            }
        };
        let before = shared.config.load().version;
        let (path, compiling, compiled) = (watcher.path.clone(), shared.clone(), bytes.clone());
        let _ = tokio::task::spawn_blocking(move || reload(&path, &compiled, &compiling)).await;
        // The files the accepted config read, from before it read them; a
        // rejected one leaves the watch as it was.
        let now = shared.config.load();
        if now.version != before {
            in_force = bytes;
            watcher.refer_to(&now.files);
        }
    }
}

/// What the watcher saw change.
enum Change {
    /// The file now holds these bytes, other than those in force.
    Bytes(Arc<Vec<u8>>),
    /// The file cannot be read, for a reason not reported before in this
    /// spell (missing, a directory, unreadable, too large).
    Unreadable(String),
    /// A file the config in force names (a certificate, a key, a CA
    /// bundle) changed: the config is to be compiled again.
    Referenced(PathBuf),
    /// The addresses a `resolution: DNS` name resolves to changed
    /// ([`crate::resolve`]): the config in force is to be compiled again,
    /// as the same version, with each address an endpoint.
    Resolved,
}

/// What became of a missing file within [`MISSING_GRACE`].
enum Return {
    /// It is back, and an event says it was written.
    Written,
    /// It is back, but no event says its writer is done with it.
    BeingWritten,
    /// It is still missing.
    Missing,
}

/// How long a file that went missing may take to come back before that is
/// reported: an editor saving by rename-then-write, or `rm` then `cat >`,
/// leaves no file for a moment.
const MISSING_GRACE: Duration = Duration::from_secs(1);

/// The config file's watcher: the bytes in force, the metadata they were
/// read under, and what wakes it.
struct Watcher {
    path: Arc<PathBuf>,
    /// The bytes last read: those of the config in force, or of a version
    /// that was rejected.
    last: Arc<Vec<u8>>,
    /// The file's metadata when `last` (or a read equal to it) was read.
    stamp: Option<FileStamp>,
    changes: Changes,
    /// The first look is due without waiting for a wakeup: the file may
    /// have changed between the baseline's read and the watch being set up,
    /// a change no event will report.
    look_now: bool,
    /// Why the file could not be read at the last look, as last reported
    /// (each reason is reported once per spell).
    unreadable: Option<String>,
    /// The files the config in force names, each with its stamp when last
    /// read or looked at: looked at whenever the config file is.
    referenced: Vec<(PathBuf, Option<FileStamp>)>,
    /// What the agent shares, whose DNS answers also wake the watcher
    /// ([`Change::Resolved`]); `None`: files only.
    shared: Option<Arc<Shared>>,
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
            unreadable: None,
            referenced: Vec::new(),
            shared: None,
        }
    }

    /// Watches `files` (the config in force's [`Snapshot::files`]) from now
    /// on, each changed once its stamp differs from the one given.
    fn refer_to(&mut self, files: &[(PathBuf, Option<FileStamp>)]) {
        self.referenced = files.to_vec();
    }

    /// The first file the config names whose stamp changed since it was
    /// read or last found changed (its new stamp kept, so a config that
    /// cannot be compiled from it is not compiled again until it changes
    /// again). Kubernetes updates a Secret volume by swapping a symlink,
    /// which changes the inode through the path. Looked at on a blocking
    /// thread, as a mount that hangs would hang the look.
    async fn referenced_change(&mut self) -> Option<PathBuf> {
        if self.referenced.is_empty() {
            return None;
        }
        let paths: Vec<PathBuf> = self.referenced.iter().map(|(p, _)| p.clone()).collect();
        let now = tokio::task::spawn_blocking(move || {
            paths.iter().map(|p| FileStamp::at(p)).collect::<Vec<_>>()
        })
        .await
        .ok()?;
        self.referenced
            .iter_mut()
            .zip(now)
            .find_map(|((path, stamp), now)| {
                (now != *stamp).then(|| {
                    *stamp = now;
                    path.clone()
                })
            })
    }

    /// Completes with the file's bytes once they differ from those in
    /// force (which they then become); `None` when the runtime is shutting
    /// down. The file's metadata (through symlinks) is looked at at once,
    /// then whenever [`Changes`] wakes; the file is read only when its
    /// metadata says it changed. Comparing metadata through the path
    /// (rather than trusting which file an event names) also sees files
    /// replaced by rename or through symlinks, as Kubernetes ConfigMap
    /// volumes are updated.
    async fn next_change(&mut self) -> Option<Change> {
        loop {
            if !std::mem::take(&mut self.look_now) {
                let resolved = async {
                    match &self.shared {
                        Some(shared) => shared.live.dns().changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = self.changes.next() => {}
                    () = resolved => return Some(Change::Resolved),
                }
            }
            let path = self.path.as_path();
            let now = match tokio::fs::metadata(path).await.map(|m| FileStamp::of(&m)) {
                // The config file as it was: the files it names, then.
                Ok(now) if Some(now) == self.stamp => match self.referenced_change().await {
                    Some(file) => return Some(Change::Referenced(file)),
                    None => continue,
                },
                // Its writer's close wakes the watcher again.
                Ok(_) if self.changes.being_written() => continue,
                Ok(now) => now,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    if self.unreadable.as_ref() != Some(&error.to_string()) {
                        match self.wait_for_return().await {
                            Return::Written => {
                                self.look_now = true;
                                continue;
                            }
                            // Created meanwhile and not yet closed: its
                            // writer's close will wake the watcher.
                            Return::BeingWritten => continue,
                            Return::Missing => {}
                        }
                    }
                    match self.newly_unreadable(&error) {
                        Some(change) => return Some(change),
                        None => continue,
                    }
                }
                Err(error) => match self.newly_unreadable(&error) {
                    Some(change) => return Some(change),
                    None => continue,
                },
            };
            let read = {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || crate::config::source::read_file_bounded(&path))
                    .await
            };
            let current = match read {
                // Empty is a file created or truncated and not yet written
                // (no config is empty): its writer's close wakes the
                // watcher again. The config in force stays meanwhile.
                Ok(Ok(bytes)) if bytes.is_empty() => continue,
                Ok(Ok(bytes)) => bytes,
                Ok(Err(error)) => match self.newly_unreadable(&error) {
                    Some(change) => return Some(change),
                    None => continue,
                },
                Err(_) => return None,
            };
            self.unreadable = None;
            self.stamp = Some(now);
            if current != *self.last {
                self.last = Arc::new(current);
                return Some(Change::Bytes(self.last.clone()));
            }
            if let Some(file) = self.referenced_change().await {
                return Some(Change::Referenced(file));
            }
        }
    }

    /// Waits up to [`MISSING_GRACE`] for a file found missing to come back
    /// written (an event that counts, with the file there again). An editor
    /// saving by rename-then-write, `rm` then `cat >`, or a storm of such
    /// saves leaves it missing for moments only.
    async fn wait_for_return(&mut self) -> Return {
        let deadline = tokio::time::Instant::now() + MISSING_GRACE;
        while tokio::time::timeout_at(deadline, self.changes.next())
            .await
            .is_ok()
        {
            if tokio::fs::metadata(self.path.as_path()).await.is_ok() {
                return Return::Written;
            }
        }
        match tokio::fs::metadata(self.path.as_path()).await {
            Ok(_) => Return::BeingWritten,
            Err(_) => Return::Missing,
        }
    }

    /// The file cannot be read for `error`: a change to report when the
    /// reason differs from the last one reported.
    fn newly_unreadable(&mut self, error: &std::io::Error) -> Option<Change> {
        let reason = error.to_string();
        if self.unreadable.as_ref() == Some(&reason) {
            return None;
        }
        self.unreadable = Some(reason.clone());
        Some(Change::Unreadable(reason))
    }
}

/// Compiles `bytes` as `version` of the config, as the config in force
/// `old` was loaded (an ingress gateway's as a gateway's).
fn compile_as(
    path: &Path,
    bytes: &[u8],
    shared: &Shared,
    old: &Snapshot,
    version: u64,
) -> Result<compile::Compiled, crate::config::diagnostics::ConfigRejected> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let text = String::from_utf8_lossy(bytes);
    match &old.gateway {
        Some(_) => compile::compile_gateway_text(&file, &text, version, &shared.live).map(|c| {
            compile::Compiled {
                snapshot: c.proxy,
                diagnostics: c.diagnostics,
            }
        }),
        None => compile::compile_text(&file, &text, version, &shared.live),
    }
}

/// Compiles the config in force (`bytes`) again, as the same version, once
/// the addresses a `resolution: DNS` name resolves to changed: the same
/// config with other endpoints, so no reload is counted. Its warnings were
/// logged when it was loaded.
fn rebuild(path: &Path, bytes: &[u8], shared: &Shared) {
    let old = shared.config.load_full();
    match compile_as(path, bytes, shared, &old, old.version) {
        Ok(compiled) => {
            shared.metrics.apply_telemetry(&compiled.snapshot.telemetry);
            shared.access_logs.open_for(&compiled.snapshot.telemetry);
            shared.install(compiled.snapshot);
            tracing::info!(
                version = old.version,
                "DNS answers changed; endpoints follow them"
            );
        }
        Err(rejected) => {
            let errors = rejected.0.errors().map(|e| e.to_string());
            tracing::warn!(
                errors = errors.collect::<Vec<_>>().join("; "),
                "DNS answers changed but the config in force no longer compiles; its endpoints stay"
            );
        }
    }
}

/// Compiles `bytes` and swaps it in if valid.
pub fn reload(path: &Path, bytes: &[u8], shared: &Shared) {
    let old = shared.config.load_full();
    let version = old.version + 1;
    let metrics = &shared.metrics;
    match compile_as(path, bytes, shared, &old, version) {
        Ok(compiled) => {
            for warning in compiled.diagnostics.warnings() {
                tracing::warn!("{warning}");
            }
            warn_fixed_settings(&old, &compiled.snapshot);
            // The Telemetry's metric shapes and log files before the first
            // request under the new config.
            metrics.apply_telemetry(&compiled.snapshot.telemetry);
            shared.access_logs.open_for(&compiled.snapshot.telemetry);
            shared.install(compiled.snapshot);
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
/// (`appProtocol` picks the inbound listener's kind, HTTP or TCP, once;
/// the HTTP version the application is spoken to follows each config.)
fn warn_fixed_settings(old: &Snapshot, new: &Snapshot) {
    let (a, b) = (&old.listeners, &new.listeners);
    let listeners_changed = a.inbound != b.inbound
        || a.outbound != b.outbound
        || a.admin != b.admin
        || a.outbound_tcp != b.outbound_tcp
        || a.app_protocol.is_http() != b.app_protocol.is_http();
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
            "listener addresses, or appProtocol between TCP (or TLS) and HTTP, changed; they take effect after a restart"
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
    if a.max_stalled_streams != b.max_stalled_streams {
        tracing::warn!(
            in_force = a.max_stalled_streams,
            configured = b.max_stalled_streams,
            "spec.overload.maxStalledStreams changed; it takes effect after a restart"
        );
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The watcher's next report, as text; fails instead of hanging.
    async fn next(watcher: &mut Watcher) -> String {
        let change = tokio::time::timeout(Duration::from_secs(30), watcher.next_change())
            .await
            .expect("the watcher never reported")
            .expect("a runtime");
        match change {
            Change::Bytes(bytes) => format!("bytes {}", String::from_utf8_lossy(&bytes)),
            Change::Unreadable(reason) => format!("unreadable {reason}"),
            Change::Referenced(file) => format!("referenced {}", file.display()),
            Change::Resolved => "resolved".to_owned(),
        }
    }

    /// A certificate the config names, replaced as a Kubernetes Secret
    /// volume replaces it (a new file renamed over the old one), is a
    /// change of the config, seen at the watcher's next look (its fallback
    /// poll, with no event on the config file); once seen, it is not seen
    /// again until it changes again. A file it no longer names is not
    /// watched.
    #[tokio::test]
    async fn a_replaced_certificate_the_config_names_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "config").unwrap();
        let cert = dir.path().join("roots.pem");
        std::fs::write(&cert, "first roots").unwrap();
        let baseline = Baseline::read(&path).unwrap();
        let poll = Some(Duration::from_millis(50));
        let mut watcher = Watcher::new(path.clone(), baseline, poll);
        watcher.refer_to(&[(cert.clone(), FileStamp::at(&cert))]);
        let replace = |text: &str| {
            let new = dir.path().join("roots.pem.new");
            std::fs::write(&new, text).unwrap();
            std::fs::rename(&new, &cert).unwrap();
        };
        replace("second roots");
        assert_eq!(
            next(&mut watcher).await,
            format!("referenced {}", cert.display())
        );
        // Seen once: the config file's own write is what comes next.
        std::fs::write(&path, "config again").unwrap();
        assert_eq!(next(&mut watcher).await, "bytes config again");
        watcher.refer_to(&[]);
        replace("third roots");
        std::fs::write(&path, "config once more").unwrap();
        assert_eq!(next(&mut watcher).await, "bytes config once more");
    }

    /// A write between the baseline's read and the watch's setup reports
    /// no event; the watcher's first look sees it anyway. With no fallback
    /// poll, a watcher that waited for an event would never report it.
    #[tokio::test]
    async fn a_write_before_the_watch_is_set_up_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "first").unwrap();
        let baseline = Baseline::read(&path).unwrap();
        std::fs::write(&path, "second").unwrap();
        let mut watcher = Watcher::new(path.clone(), baseline, None);
        assert_eq!(next(&mut watcher).await, "bytes second");

        // Then events: a rewrite with the same bytes is no change, a
        // different one is.
        std::fs::write(&path, "second").unwrap();
        std::fs::write(&path, "third").unwrap();
        assert_eq!(next(&mut watcher).await, "bytes third");
    }

    /// An unreadable file is reported once per reason: missing (after the
    /// grace a save by rename-then-write needs), then a directory in its
    /// place; a readable version ends the spell.
    #[tokio::test]
    async fn an_unreadable_file_is_reported_once_per_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "first").unwrap();
        let baseline = Baseline::read(&path).unwrap();
        let mut watcher = Watcher::new(path.clone(), baseline, None);

        std::fs::remove_file(&path).unwrap();
        let missing = next(&mut watcher).await;
        assert!(missing.starts_with("unreadable No such file"), "{missing}");
        std::fs::create_dir(&path).unwrap();
        let directory = next(&mut watcher).await;
        assert!(
            directory.starts_with("unreadable Is a directory"),
            "{directory}"
        );
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "second").unwrap();
        assert_eq!(next(&mut watcher).await, "bytes second");
    }

    /// A file replaced by one its writer holds open is read once the
    /// writer closes it, however long that takes (not when the grace for
    /// a missing file ends); an empty file is never taken for a config.
    #[tokio::test]
    async fn a_file_is_read_once_its_writer_is_done() {
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "first").unwrap();
        let baseline = Baseline::read(&path).unwrap();
        let mut watcher = Watcher::new(path.clone(), baseline, None);
        // Its first look (nothing changed) done, it waits for events.
        let first = tokio::time::timeout(Duration::from_millis(200), watcher.next_change()).await;
        assert!(first.is_err(), "nothing changed yet");

        std::fs::remove_file(&path).unwrap();
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"half").unwrap();
        let early = tokio::time::timeout(MISSING_GRACE * 2, watcher.next_change()).await;
        assert!(early.is_err(), "read while its writer held it open");
        file.write_all(b" and the rest").unwrap();
        drop(file);
        assert_eq!(next(&mut watcher).await, "bytes half and the rest");

        // Truncated and closed empty: no config; the one in force stays.
        drop(std::fs::File::create(&path).unwrap());
        let empty = tokio::time::timeout(Duration::from_millis(500), watcher.next_change()).await;
        assert!(empty.is_err(), "an empty file was reported");
        std::fs::write(&path, "third").unwrap();
        assert_eq!(next(&mut watcher).await, "bytes third");
    }
}
