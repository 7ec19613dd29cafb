//! Which cluster takes a request: outbound, the VirtualService rules of the
//! host the application named; inbound, the local application.

use std::sync::Arc;

use http::Request;

use super::Direction;
use super::exchange::{Exchange, request_authority};
use super::local_reply::LocalReply;
use crate::host::split_host_port;
use crate::model::Snapshot;
use crate::model::cluster::Cluster;
use crate::model::route::{HeaderEdits, HttpRule, RequestView, WeightedDestination};

/// The routing decision.
pub struct Routed<'s> {
    /// The matched rule (outbound).
    pub rule: Option<&'s HttpRule>,
    /// The weighted destination chosen (outbound).
    pub destination: Option<&'s WeightedDestination>,
    /// The cluster.
    pub cluster: &'s Arc<Cluster>,
}

impl Routed<'_> {
    /// The rule's request edits, then the destination's.
    pub fn request_edits(&self) -> [Option<&HeaderEdits>; 2] {
        [
            self.rule.map(|r| &r.request_headers),
            self.destination.map(|d| &d.request_headers),
        ]
    }

    /// The rule's response edits, then the destination's.
    pub fn response_edits(&self) -> [Option<&HeaderEdits>; 2] {
        [
            self.rule.map(|r| &r.response_headers),
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
            rule: None,
            destination: None,
            cluster: &snapshot.inbound,
        });
    }
    let authority = request_authority(req).ok_or(LocalReply::MISSING_HOST)?;
    let (host, port) = split_host_port(authority);
    let scheme = req.uri().scheme_str().unwrap_or("http");
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    let Some(vhost) = snapshot.routes.find(host) else {
        ex.set_unrouted_host(host);
        return Err(LocalReply::NO_ROUTE);
    };
    let view = RequestView {
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        scheme,
        authority,
        port,
        headers: req.headers(),
    };
    let Some(rule) = vhost.route(&view) else {
        ex.set_unrouted_host(&vhost.host);
        return Err(LocalReply::NO_ROUTE);
    };
    let Some(destination) = rule.pick_destination() else {
        ex.set_unrouted_host(&vhost.host);
        return Err(LocalReply::NO_ROUTE);
    };
    let Some(cluster) = destination.target.cluster_for(port) else {
        ex.set_unrouted_host(&destination.target.host);
        return Err(LocalReply::NO_CLUSTER);
    };
    Ok(Routed {
        rule: Some(rule),
        destination: Some(destination),
        cluster,
    })
}
