//! Live reload: the agent watches its config file and swaps in each valid
//! version within a second; in-flight requests finish on the snapshot they
//! started with. An invalid file is rejected (logged and counted) and the
//! previous config stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::compile;
use crate::model::Snapshot;
use crate::proxy::Shared;

/// How often the file is checked.
const POLL: Duration = Duration::from_millis(200);

/// Watches `path` until the future is dropped; `loaded` is what the config
/// in force was compiled from. Polling (rather than inotify)
/// also sees files replaced by rename or through symlinks, as Kubernetes
/// ConfigMap volumes are updated.
pub async fn watch(path: PathBuf, loaded: Vec<u8>, shared: Arc<Shared>) {
    let mut last = Some(loaded);
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreadable = false;
    loop {
        ticks.tick().await;
        let current = match tokio::fs::read(&path).await {
            Ok(bytes) => {
                unreadable = false;
                bytes
            }
            Err(error) => {
                if !std::mem::replace(&mut unreadable, true) {
                    tracing::warn!(%error, file = %path.display(), "config file unreadable; keeping the config in force");
                }
                continue;
            }
        };
        if last.as_deref() == Some(current.as_slice()) {
            continue;
        }
        reload(&path, &current, &shared);
        last = Some(current);
    }
}

/// Compiles `bytes` and swaps it in if valid.
pub fn reload(path: &Path, bytes: &[u8], shared: &Shared) {
    let old = shared.config.load_full();
    let version = old.version + 1;
    let file: Arc<str> = Arc::from(path.display().to_string());
    let text = String::from_utf8_lossy(bytes);
    let metrics = &shared.metrics;
    match compile::compile_text(&file, &text, version, &shared.live) {
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
