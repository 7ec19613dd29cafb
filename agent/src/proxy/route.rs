//! Which cluster takes a request, and under which rule: outbound, the
//! VirtualService rules of the host the application named; inbound, the
//! local application (no rule: Istio applies routing rules where traffic
//! leaves, not where it arrives).

use std::sync::{Arc, LazyLock};

use http::Request;

use super::Direction;
use super::exchange::{Exchange, request_authority};
use super::local_reply::LocalReply;
use crate::host::split_host_port;
use crate::model::Snapshot;
use crate::model::cluster::Cluster;
use crate::model::policy::{RetryPolicy, RoutePolicy};
use crate::model::route::{HeaderEdits, Matched, RequestView, WeightedDestination};

/// Inbound requests are not retried or timed out by the sidecar.
static INBOUND: LazyLock<RoutePolicy> = LazyLock::new(|| RoutePolicy {
    retry: RetryPolicy {
        attempts: 0,
        ..RetryPolicy::istio_default()
    },
    ..RoutePolicy::default()
});

/// The routing decision.
pub struct Routed<'s> {
    /// The matched rule and how (outbound).
    pub matched: Option<Matched<'s>>,
    /// The weighted destination chosen (outbound).
    pub destination: Option<&'s WeightedDestination>,
    /// The cluster, unless the rule answers itself (redirect, direct response).
    pub cluster: Option<&'s Arc<Cluster>>,
    /// The port the request was addressed to.
    pub port: u16,
}

impl<'s> Routed<'s> {
    /// The rule's policy (the inbound one for inbound requests).
    pub fn policy(&self) -> &'s RoutePolicy {
        self.matched.map_or(&INBOUND, |m| &m.rule.policy)
    }

    /// The rule's name.
    pub fn rule_name(&self) -> Option<&'s Arc<str>> {
        self.matched.and_then(|m| m.rule.name.as_ref())
    }

    /// The rule's request edits, then the destination's.
    pub fn request_edits(&self) -> [Option<&'s HeaderEdits>; 2] {
        [
            self.matched.map(|m| &m.rule.request_headers),
            self.destination.map(|d| &d.request_headers),
        ]
    }

    /// The rule's response edits, then the destination's.
    pub fn response_edits(&self) -> [Option<&'s HeaderEdits>; 2] {
        [
            self.matched.map(|m| &m.rule.response_headers),
            self.destination.map(|d| &d.response_headers),
        ]
    }
}

/// Routes `req`; a failure is the local reply to send.
pub fn select<'s, B>(
    snapshot: &'s Snapshot,
    direction: Direction,
    req: &Request<B>,
    ex: &mut Exchange,
) -> Result<Routed<'s>, LocalReply> {
    if direction == Direction::Inbound {
        return Ok(Routed {
            matched: None,
            destination: None,
            cluster: Some(&snapshot.inbound),
            port: snapshot.listeners.app.port(),
        });
    }
    let authority = request_authority(req).ok_or(LocalReply::MISSING_HOST)?;
    let (host, port) = split_host_port(authority);
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let Some(vhost) = snapshot.routes.find(host) else {
        ex.set_unrouted_host(host);
        return Err(LocalReply::NO_ROUTE);
    };
    // The service port the request went to, also when the authority names
    // none (`match.port` and the destination's cluster read it).
    let port = port.unwrap_or_else(|| vhost.port_for(if scheme == "https" { 443 } else { 80 }));
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        scheme,
        authority,
        port,
        headers: req.headers(),
    };
    let Some(matched) = vhost.route(&view) else {
        ex.set_unrouted_host(&vhost.host);
        return Err(LocalReply::NO_ROUTE);
    };
    if !matches!(
        matched.rule.policy.action,
        crate::model::policy::RouteAction::Forward
    ) {
        ex.set_unrouted_host(&vhost.host);
        return Ok(Routed {
            matched: Some(matched),
            destination: None,
            cluster: None,
            port,
        });
    }
    let Some(destination) = matched.rule.pick_destination() else {
        ex.set_unrouted_host(&vhost.host);
        return Err(LocalReply::NO_ROUTE);
    };
    let Some(cluster) = destination.target.cluster_for(port) else {
        ex.set_unrouted_host(&destination.target.host);
        return Err(LocalReply::NO_CLUSTER);
    };
    Ok(Routed {
        matched: Some(matched),
        destination: Some(destination),
        cluster: Some(cluster),
        port,
    })
}
