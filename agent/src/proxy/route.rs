//! Which cluster takes a request, and under which rule: outbound, the
//! VirtualService rules of the host the application named; inbound, the
//! local application (no rule: Istio applies routing rules where traffic
//! leaves, not where it arrives).

use std::sync::{Arc, LazyLock};

use http::Request;

use super::Direction;
use super::local_reply::LocalReply;
use crate::host::{request_authority, split_host_port};
use crate::model::Snapshot;
use crate::model::cluster::Cluster;
use crate::model::policy::{RetryPolicy, RouteAction, RoutePolicy};
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
    /// The service host a request the rule answers itself was addressed
    /// to (for `destination_service`).
    pub answered_for: Option<&'s str>,
}

/// Why a request has no route, and the host it was addressed to, as
/// `destination_service` names it (Istio falls back to the host).
#[derive(Debug)]
pub struct NotRouted<'a> {
    /// The local reply to send.
    pub reply: LocalReply,
    /// The host, when the request named one.
    pub host: Option<&'a str>,
}

impl<'a> NotRouted<'a> {
    fn to(host: &'a str, reply: LocalReply) -> Self {
        Self {
            reply,
            host: Some(host),
        }
    }
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

/// Routes `req` on `snapshot`: a function of the two alone (weighted
/// destinations are drawn at random).
pub fn select<'s: 'r, 'r, B>(
    snapshot: &'s Snapshot,
    direction: Direction,
    req: &'r Request<B>,
) -> Result<Routed<'s>, NotRouted<'r>> {
    if direction == Direction::Inbound {
        return Ok(Routed {
            matched: None,
            destination: None,
            cluster: Some(&snapshot.inbound),
            port: snapshot.listeners.app.port(),
            answered_for: None,
        });
    }
    let authority = request_authority(req).ok_or(NotRouted {
        reply: LocalReply::MISSING_HOST,
        host: None,
    })?;
    let (host, port) = split_host_port(authority);
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let Some(vhost) = snapshot.routes.find(host) else {
        return Err(NotRouted::to(host, LocalReply::NO_ROUTE));
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
        return Err(NotRouted::to(&vhost.host, LocalReply::NO_ROUTE));
    };
    if !matches!(matched.rule.policy.action, RouteAction::Forward) {
        return Ok(Routed {
            matched: Some(matched),
            destination: None,
            cluster: None,
            port,
            answered_for: Some(&vhost.host),
        });
    }
    let Some(destination) = matched.rule.pick_destination() else {
        return Err(NotRouted::to(&vhost.host, LocalReply::NO_ROUTE));
    };
    let Some(cluster) = destination.target.cluster_for(port) else {
        return Err(NotRouted::to(
            &destination.target.host,
            LocalReply::NO_CLUSTER,
        ));
    };
    Ok(Routed {
        matched: Some(matched),
        destination: Some(destination),
        cluster: Some(cluster),
        port,
        answered_for: None,
    })
}
