//! The retry loop (DESIGN §2): pick an endpoint (skipping ejected hosts and
//! the ones already tried) → claim a request slot → forward under the
//! per-try and overall timeouts → judge the outcome (outlier detection) →
//! retry after a jittered backoff while the policy, the retry budget and the
//! deadline allow.
//!
//! The loop is generic over sending one attempt ([`Upstream`]) and over
//! recording what happened ([`AttemptRecord`]), so its rules are tested
//! with scripted answers (tests.rs) and run with real connections.

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, Response};
use smallvec::SmallVec;
use tokio::time::Instant;

use super::body::{RequestBody, UpstreamBody};
use super::client_body::ClientBody;
use super::grpc_timeout;
use super::headers::decimal;
use super::local_reply::LocalReply;
use super::pool::UpstreamPeer;
use super::progress::{BodyFailure, RequestProgress, RouteDeadline};
use super::stalled::{Cut, CutSignal};
use super::tap::Tap;
use super::upstream::{AttemptHead, PoolReady, SendError, Sent, Upstream};
use crate::model::balancer::PickInput;
use crate::model::clock::now_ms;
use crate::model::cluster::Cluster;
use crate::model::endpoint::Endpoint;
use crate::model::live::{
    ActiveRequest, EjectionReason, MAX_CONNECTIONS, MAX_REQUESTS, Outcome, Slot,
};
use crate::model::policy::{AttemptFailure, RetryOn, RetryPolicy};
use crate::telemetry::record::grpc_status;

/// The client's body before the attempts take it: as it arrived, or in
/// the tap its start was read ahead into for an external authorizer.
pub enum HeldBody {
    /// Not read yet.
    Arrived(ClientBody),
    /// Read ahead; the first attempt replays what was read, then the rest.
    ReadAhead(Tap),
}

/// The request body as the attempts see it.
pub struct BodySource {
    kept: Kept,
    progress: Rc<RequestProgress>,
}

enum Kept {
    /// Sent once; no retry can resend it.
    Once(Option<RequestBody>),
    /// Kept for retries and mirrors (up to the tap's limit).
    Replay(Tap),
    /// No body at all: every attempt sends none.
    Empty,
}

impl BodySource {
    /// The client's body, kept for replays when `keep` (a retry or a mirror
    /// may want it); a body read ahead is sent from its tap, which keeps no
    /// more unless `keep`. A body that has already ended is no body.
    pub fn new(body: HeldBody, keep: bool) -> Self {
        let body = match body {
            HeldBody::Arrived(body) => body,
            HeldBody::ReadAhead(tap) => {
                if !keep {
                    tap.stop_keeping();
                }
                return Self {
                    progress: tap.progress(),
                    kept: Kept::Replay(tap),
                };
            }
        };
        let progress = Rc::new(RequestProgress::default());
        if http_body::Body::is_end_stream(&body) {
            progress.end();
            return Self {
                kept: Kept::Empty,
                progress,
            };
        }
        let kept = if keep {
            Kept::Replay(Tap::new(body, progress.clone()))
        } else {
            Kept::Once(Some(RequestBody::new(body, progress.clone())))
        };
        Self { kept, progress }
    }

    /// A request without a body.
    #[cfg(test)]
    pub fn empty() -> Self {
        let progress = Rc::new(RequestProgress::default());
        progress.end();
        Self {
            kept: Kept::Empty,
            progress,
        }
    }

    /// A request whose body has not ended yet, and is never read.
    #[cfg(test)]
    pub fn unended() -> Self {
        Self {
            kept: Kept::Empty,
            progress: Rc::new(RequestProgress::default()),
        }
    }

    /// How far the body has got.
    pub fn progress(&self) -> &Rc<RequestProgress> {
        &self.progress
    }

    /// Whether the request has no body at all.
    pub fn is_empty(&self) -> bool {
        matches!(self.kept, Kept::Empty)
    }

    /// The kept body, for mirrors (`None`: not kept, or none).
    pub fn tap(&self) -> Option<&Tap> {
        match &self.kept {
            Kept::Replay(tap) => Some(tap),
            Kept::Once(_) | Kept::Empty => None,
        }
    }

    fn replayable(&self) -> bool {
        match &self.kept {
            Kept::Once(_) => false,
            Kept::Replay(tap) => tap.replayable(),
            Kept::Empty => true,
        }
    }

    /// A handle on the agent's cut of the client's body (an HTTP/2
    /// client's, [`stalled`](super::stalled)).
    fn cut_signal(&self) -> Option<CutSignal> {
        match &self.kept {
            Kept::Once(body) => body.as_ref().and_then(RequestBody::cut_signal),
            Kept::Replay(tap) => tap.cut_signal(),
            Kept::Empty => None,
        }
    }

    fn for_attempt(&mut self) -> UpstreamBody {
        match &mut self.kept {
            Kept::Once(body) => body
                .take()
                .map_or(UpstreamBody::Full(None), UpstreamBody::Stream),
            Kept::Replay(tap) => UpstreamBody::Replay(tap.reader()),
            Kept::Empty => UpstreamBody::Full(None),
        }
    }
}

/// What the loop tells the request's record, attempt by attempt.
pub trait AttemptRecord {
    /// Attempt number `attempt` (0: the first) goes to `endpoint`, which
    /// counts it as active while `active` is held.
    fn attempt(&mut self, attempt: u32, endpoint: &Arc<Endpoint>, active: ActiveRequest);
    /// The attempt holds the cluster's request slot.
    fn hold_request_slot(&mut self, slot: Slot);
    /// Retry number `attempt` is being sent: its span is named in `headers`.
    fn sending_retry(&mut self, attempt: u32, endpoint: &Endpoint, headers: &mut HeaderMap);
    /// The attempt was answered with `status` over the connection `peer`
    /// describes (its server's identity, its local address).
    fn answered(&mut self, status: u16, peer: UpstreamPeer);
    /// The attempt got no answer, for `reason` (Envoy's words); a TLS
    /// handshake failure names its cause in `transport`.
    fn failed(&mut self, reason: &'static str, transport: Option<&'static str>);
    /// Retry number `retry` will follow, for `reason`.
    fn retrying(&mut self, retry: u32, reason: &'static str);
    /// Retries were allowed and are used up (Envoy's URX).
    fn gave_up(&mut self);
    /// A retry the policy allowed found the cluster's `maxRetries` or retry
    /// budget full (Envoy's UO, counted as `upstream_rq_retry_overflow`).
    fn retry_overflowed(&mut self);
    /// Outlier detection ejected `endpoint` of `cluster` for `duration`,
    /// for `reason`.
    fn ejected(
        &mut self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        reason: EjectionReason,
        duration: Duration,
    );
    /// The attempt waited `waited` for a pooled connection, held back by
    /// the cluster's `limit` (a DestinationRule field path).
    fn waited_for_connection(&mut self, limit: &'static str, waited: Duration);
}

/// The response the caller gets.
pub struct Delivered<B> {
    /// Headers and streaming body.
    pub response: Response<B>,
    /// When the last attempt was sent.
    pub started: Instant,
    /// The route's deadline for the response body (its timeout on from the
    /// request's end, [`Attempts::deadline`]; still to come for a response
    /// that begins before its request has ended).
    pub deadline: RouteDeadline,
}

/// One request's attempts against one cluster.
pub struct Attempts<'a> {
    /// The cluster.
    pub cluster: &'a Arc<Cluster>,
    /// The one endpoint every attempt goes to, where the cluster's
    /// balancer does not choose: an `ORIGINAL_DST` cluster's, the captured
    /// connection's original destination
    /// ([`Downstream::original_endpoint`](super::Downstream::original_endpoint)).
    pub endpoint: Option<&'a Arc<Endpoint>>,
    /// The rule's retry policy.
    pub retry: &'a RetryPolicy,
    /// The rule's overall timeout (`timeout`, or the gRPC call's), as
    /// [`Self::deadline`] counts it.
    pub timeout: Option<Duration>,
    /// The caller's IP (consistent hashing by source IP).
    pub source_ip: IpAddr,
    /// The hash policy's cookie made for a request without it.
    pub generated_cookie: Option<&'a str>,
    /// Each attempt carries its number in `x-envoy-attempt-count` (1 for
    /// the first), as Istio's outbound and gateway routes have Envoy do
    /// (`include_request_attempt_count`); inbound requests carry none.
    pub count_attempts: bool,
    /// A gRPC request: each attempt's `grpc-timeout` says what bounds it,
    /// [`timeout`](Self::timeout) and the per-try timeout, as Envoy's
    /// `setTimeoutHeaders` writes it under Istio's `max_grpc_timeout`
    /// ([`grpc_timeout::expected`]).
    pub grpc: bool,
}

/// The header that numbers an attempt.
const ATTEMPT_COUNT: http::HeaderName = http::HeaderName::from_static("x-envoy-attempt-count");

/// The response header that marks an answer as rate limited, never retried.
const RATE_LIMITED: &str = "x-envoy-ratelimited";

/// Why no retry follows a retriable failure.
enum NoRetry {
    /// The policy's attempts or the deadline are used up.
    NotAllowed,
    /// The cluster's `maxRetries` or retry budget is full.
    Overflow,
}

enum Judged<B> {
    Deliver(Box<Delivered<B>>),
    Fail(LocalReply),
    Retry(Slot, &'static str),
}

/// How an attempt ended without a response.
enum Attempted {
    /// The rule's overall timeout fired.
    Deadline,
    /// Connect failure, reset, per-try timeout or overflow.
    Error(SendError),
    /// The agent stopped reading the client's body while the attempt
    /// waited for its answer ([`stalled`](super::stalled)).
    BodyCut(Cut),
}

impl Attempts<'_> {
    /// Runs attempts until one is delivered or nothing more may be tried.
    ///
    /// An `async` block, not an `async fn`: an `async fn` keeps each
    /// argument twice in its future (the argument and the body's binding
    /// of it), and this future is moved whole into the request's.
    pub fn run<U: Upstream>(
        &self,
        upstream: &U,
        head: Parts,
        mut body: BodySource,
        record: &mut impl AttemptRecord,
    ) -> impl Future<Output = Result<Delivered<U::Body>, LocalReply>> {
        let mut head = Some(head);
        async move {
            let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
            // The cluster's `maxRetries` slot of the retry in flight: held
            // until its outcome is judged, as Envoy's retry state holds its
            // `rq_retry_open` until the next `shouldRetry` (which gives it
            // back before asking for another).
            let mut retry_slot: Option<Slot> = None;
            let from_head = self.timeout.map(|timeout| Instant::now() + timeout);
            if from_head.is_some() {
                body.progress.time_the_end();
            }
            for attempt in 0..=self.retry.attempts {
                let template = head.as_mut().ok_or(LocalReply::CONNECTION_TERMINATION)?;
                let input = PickInput {
                    headers: &template.headers,
                    query: template.uri.query(),
                    source_ip: self.source_ip,
                    generated_cookie: self.generated_cookie,
                };
                // Retries leave the endpoints tried (Envoy's `previous_hosts`
                // predicate), except under a hash policy, where Istio renders
                // none unless `retryIgnorePreviousHosts` asks for it: there a
                // retry goes to the key's endpoint again.
                let avoid =
                    if self.cluster.balancer.keeps_retries() && !self.retry.ignore_previous_hosts {
                        &[][..]
                    } else {
                        &tried[..]
                    };
                let endpoint = match self.endpoint {
                    Some(endpoint) => endpoint,
                    None => {
                        let index = self
                            .cluster
                            .pick(input, avoid)
                            .ok_or(LocalReply::NO_HEALTHY_UPSTREAM)?;
                        tried.push(index);
                        &self.cluster.endpoints[index]
                    }
                };
                record.attempt(attempt, endpoint, endpoint.state.start_request());
                let request_slot = self
                    .cluster
                    .state
                    .take_request(self.cluster.limits.max_requests)
                    .ok_or(LocalReply::overflow(MAX_REQUESTS))?;
                record.hold_request_slot(request_slot);
                // Numbered, and the retry's span named, in the head every
                // attempt is sent from: an attempt that borrows it sends what
                // the loop wrote there, and each attempt overwrites the last's.
                if self.count_attempts {
                    let number = decimal(u64::from(attempt) + 1);
                    template.headers.insert(ATTEMPT_COUNT, number);
                }
                if attempt > 0 {
                    record.sending_retry(attempt, endpoint, &mut template.headers);
                }
                if self.grpc {
                    // (Envoy counts a retry's time from the request's end)
                    let elapsed = match body.progress.ended_at() {
                        Some(end) if attempt > 0 => end.elapsed(),
                        _ => Duration::ZERO,
                    };
                    let per_try = self.retry.per_try_timeout;
                    grpc_timeout::set_expected(
                        &mut template.headers,
                        self.timeout,
                        per_try,
                        elapsed,
                    );
                }
                let may_retry = attempt < self.retry.attempts && body.replayable();
                let attempt_head = if may_retry {
                    AttemptHead::Lent(template)
                } else {
                    AttemptHead::Given(head.take().ok_or(LocalReply::CONNECTION_TERMINATION)?)
                };
                let cut = body.cut_signal();
                let attempt_body = body.for_attempt();
                let started = Instant::now();
                // Pinned where it is made: handed on by reference, not moved
                // (with the request inside it) into the timed wait. Dropped
                // as the wait ends, before the outcome is judged: an attempt
                // cut by its timeout closes its connection (or resets its
                // stream) then, as Envoy's, not after the backoff.
                let outcome = {
                    let ready = PoolReady::default();
                    let sent = upstream.send(endpoint, attempt_head, attempt_body, &ready);
                    let sent = std::pin::pin!(sent);
                    self.send(sent, &ready, cut, &body.progress, from_head)
                        .await
                };
                if let Err(Attempted::BodyCut(why)) = &outcome {
                    body.progress.fail(&(*why).into());
                }
                let failure = body.progress.failure();
                // A body that outgrew the retry buffer while this attempt sent
                // it cannot go out again: the attempt's answer stands, and no
                // retries were used up (Envoy drops its retry state once its
                // buffer limit is passed: no URX).
                let replayable = body.replayable();
                let may_retry = may_retry && replayable;
                let exhausted =
                    self.retry.attempts > 0 && attempt == self.retry.attempts && replayable;
                let deadline = self.deadline(&body.progress, from_head, false);
                drop(retry_slot.take());
                let judged = self.judge(
                    outcome, failure, endpoint, started, exhausted, may_retry, deadline, record,
                );
                match judged {
                    Judged::Deliver(mut delivered) => {
                        delivered.deadline = self.response_deadline(&body.progress);
                        return Ok(*delivered);
                    }
                    Judged::Fail(reply) => return Err(reply),
                    Judged::Retry(slot, reason) => {
                        retry_slot = Some(slot);
                        record.retrying(attempt + 1, reason);
                        self.back_off(attempt + 1, deadline).await;
                    }
                }
            }
            Err(LocalReply::CONNECTION_TERMINATION)
        }
    }

    /// The route's overall deadline, as Envoy counts its global timeout:
    /// from the end of the downstream request (`onRequestComplete`), so a
    /// slow upload is the client's time, not the upstream's. Until the
    /// whole request has arrived it counts from the request's head
    /// (`from_head`), which bounds the wait for a connection (Envoy reads a
    /// body ahead into its buffer meanwhile, so its timeout is running),
    /// unless the body is `streaming` to an attempt that has its
    /// connection: then nothing bounds it until the body ends. `None` with
    /// no timeout.
    fn deadline(
        &self,
        progress: &RequestProgress,
        from_head: Option<Instant>,
        streaming: bool,
    ) -> Option<Instant> {
        match progress.ended_at() {
            Some(end) => Some(end + self.timeout?),
            None if streaming => None,
            None => from_head,
        }
    }

    /// The deadline a delivered response's body is cut at: the route's,
    /// from the request's end, which is still to come when the response
    /// began before it.
    fn response_deadline(&self, progress: &Rc<RequestProgress>) -> RouteDeadline {
        match (self.timeout, progress.ended_at()) {
            (None, _) => RouteDeadline::None,
            (Some(timeout), Some(end)) => RouteDeadline::At(end + timeout),
            (Some(timeout), None) => RouteDeadline::AtEnd {
                progress: progress.clone(),
                timeout,
            },
        }
    }

    /// One attempt under the per-try timeout and the overall deadline. The
    /// per-try timeout starts, as Envoy's does, once the attempt has its
    /// connection ([`PoolReady`], `onPoolReady`) and the whole request has
    /// arrived (`progress`: a slow upload is not the upstream's time); the
    /// deadline is [`Self::deadline`]'s as the attempt gets its connection
    /// and the request its end. (A request nothing of which was written on
    /// one connection — a stale pooled HTTP/1.1 one, an HTTP/2 one going
    /// away — goes out on another within the same per-try time, started by
    /// the first; while it waits for that connection, the deadline is the
    /// head's again.)
    ///
    /// `sent` is the attempt ([`Upstream::send`]), told of its connection
    /// through `ready`.
    async fn send<B>(
        &self,
        mut sent: Pin<&mut impl Future<Output = Result<Sent<B>, SendError>>>,
        ready: &PoolReady,
        cut: Option<CutSignal>,
        progress: &RequestProgress,
        from_head: Option<Instant>,
    ) -> Result<Sent<B>, Attempted> {
        let mut deadline = self.deadline(progress, from_head, false);
        let mut timer = std::pin::pin!(deadline.map(tokio::time::sleep_until));
        let mut armed = deadline;
        let mut per_try_at = None;
        let timed = self.timeout.is_some() || self.retry.per_try_timeout.is_some();
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = sent.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Attempted::Error));
            }
            // An upload the agent stopped reading ends the wait for the
            // answer: an HTTP/2 upstream that takes nothing of it would
            // never ask for the body again, so hyper would never see the
            // cut.
            if let Some(Poll::Ready(why)) = cut.as_ref().map(|cut| cut.poll_cut(cx)) {
                return Poll::Ready(Err(Attempted::BodyCut(why)));
            }
            // (the connection was had, or the body read to its end,
            // during the poll above; an HTTP/2 connection's task reads the
            // body and wakes this one at its end)
            if timed {
                let ended = progress.poll_ended(cx).is_ready();
                deadline = self.deadline(progress, from_head, ready.is_set());
                if let (Some(timeout), true, true) =
                    (self.retry.per_try_timeout, ready.is_set(), ended)
                {
                    per_try_at = per_try_at.or_else(|| Some(Instant::now() + timeout));
                }
                let at = match (deadline, per_try_at) {
                    (Some(deadline), Some(per_try)) => Some(deadline.min(per_try)),
                    (deadline, per_try) => deadline.or(per_try),
                };
                if at != armed {
                    armed = at;
                    timer.set(at.map(tokio::time::sleep_until));
                }
            }
            match timer.as_mut().as_pin_mut().map(|timer| timer.poll(cx)) {
                Some(Poll::Ready(())) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    Poll::Ready(Err(Attempted::Deadline))
                }
                Some(Poll::Ready(())) => Poll::Ready(Err(Attempted::Error(SendError::Failed(
                    AttemptFailure::PerTryTimeout,
                )))),
                _ => Poll::Pending,
            }
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    fn judge<B>(
        &self,
        outcome: Result<Sent<B>, Attempted>,
        body_failure: Option<BodyFailure>,
        endpoint: &Endpoint,
        started: Instant,
        exhausted: bool,
        may_retry: bool,
        deadline: Option<Instant>,
        record: &mut impl AttemptRecord,
    ) -> Judged<B> {
        match outcome {
            Ok(sent) => {
                if let Some(waited) = sent.waited {
                    record.waited_for_connection(MAX_CONNECTIONS, waited);
                }
                let status = sent.response.status().as_u16();
                // Envoy reads `grpc-status` from any answer when a gRPC
                // condition is on, gRPC request or not.
                let grpc = self
                    .retry
                    .on
                    .intersects(RetryOn::GRPC)
                    .then(|| grpc_status(sent.response.headers()))
                    .flatten();
                self.observe(endpoint, Outcome::Status(status), record);
                record.answered(status, sent.peer);
                // An answer marked rate limited (`x-envoy-ratelimited`) is
                // retried under `envoy-ratelimited` only, whatever else it
                // matches, as Envoy's `shouldRetryHeaders` decides:
                // retrying would add to the load the limit sheds.
                let retriable = if sent.response.headers().contains_key(RATE_LIMITED) {
                    self.retry.on.contains(RetryOn::ENVOY_RATELIMITED)
                } else {
                    self.retry.retries_status(status, grpc)
                };
                if retriable {
                    match self.retry_slot(may_retry, deadline) {
                        Ok(slot) => return Judged::Retry(slot, "retriable status"),
                        Err(NoRetry::Overflow) => record.retry_overflowed(),
                        Err(NoRetry::NotAllowed) if exhausted => record.gave_up(),
                        Err(NoRetry::NotAllowed) => {}
                    }
                }
                // (the response body's deadline is the run's to set)
                Judged::Deliver(Box::new(Delivered {
                    response: sent.response,
                    started,
                    deadline: RouteDeadline::None,
                }))
            }
            Err(Attempted::Deadline) => {
                self.observe(endpoint, Outcome::LocalFailure, record);
                record.failed("UT", None);
                Judged::Fail(LocalReply::TIMEOUT)
            }
            Err(Attempted::BodyCut(cut)) => {
                record.failed("downstream_body", None);
                Judged::Fail(BodyFailure::of(&cut.into()).local_reply())
            }
            Err(Attempted::Error(_)) if body_failure.is_some() => {
                // The client's body broke off: not the upstream's failure, so
                // neither outlier detection nor a retry hears of it.
                record.failed("downstream_body", None);
                Judged::Fail(
                    body_failure
                        .map_or(LocalReply::DOWNSTREAM_DISCONNECT, BodyFailure::local_reply),
                )
            }
            Err(Attempted::Error(error)) => {
                let reply = error.reply();
                let transport = match error {
                    SendError::Tls(reason) => Some(reason),
                    _ => None,
                };
                record.failed(reply.details, transport);
                let Some(failure) = error.failure() else {
                    return Judged::Fail(reply); // overflow is never retried
                };
                self.observe(endpoint, Outcome::LocalFailure, record);
                if self.retry.retries_failure(failure) {
                    match self.retry_slot(may_retry, deadline) {
                        Ok(slot) => return Judged::Retry(slot, reply.details),
                        Err(NoRetry::Overflow) => record.retry_overflowed(),
                        Err(NoRetry::NotAllowed) if exhausted => record.gave_up(),
                        Err(NoRetry::NotAllowed) => {}
                    }
                }
                Judged::Fail(reply)
            }
        }
    }

    /// A retry slot, when another attempt is allowed by the policy and the
    /// `deadline`, and the cluster's `maxRetries` and retry budget have
    /// room.
    fn retry_slot(&self, may_retry: bool, deadline: Option<Instant>) -> Result<Slot, NoRetry> {
        let time_left = deadline.is_none_or(|d| Instant::now() < d);
        if !may_retry || !time_left {
            return Err(NoRetry::NotAllowed);
        }
        let limits = &self.cluster.limits;
        self.cluster
            .state
            .take_retry(limits.max_retries, limits.retry_budget)
            .ok_or(NoRetry::Overflow)
    }

    /// Waits out the backoff before `retry`, no later than `deadline`.
    async fn back_off(&self, retry: u32, deadline: Option<Instant>) {
        let pause = self.retry.backoff_before(retry);
        let until = Instant::now() + pause;
        tokio::time::sleep_until(deadline.map_or(until, |d| until.min(d))).await;
    }

    /// Feeds outlier detection and ejects the endpoint when it crosses a
    /// threshold (within `maxEjectionPercent`).
    fn observe(&self, endpoint: &Endpoint, outcome: Outcome, record: &mut impl AttemptRecord) {
        let Some(settings) = &self.cluster.outlier else {
            return;
        };
        if let Some(reason) = endpoint.state.observe(outcome, settings)
            && self.cluster.may_eject(settings)
        {
            let duration = endpoint.state.eject(now_ms(), settings);
            record.ejected(self.cluster, endpoint, reason, duration);
        }
    }
}
