//! The retry loop (DESIGN §2): pick an endpoint (skipping ejected hosts and
//! the ones already tried) → claim a request slot → forward under the
//! per-try and overall timeouts → judge the outcome (outlier detection) →
//! retry after a jittered backoff while the policy, the retry budget and the
//! deadline allow.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::Worker;
use super::body::{BodyFailure, RequestBody, UpstreamBody};
use super::exchange::Exchange;
use super::forward::{self, SendError};
use super::local_reply::LocalReply;
use super::pool::Lease;
use super::tap::Tap;
use crate::balancer::PickInput;
use crate::flags::ResponseFlags;
use crate::model::cluster::{Cluster, Endpoint};
use crate::model::live::{Outcome, Slot, now_ms};
use crate::model::policy::{AttemptFailure, RetryPolicy};

/// The request body as the attempts see it.
pub enum BodySource {
    /// Sent once; no retry can resend it.
    Once(Option<RequestBody>),
    /// Kept for retries (up to the tap's limit).
    Replay(Tap),
}

impl BodySource {
    fn replayable(&self) -> bool {
        match self {
            Self::Once(_) => false,
            Self::Replay(tap) => tap.replayable(),
        }
    }

    fn for_attempt(&mut self) -> UpstreamBody {
        match self {
            Self::Once(body) => body
                .take()
                .map_or(UpstreamBody::Full(None), UpstreamBody::Stream),
            Self::Replay(tap) => UpstreamBody::Replay(tap.reader()),
        }
    }
}

/// The response the caller gets.
pub struct Delivered {
    /// Headers and streaming body.
    pub response: Response<Incoming>,
    /// The HTTP/1.1 connection, given back once the response is read.
    pub connection: Option<Lease>,
    /// When the last attempt was sent.
    pub started: Instant,
}

/// One request's attempts against one cluster.
pub struct Attempts<'a> {
    /// The worker (pools, metrics).
    pub worker: &'a Rc<Worker>,
    /// The cluster.
    pub cluster: &'a Arc<Cluster>,
    /// The rule's retry policy.
    pub retry: &'a RetryPolicy,
    /// The rule's overall deadline.
    pub deadline: Option<Instant>,
    /// Speak HTTP/2 upstream.
    pub h2: bool,
    /// The caller's IP (consistent hashing by source IP).
    pub source_ip: IpAddr,
}

enum Judged {
    Deliver(Box<Delivered>),
    Fail(LocalReply),
    Retry(Slot, &'static str),
}

impl Attempts<'_> {
    /// Runs attempts until one is delivered or nothing more may be tried.
    pub async fn run(
        &self,
        head: Parts,
        mut body: BodySource,
        ex: &mut Exchange,
    ) -> Result<Delivered, LocalReply> {
        let mut head = Some(head);
        let mut tried: Vec<usize> = Vec::new();
        let mut _retry_slot: Option<Slot> = None;
        for attempt in 0..=self.retry.attempts {
            let template = head.as_ref().ok_or(LocalReply::CONNECTION_TERMINATION)?;
            let input = PickInput {
                headers: &template.headers,
                query: template.uri.query(),
                source_ip: self.source_ip,
            };
            let index = self
                .cluster
                .pick(input, &tried)
                .ok_or(LocalReply::NO_HEALTHY_UPSTREAM)?;
            tried.push(index);
            let endpoint = &self.cluster.endpoints[index];
            ex.set_endpoint(endpoint);
            let request_slot = self
                .cluster
                .state
                .take_request(self.cluster.limits.max_requests)
                .ok_or(LocalReply::OVERFLOW)?;
            ex.hold_request_slot(request_slot);
            let may_retry = attempt < self.retry.attempts && body.replayable();
            let mut parts = if may_retry {
                copy_head(template)
            } else {
                head.take().ok_or(LocalReply::CONNECTION_TERMINATION)?
            };
            if attempt > 0 {
                ex.start_retry_span(attempt, endpoint, &mut parts.headers);
            }
            let request = Request::from_parts(parts, body.for_attempt());
            let started = Instant::now();
            let outcome = self.send(endpoint, request).await;
            match self.judge(outcome, endpoint, started, attempt, may_retry, ex) {
                Judged::Deliver(delivered) => return Ok(*delivered),
                Judged::Fail(reply) => return Err(reply),
                Judged::Retry(slot, reason) => {
                    _retry_slot = Some(slot);
                    ex.note_retry(attempt + 1, reason);
                    self.back_off(attempt + 1).await;
                }
            }
        }
        Err(LocalReply::CONNECTION_TERMINATION)
    }

    /// One attempt under the per-try timeout and the overall deadline.
    async fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamBody>,
    ) -> Result<forward::Sent, Attempted> {
        let per_try = self.retry.per_try_timeout.map(|t| Instant::now() + t);
        let limit = match (per_try, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let send = forward::send(self.worker, endpoint, self.cluster, self.h2, request);
        let Some(limit) = limit else {
            return send.await.map_err(Attempted::Error);
        };
        match tokio::time::timeout_at(limit, send).await {
            Ok(result) => result.map_err(Attempted::Error),
            Err(_) if self.deadline.is_some_and(|d| Instant::now() >= d) => {
                Err(Attempted::Deadline)
            }
            Err(_) => Err(Attempted::Error(SendError::Failed(
                AttemptFailure::PerTryTimeout,
            ))),
        }
    }

    fn judge(
        &self,
        outcome: Result<forward::Sent, Attempted>,
        endpoint: &Endpoint,
        started: Instant,
        attempt: u32,
        may_retry: bool,
        ex: &mut Exchange,
    ) -> Judged {
        let exhausted = self.retry.attempts > 0 && attempt == self.retry.attempts;
        match outcome {
            Ok(sent) => {
                let status = sent.response.status().as_u16();
                let grpc = ex
                    .is_grpc()
                    .then(|| grpc_status(sent.response.headers()))
                    .flatten();
                self.observe(endpoint, Outcome::Status(status));
                ex.end_retry_span(Some(status), None);
                ex.set_upstream_peer(sent.peer);
                if self.retry.retries_status(status, grpc) {
                    if let Some(slot) = self.retry_slot(may_retry) {
                        return Judged::Retry(slot, "retriable status");
                    }
                    if exhausted {
                        ex.add_flags(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    }
                }
                Judged::Deliver(Box::new(Delivered {
                    response: sent.response,
                    connection: sent.connection,
                    started,
                }))
            }
            Err(Attempted::Deadline) => {
                self.observe(endpoint, Outcome::LocalFailure);
                ex.end_retry_span(None, Some("UT"));
                Judged::Fail(LocalReply::TIMEOUT)
            }
            Err(Attempted::Error(_)) if ex.request_body_failure().is_some() => {
                // The client's body broke off: not the upstream's failure, so
                // neither outlier detection nor a retry hears of it.
                ex.end_retry_span(None, Some("downstream_body"));
                Judged::Fail(match ex.request_body_failure() {
                    Some(BodyFailure::Malformed) => LocalReply::MALFORMED_REQUEST_BODY,
                    _ => LocalReply::DOWNSTREAM_DISCONNECT,
                })
            }
            Err(Attempted::Error(error)) => {
                let reply = error.reply();
                ex.end_retry_span(None, Some(reply.details));
                if let SendError::Tls(reason) = error {
                    ex.set_transport_failure(reason);
                }
                let Some(failure) = error.failure() else {
                    return Judged::Fail(reply); // overflow is never retried
                };
                self.observe(endpoint, Outcome::LocalFailure);
                if self.retry.retries_failure(failure) {
                    if let Some(slot) = self.retry_slot(may_retry) {
                        return Judged::Retry(slot, reply.details);
                    }
                    if exhausted {
                        ex.add_flags(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    }
                }
                Judged::Fail(reply)
            }
        }
    }

    /// A retry slot, when another attempt is allowed by the policy, the
    /// deadline and the cluster's retry budget.
    fn retry_slot(&self, may_retry: bool) -> Option<Slot> {
        let time_left = self.deadline.is_none_or(|d| Instant::now() < d);
        if !may_retry || !time_left {
            return None;
        }
        self.cluster
            .state
            .take_retry(self.cluster.limits.max_retries)
    }

    async fn back_off(&self, retry: u32) {
        let pause = self.retry.backoff_before(retry);
        let until = Instant::now() + pause;
        tokio::time::sleep_until(self.deadline.map_or(until, |d| until.min(d))).await;
    }

    /// Feeds outlier detection and ejects the endpoint when it crosses a
    /// threshold (within `maxEjectionPercent`).
    fn observe(&self, endpoint: &Endpoint, outcome: Outcome) {
        let Some(settings) = &self.cluster.outlier else {
            return;
        };
        if endpoint.state.observe(outcome, settings) && self.cluster.may_eject(settings) {
            let duration = endpoint.state.eject(now_ms(), settings);
            let metrics = &self.worker.shared.metrics;
            metrics
                .outlier_ejections
                .with_label_values(&[&self.cluster.name])
                .inc();
            tracing::info!(cluster = %self.cluster.name, endpoint = %endpoint.address, ?duration, "endpoint ejected");
        }
    }
}

/// How an attempt ended without a response.
enum Attempted {
    /// The rule's overall timeout fired.
    Deadline,
    /// Connect failure, reset, per-try timeout or overflow.
    Error(SendError),
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A copy of a request head for one more attempt.
pub(super) fn copy_head(head: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request.into_parts().0
}
