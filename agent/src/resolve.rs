//! The resolver of `resolution: DNS` names (Envoy's `STRICT_DNS`
//! clusters, which Istio renders for `DNS`): each name the config in force
//! has is resolved as it comes into force, then every `dnsRefreshRate`
//! (Istio's default 60s), through the system's resolver (`getaddrinfo`:
//! the hosts file, then DNS). When a name's addresses change, the config
//! watcher compiles the config in force again, which makes each address
//! an endpoint of its own ([`crate::model::dns`]). A lookup that fails
//! keeps the name's last answer.
//!
//! An agent whose config has no such name has no timer here.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::dns::{DnsAnswers, answer};
use crate::proxy::Shared;

/// How long one lookup may take before it counts as failed (glibc's own
/// default gives up after 2 × 5s per server).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the names of the config in force resolved until the future is
/// dropped (or the agent's config can no longer change).
pub async fn keep_resolved(shared: Arc<Shared>) {
    let mut configs = shared.poolings.subscribe();
    let dns = shared.live.dns();
    let mut failing: BTreeSet<Arc<str>> = BTreeSet::new();
    // When every name is next resolved again; `None`: at once.
    let mut due: Option<Instant> = None;
    loop {
        let (names, rate) = {
            let config = shared.config.load();
            (config.dns_names(), config.mesh.dns_refresh_rate)
        };
        dns.retain(&names);
        failing.retain(|name| names.contains(name));
        if names.is_empty() {
            due = None;
        } else {
            let now = Instant::now();
            let all = due.is_none_or(|due| due <= now);
            if all {
                due = Some(now + rate);
            }
            // A new config resolves only the names it brings (and those
            // that failed): a name whose answers differ on every lookup
            // cannot make each compile ask for the next.
            let todo: Vec<&Arc<str>> = (names.iter())
                .filter(|name| all || !dns.has(name))
                .collect();
            if resolve(&todo, dns, &mut failing).await {
                dns.notify_changed();
            }
        }
        let refresh = async {
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = refresh => {}
            changed = configs.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Looks `names` up at once; true when an answer changed. A name whose
/// lookup fails keeps its last answer, and is logged when it starts
/// failing (`failing` holds the names failing now).
async fn resolve(names: &[&Arc<str>], dns: &DnsAnswers, failing: &mut BTreeSet<Arc<str>>) -> bool {
    let lookups = names
        .iter()
        .map(|name| async move { (*name, lookup(name).await) });
    let mut changed = false;
    for (name, found) in futures_util::future::join_all(lookups).await {
        match found {
            Ok(addresses) => {
                if failing.remove(name) {
                    tracing::info!(%name, "DNS name resolves again");
                }
                changed |= dns.set(name, addresses);
            }
            Err(error) => {
                if failing.insert(name.clone()) {
                    let kept = if dns.has(name) {
                        "its last addresses stay its endpoints"
                    } else {
                        "it is resolved as each connection opens"
                    };
                    tracing::warn!(%name, %error, "DNS name does not resolve; {kept}");
                }
            }
        }
    }
    changed
}

/// `name`'s addresses as a cluster takes them ([`answer`]).
async fn lookup(name: &str) -> std::io::Result<Vec<IpAddr>> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {LOOKUP_TIMEOUT:?}"),
            )
        })??;
    let addresses = answer(found.map(|addr| addr.ip()));
    if addresses.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        ));
    }
    Ok(addresses)
}
