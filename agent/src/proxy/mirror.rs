//! Traffic mirroring (VirtualService `mirror`/`mirrors`): a copy of the
//! request goes to another service, fire-and-forget, with `-shadow` appended
//! to its authority as Envoy does. The copy waits for the request body the
//! real attempt reads; the real response never waits for the copy.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Uri, request::Parts};
use http_body_util::{BodyExt, Limited};
use opentelemetry::trace::SpanContext;

use super::body::UpstreamBody;
use super::tap::Tap;
use super::upstream::{AttemptHead, PoolReady, copy_head};
use super::{Downstream, Worker};
use super::{forward, headers};
use crate::host::split_host_port;
use crate::model::balancer::PickInput;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::policy::{Mirror, roll};
use crate::telemetry::otlp_wire::Value;
use crate::telemetry::span::{Kind, Parent, Sampling, Span};
use crate::trace_context;

/// Longest a mirrored request may take.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of a mirror's response read (to keep its connection reusable).
const DRAIN_LIMIT: usize = 1 << 20;

/// What every copy of one request shares.
pub struct Copies<'a> {
    /// The worker.
    pub worker: &'a Rc<Worker>,
    /// The connection the request came on: a copy to an `ORIGINAL_DST`
    /// cluster goes to its original destination.
    pub down: &'a Downstream,
    /// The request as it goes upstream.
    pub head: &'a Parts,
    /// Its body, kept by the tap.
    pub tap: Option<&'a Tap>,
    /// The request's span (parent of each copy's span).
    pub parent: SpanContext,
    /// The copies' spans are reported (the side's Telemetry does not set
    /// `disableSpanReporting`).
    pub report_spans: bool,
    /// The port the request was addressed to.
    pub port: u16,
    /// The caller's protocol version and whether it is gRPC.
    pub version: http::Version,
    /// gRPC request.
    pub grpc: bool,
}

impl Copies<'_> {
    /// Starts a copy for each mirror whose percentage comes up.
    pub fn send(&self, mirrors: &[Mirror]) {
        for mirror in mirrors.iter().filter(|m| roll(m.percent)) {
            let Some(cluster) = mirror.target.cluster_for(self.port).cloned() else {
                continue;
            };
            let mut head = copy_head(self.head);
            shadow_authority(&mut head);
            let h2 = cluster.speaks_h2(self.version, self.grpc);
            let endpoint = self.down.original_endpoint(&cluster);
            let copy = Copy {
                worker: self.worker.clone(),
                cluster,
                endpoint,
                head,
                tap: self.tap.cloned(),
                parent: self.parent.clone(),
                report_spans: self.report_spans,
                h2,
            };
            tokio::task::spawn_local(copy.run());
        }
    }
}

struct Copy {
    worker: Rc<Worker>,
    cluster: Arc<Cluster>,
    /// The endpoint chosen for it (an `ORIGINAL_DST` cluster's), else the
    /// balancer's pick.
    endpoint: Option<Arc<Endpoint>>,
    head: Parts,
    tap: Option<Tap>,
    parent: SpanContext,
    report_spans: bool,
    h2: bool,
}

impl Copy {
    async fn run(mut self) {
        let body = match &self.tap {
            Some(tap) => match tap.whole_body().await {
                Some(body) => body,
                None => return, // body too long to keep, or the request ended first
            },
            None => Bytes::new(),
        };
        let host = self
            .head
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let parent = Parent {
            context: Some(&self.parent),
            decision: None,
        };
        let sampling = Sampling {
            ratio: self.worker.spans.ratio(),
            report: self.report_spans,
        };
        let spans = &self.worker.spans;
        let mut span = Span::start_with(spans, Kind::Client, parent, SystemTime::now(), sampling);
        span.set_name(|name| {
            name.push_str(&host);
            name.push_str(" mirror");
        });
        // A side whose spans are not reported passes the caller's context
        // on unchanged, to copies as to the request itself.
        if self.report_spans {
            trace_context::inject(
                &mut self.head.headers,
                span.context(),
                Some(self.parent.span_id()),
            );
        }
        if headers::set_target(&mut self.head, self.h2).is_err() {
            return;
        }
        let input = PickInput {
            headers: &self.head.headers,
            query: self.head.uri.query(),
            source_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            generated_cookie: None,
        };
        let endpoint = match self.endpoint.take() {
            Some(endpoint) => endpoint,
            None => match self.cluster.pick(input, &[]) {
                Some(index) => self.cluster.endpoints[index].clone(),
                None => return,
            },
        };
        let _active = endpoint.state.start_request();
        // A copy of a request without a body has none either (an empty
        // body of known length would go out with `content-length: 0`).
        if body.is_empty() {
            headers::frame_empty_body(&mut self.head, self.h2);
        }
        let body = (!body.is_empty()).then_some(body);
        let sent = tokio::time::timeout(
            MIRROR_TIMEOUT,
            // A mirrored request never offers an upgrade.
            forward::send(
                &self.worker,
                &endpoint,
                &self.cluster,
                self.h2,
                false,
                AttemptHead::Given(self.head),
                UpstreamBody::Full(body),
                // (a mirror has no per-try timeout)
                &PoolReady::default(),
            ),
        )
        .await;
        span.set("tracemesh.mirror", Value::Bool(true));
        span.set("server.address", Value::Str(&host));
        span.set("tracemesh.upstream", Value::Str(&endpoint.address_text));
        span.set("tracemesh.upstream_cluster", Value::Str(&self.cluster.name));
        match sent {
            Ok(Ok(sent)) => {
                let status = sent.response.status().as_u16();
                span.set("http.response.status_code", Value::Int(i64::from(status)));
                if status >= 500 {
                    span.set_error(status.to_string());
                }
                // Read whole, the body gives its connection back.
                let _ = Limited::new(sent.response.into_body(), DRAIN_LIMIT)
                    .collect()
                    .await;
            }
            Ok(Err(error)) => span.set_error(error.reply().details),
            Err(_) => span.set_error("mirror timeout"),
        }
        span.end(SystemTime::now());
    }
}

/// `reviews:9080` → `reviews-shadow:9080`, in `Host` and the URI.
fn shadow_authority(head: &mut Parts) {
    let authority = head
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            head.headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let Some(authority) = authority else { return };
    let (host, port) = split_host_port(&authority);
    let shadow = match port {
        Some(port) => format!("{host}-shadow:{port}"),
        None => format!("{host}-shadow"),
    };
    if let Ok(value) = HeaderValue::try_from(shadow.as_str()) {
        head.headers.insert(HOST, value);
    }
    if head.uri.authority().is_some()
        && let Ok(shadow) = Authority::try_from(shadow.as_str())
    {
        let mut parts = std::mem::take(&mut head.uri).into_parts();
        parts.authority = Some(shadow);
        head.uri = Uri::from_parts(parts).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn head(uri: &str, host: &str) -> Parts {
        Request::get(uri)
            .header(HOST, host)
            .body(())
            .expect("a request")
            .into_parts()
            .0
    }

    #[test]
    fn copies_go_to_the_shadow_authority() {
        let mut origin_form = head("/reviews/1", "reviews:9080");
        shadow_authority(&mut origin_form);
        assert_eq!(origin_form.headers[HOST], "reviews-shadow:9080");
        assert_eq!(origin_form.uri, "/reviews/1");

        let mut absolute = head("http://reviews/reviews/1", "reviews");
        shadow_authority(&mut absolute);
        assert_eq!(absolute.headers[HOST], "reviews-shadow");
        assert_eq!(
            absolute.uri.authority().map(|a| a.as_str()),
            Some("reviews-shadow")
        );
    }
}
