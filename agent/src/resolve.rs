//! The resolver of `resolution: DNS` names (Envoy's `STRICT_DNS`
//! clusters, which Istio renders for `DNS`): each name the config in force
//! has is resolved as it comes into force, then every `dnsRefreshRate`
//! (Istio's default 60s), through the system's resolver (`getaddrinfo`:
//! the hosts file, then DNS). When a name's addresses change, the config
//! watcher compiles the config in force again, which makes each address
//! an endpoint of its own ([`crate::model::dns`]). A lookup that fails
//! keeps the name's last answer; a name whose first lookup fails has no
//! endpoint until one succeeds.
//!
//! An agent whose config has no such name has no timer here.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::model::dns::{DnsAnswers, answer};
use crate::proxy::Shared;

/// How long one lookup may take before it counts as failed (glibc's own
/// default gives up after 2 × 5s per server).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Lookups under way at once: each holds a blocking thread while
/// `getaddrinfo` runs, so a config of many names does not start a thread
/// per name.
const CONCURRENT_LOOKUPS: usize = 4;

/// Keeps the names of the config in force resolved until the future is
/// dropped (or the agent's config can no longer change).
pub async fn keep_resolved(shared: Arc<Shared>) {
    let mut configs = shared.poolings.subscribe();
    let dns = shared.live.dns();
    let mut failing: BTreeSet<Arc<str>> = BTreeSet::new();
    // When every name is next resolved again, at the rate it was set
    // under; `None`: at once.
    let mut due: Option<(Instant, Duration)> = None;
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
            // A new rate takes effect at once, as Envoy builds a changed
            // cluster anew and resolves it.
            let all = due.is_none_or(|(due, set)| due <= now || set != rate);
            if all {
                due = Some((now + rate, rate));
            }
            // A new config resolves only the names it brings: a name whose
            // answers differ on every lookup cannot make each compile ask
            // for the next.
            let todo: Vec<&Arc<str>> = (names.iter())
                .filter(|name| all || !dns.has(name))
                .collect();
            resolve(&todo, dns, &mut failing).await;
        }
        let refresh = async {
            match due {
                Some((due, _)) => tokio::time::sleep_until(due).await,
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

/// Looks `names` up, a few at a time, each answer taken as it comes (a
/// name whose server does not answer holds up no other): a changed one
/// asks for the config to be compiled again. A name whose lookup fails
/// keeps its last answer, or, never resolved, has none — no endpoint, as
/// Envoy's cluster has no host before its first answer — and is logged
/// when it starts failing (`failing` holds the names failing now).
async fn resolve(names: &[&Arc<str>], dns: &DnsAnswers, failing: &mut BTreeSet<Arc<str>>) {
    let lookups: Vec<_> = (names.iter())
        .map(|name| {
            let name = Arc::clone(name);
            async move {
                let found = lookup(&name).await;
                (name, found)
            }
        })
        .collect();
    let mut answers = futures_util::stream::iter(lookups).buffer_unordered(CONCURRENT_LOOKUPS);
    while let Some((name, found)) = answers.next().await {
        let name = &name;
        let changed = match found {
            Ok(addresses) => {
                if failing.remove(name) {
                    tracing::info!(%name, "DNS name resolves again");
                }
                dns.set(name, addresses)
            }
            Err(error) => {
                let kept = dns.get(name).is_some_and(|held| !held.is_empty());
                if failing.insert(name.clone()) {
                    let what = if kept {
                        "its last addresses stay its endpoints"
                    } else {
                        "it has no endpoint until it resolves"
                    };
                    tracing::warn!(%name, %error, "DNS name does not resolve; {what}");
                }
                !kept && dns.set(name, Vec::new())
            }
        };
        if changed {
            tracing::debug!(%name, addresses = ?dns.get(name), "DNS name resolves to other addresses");
            dns.notify_changed();
        }
    }
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
