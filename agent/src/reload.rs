//! Live reload: the agent watches its config file and swaps in each valid
//! version within a second; in-flight requests finish on the snapshot they
//! started with. An invalid file is rejected (logged and counted) and the
//! previous config stays in force.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::compile;
use crate::model::Snapshot;
use crate::proxy::Shared;

/// How often the file's metadata is looked at.
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
/// config in force was compiled from. The file's metadata (through symlinks) is
/// looked at every [`POLL`]; the file is read only when it says the file
/// changed, and compiled only when its bytes differ from the config in
/// force. Compiling runs on a blocking thread, so the admin API on this
/// runtime answers throughout a slow reload. Polling metadata (rather than
/// inotify) also sees files replaced by rename or through symlinks, as
/// Kubernetes ConfigMap volumes are updated.
pub async fn watch(path: PathBuf, baseline: Baseline, shared: Arc<Shared>) {
    let path = Arc::new(path);
    let mut last = Arc::new(baseline.bytes);
    let mut stamp = baseline.stamp;
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreadable = false;
    loop {
        ticks.tick().await;
        let looked = tokio::fs::metadata(path.as_path())
            .await
            .map(|meta| Stamp::of(&meta));
        let now = match looked {
            Ok(now) if Some(now) == stamp => continue,
            Ok(now) => now,
            Err(error) => {
                if !std::mem::replace(&mut unreadable, true) {
                    tracing::warn!(%error, file = %path.display(), "config file unreadable; keeping the config in force");
                }
                continue;
            }
        };
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || crate::config::source::read_file_bounded(&path))
                .await
        };
        let current = match read {
            Ok(Ok(bytes)) => {
                unreadable = false;
                bytes
            }
            Ok(Err(error)) => {
                if !std::mem::replace(&mut unreadable, true) {
                    tracing::warn!(%error, file = %path.display(), "config file unreadable; keeping the config in force");
                }
                continue;
            }
            Err(_) => continue, // the runtime is shutting down
        };
        stamp = Some(now);
        if current == *last {
            continue;
        }
        let current = Arc::new(current);
        let (path_c, bytes, shared_c) = (path.clone(), current.clone(), shared.clone());
        let _ = tokio::task::spawn_blocking(move || reload(&path_c, &bytes, &shared_c)).await;
        last = current;
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
    if a.telemetry != b.telemetry
        || a.access_log != b.access_log
        || a.concurrency != b.concurrency
        || a.certificate != b.certificate
    {
        tracing::warn!(
            "telemetry, accessLog and concurrency changed; they take effect after a restart"
        );
    }
}
