//! What the names of `resolution: DNS` endpoints resolved to: a compile
//! makes each address of a name's answer an endpoint of its own, as
//! Envoy's `STRICT_DNS` cluster (which Istio renders for `DNS`) makes each
//! resolved address a host, balanced and ejected apart. The agent's
//! resolver ([`crate::resolve`]) keeps the answers current and asks for
//! the config to be compiled again when one changes; a name without an
//! answer yet stays one endpoint, resolved when a connection opens.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Most addresses one name's answer gives endpoints: a hosts file or a
/// DNS answer cannot make a cluster without bound. Which of a longer
/// answer's addresses a sidecar takes differs from one agent to the next
/// (a window of the sorted answer, from a place each process draws once),
/// so the mesh's sidecars together reach all of them.
pub const MAX_ADDRESSES: usize = 64;

/// Each name's addresses as last resolved, by name. Read while a config
/// compiles; written by the resolver alone.
#[derive(Debug, Default)]
pub struct DnsAnswers {
    answers: ArcSwap<BTreeMap<Arc<str>, Arc<[IpAddr]>>>,
    changed: tokio::sync::Notify,
}

impl DnsAnswers {
    /// `name`'s addresses as last resolved, if it has resolved.
    pub fn get(&self, name: &str) -> Option<Arc<[IpAddr]>> {
        self.answers.load().get(name).cloned()
    }

    /// Whether `name` has resolved.
    pub fn has(&self, name: &str) -> bool {
        self.answers.load().contains_key(name)
    }

    /// Records `addresses` as `name`'s answer; true when they differ from
    /// the answer held.
    pub fn set(&self, name: &Arc<str>, addresses: Vec<IpAddr>) -> bool {
        let current = self.answers.load();
        if current.get(name).is_some_and(|held| **held == *addresses) {
            return false;
        }
        let mut next = (**current).clone();
        next.insert(name.clone(), addresses.into());
        self.answers.store(Arc::new(next));
        true
    }

    /// Forgets the answers of names no longer in `wanted`.
    pub fn retain(&self, wanted: &BTreeSet<Arc<str>>) {
        let current = self.answers.load();
        if current.keys().all(|name| wanted.contains(name)) {
            return;
        }
        let next = (current.iter())
            .filter(|(name, _)| wanted.contains(*name))
            .map(|(name, addresses)| (name.clone(), addresses.clone()))
            .collect();
        self.answers.store(Arc::new(next));
    }

    /// Says that an answer changed: the config is to be compiled again.
    pub fn notify_changed(&self) {
        self.changed.notify_one();
    }

    /// Completes once an answer changed since the last completion.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// The addresses a cluster takes from one lookup's `found`: its IPv4
/// addresses, else its IPv6 ones (Envoy's `V4_PREFERRED`), sorted, each
/// once, at most [`MAX_ADDRESSES`] (this process's window of them).
pub fn answer(found: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    static WINDOW: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    answer_from(found, *WINDOW.get_or_init(|| fastrand::usize(..)))
}

/// [`answer`], its window of a long answer starting at `start` (modulo the
/// answer's length), the addresses kept sorted.
fn answer_from(found: impl IntoIterator<Item = IpAddr>, start: usize) -> Vec<IpAddr> {
    let found: BTreeSet<IpAddr> = found.into_iter().collect();
    let v4 = found.iter().any(IpAddr::is_ipv4);
    let mut family: Vec<IpAddr> = found.into_iter().filter(|ip| ip.is_ipv4() == v4).collect();
    if family.len() > MAX_ADDRESSES {
        let len = family.len();
        family.rotate_left(start % len);
        family.truncate(MAX_ADDRESSES);
        family.sort();
    }
    family
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn an_answer_prefers_ipv4_and_is_sorted_once() {
        let found = ips(&["::1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]);
        assert_eq!(answer(found), ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(
            answer(ips(&["fd00::2", "fd00::1"])),
            ips(&["fd00::1", "fd00::2"])
        );
        let many = || (0..300u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        assert_eq!(answer(many()).len(), MAX_ADDRESSES);
        // Each process its own window, the same at every lookup.
        assert_eq!(answer(many()), answer(many()));
        let window = answer_from(many(), 290);
        assert_eq!(window.len(), MAX_ADDRESSES);
        assert_eq!(window[0], IpAddr::from([10, 0, 0, 0]));
        assert_eq!(window[53], IpAddr::from([10, 0, 0, 53]));
        assert_eq!(window[54], IpAddr::from([10, 0, 1, 34]));
        assert_eq!(window[MAX_ADDRESSES - 1], IpAddr::from([10, 0, 1, 43]));
    }

    #[test]
    fn answers_say_when_they_change_and_forget_unwanted_names() {
        let dns = DnsAnswers::default();
        let name: Arc<str> = Arc::from("api.internal");
        assert!(dns.set(&name, ips(&["10.0.0.1"])));
        assert!(!dns.set(&name, ips(&["10.0.0.1"])));
        assert!(dns.set(&name, ips(&["10.0.0.1", "10.0.0.2"])));
        assert_eq!(dns.get("api.internal").unwrap().len(), 2);
        dns.retain(&BTreeSet::new());
        assert!(!dns.has("api.internal"));
    }
}
