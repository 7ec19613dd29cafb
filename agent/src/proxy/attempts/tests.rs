//! The retry loop against scripted upstream answers, on a paused clock:
//! which answers are retried, where retries go, budgets, backoff, per-try
//! and overall deadlines, URX, UO and ejection — no sockets.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tokio::time::Instant;

use super::*;
use crate::flags::ResponseFlags;
use crate::model::live::{OutlierSettings, PoolLimits};
use crate::model::policy::RetryOn;
use crate::proxy::local_reply::DecidedBy;

/// What the scripted upstream does with one attempt.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// 200 with this `grpc-status`.
    Grpc(u16),
    /// 503 marked `x-envoy-ratelimited`.
    RateLimited,
    Reset,
    /// The connection closed before the request was written.
    ResetBeforeRequest,
    /// A response that broke the protocol.
    Malformed,
    ConnectFailure,
    Overflow,
    /// 200 after waiting this many ms for a pooled connection.
    AfterWait(u64),
    /// Never answers (a timeout decides).
    Hang,
    /// A connection after `connect` ms, then 200 after `answer` more ms
    /// (`None`: no answer, a timeout decides).
    Connecting {
        connect: u64,
        answer: Option<u64>,
    },
    /// A connect failure after this many ms (a connect timeout).
    ConnectFailsIn(u64),
}

/// Answers attempts from a script, noting where each went and when.
struct Script {
    answers: RefCell<VecDeque<Answer>>,
    sent: RefCell<Vec<(Arc<str>, Instant)>>,
    /// Each attempt's `x-envoy-attempt-count`.
    counts: RefCell<Vec<String>>,
    /// When each attempt's future went, among what the record was told
    /// (shared with [`Notes::order`]).
    order: Rc<RefCell<Vec<String>>>,
}

/// Notes, when dropped, that the attempt's future went.
struct Gone<'a>(&'a RefCell<Vec<String>>);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.borrow_mut().push("attempt dropped".to_owned());
    }
}

impl Script {
    fn new(answers: &[Answer], order: Rc<RefCell<Vec<String>>>) -> Self {
        Self {
            answers: RefCell::new(answers.iter().copied().collect()),
            sent: RefCell::default(),
            counts: RefCell::default(),
            order,
        }
    }

    fn endpoints(&self) -> Vec<Arc<str>> {
        self.sent.borrow().iter().map(|(e, _)| e.clone()).collect()
    }

    fn times(&self) -> Vec<Instant> {
        self.sent.borrow().iter().map(|(_, t)| *t).collect()
    }
}

impl Upstream for Script {
    type Body = ();

    async fn send(
        &self,
        endpoint: &Endpoint,
        mut head: AttemptHead<'_>,
        _body: UpstreamBody,
        ready: &PoolReady,
    ) -> Result<Sent<()>, SendError> {
        let _gone = Gone(&self.order);
        let now = Instant::now();
        let count = head.parts().headers.get("x-envoy-attempt-count");
        self.counts
            .borrow_mut()
            .push(count.map_or("-".into(), |c| c.to_str().unwrap().to_owned()));
        self.sent
            .borrow_mut()
            .push((endpoint.address_text.clone(), now));
        let answer = self
            .answers
            .borrow_mut()
            .pop_front()
            .expect("an answer scripted");
        let respond = |status: u16, grpc: Option<u16>, waited: Option<Duration>| {
            let mut response = Response::builder().status(status);
            if let Some(code) = grpc {
                response = response.header("grpc-status", code.to_string());
            }
            if matches!(answer, Answer::RateLimited) {
                response = response.header("x-envoy-ratelimited", "true");
            }
            Ok(Sent {
                response: response.body(()).expect("a response"),
                peer: UpstreamPeer::default(),
                waited,
            })
        };
        match answer {
            Answer::ConnectFailure | Answer::Overflow | Answer::ConnectFailsIn(_) => {}
            Answer::Connecting { connect, answer } => {
                tokio::time::sleep(Duration::from_millis(connect)).await;
                ready.set();
                match answer {
                    // (the connection had in a poll of its own)
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            }
            _ => ready.set(),
        }
        match answer {
            Answer::Status(status) => respond(status, None, None),
            Answer::Connecting { .. } => respond(200, None, None),
            Answer::Grpc(code) => respond(200, Some(code), None),
            Answer::AfterWait(ms) => respond(200, None, Some(Duration::from_millis(ms))),
            Answer::RateLimited => respond(503, None, None),
            Answer::Reset => Err(SendError::Failed(AttemptFailure::Reset)),
            Answer::ResetBeforeRequest => {
                Err(SendError::Failed(AttemptFailure::ResetBeforeRequest))
            }
            Answer::Malformed => Err(SendError::Protocol),
            Answer::ConnectFailure => Err(SendError::Failed(AttemptFailure::ConnectFailure)),
            Answer::Overflow => Err(SendError::Overflow(MAX_CONNECTIONS)),
            Answer::Hang => std::future::pending().await,
            Answer::ConnectFailsIn(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Err(SendError::Failed(AttemptFailure::ConnectFailure))
            }
        }
    }
}

/// What the loop told the record.
#[derive(Default)]
struct Notes {
    events: Vec<String>,
    flags: ResponseFlags,
    held: Vec<Slot>,
    ejected: Vec<Arc<str>>,
    /// Failures and retries, among the attempts' futures dropped.
    order: Rc<RefCell<Vec<String>>>,
}

impl AttemptRecord for Notes {
    fn attempt(&mut self, attempt: u32, endpoint: &Arc<Endpoint>, _active: ActiveRequest) {
        let address = &endpoint.address_text;
        self.events.push(format!("attempt {attempt} {address}"));
    }
    fn hold_request_slot(&mut self, slot: Slot) {
        self.held.push(slot);
    }
    fn sending_retry(&mut self, attempt: u32, _endpoint: &Endpoint, _headers: &mut HeaderMap) {
        self.events.push(format!("retry span {attempt}"));
    }
    fn answered(&mut self, status: u16, _peer: UpstreamPeer) {
        self.events.push(format!("answered {status}"));
    }
    fn failed(&mut self, reason: &'static str, _transport: Option<&'static str>) {
        self.events.push(format!("failed {reason}"));
        self.order.borrow_mut().push(format!("failed {reason}"));
    }
    fn retrying(&mut self, retry: u32, reason: &'static str) {
        self.events.push(format!("retrying {retry}: {reason}"));
        self.order.borrow_mut().push(format!("retrying {retry}"));
    }
    fn gave_up(&mut self) {
        self.flags
            .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    }
    fn retry_overflowed(&mut self) {
        self.flags.insert(ResponseFlags::UPSTREAM_OVERFLOW);
    }
    fn ejected(
        &mut self,
        _cluster: &Cluster,
        endpoint: &Endpoint,
        reason: EjectionReason,
        _duration: Duration,
    ) {
        self.ejected.push(endpoint.address_text.clone());
        self.events.push(format!("ejected for {}", reason.field()));
    }
    fn waited_for_connection(&mut self, limit: &'static str, waited: Duration) {
        self.events
            .push(format!("waited {}ms on {limit}", waited.as_millis()));
    }
}

fn cluster(endpoints: usize, limits: PoolLimits, outlier: Option<OutlierSettings>) -> Arc<Cluster> {
    let addresses: Vec<SocketAddr> = (1..=endpoints as u8)
        .map(|i| SocketAddr::from((Ipv4Addr::new(10, 9, 0, i), 80)))
        .collect();
    super::super::testing::cluster(&addresses, limits, outlier)
}

/// Istio's default policy as it was before 1.24, with 503 retried.
fn on_503() -> RetryPolicy {
    RetryPolicy {
        status_codes: vec![503],
        ..RetryPolicy::istio_default()
    }
}

fn retry(attempts: u32, on: &[RetryOn]) -> RetryPolicy {
    let mut conditions = RetryOn::default();
    for condition in on {
        conditions.insert(*condition);
    }
    RetryPolicy {
        attempts,
        per_try_timeout: None,
        on: conditions,
        status_codes: Vec::new(),
        backoff: Duration::from_millis(25),
        ignore_previous_hosts: false,
    }
}

fn head() -> http::request::Parts {
    Request::get("/")
        .body(())
        .expect("a request")
        .into_parts()
        .0
}

struct Run {
    result: Result<u16, LocalReply>,
    notes: Notes,
    script: Script,
    took: Duration,
}

async fn run(
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    timeout: Option<Duration>,
    answers: &[Answer],
) -> Run {
    run_ending(cluster, policy, timeout, answers, None).await
}

/// As [`run`], for a request whose body ends `ends` ms after the start
/// (`None`: no body).
async fn run_ending(
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    timeout: Option<Duration>,
    answers: &[Answer],
    ends: Option<u64>,
) -> Run {
    let start = Instant::now();
    let attempts = Attempts {
        cluster,
        endpoint: None,
        retry: policy,
        timeout,
        source_ip: Ipv4Addr::LOCALHOST.into(),
        generated_cookie: None,
        count_attempts: true,
        grpc: false,
    };
    let order = Rc::new(RefCell::default());
    let script = Script::new(answers, order.clone());
    let mut notes = Notes {
        order,
        ..Notes::default()
    };
    let body = match ends {
        None => BodySource::empty(),
        Some(_) => BodySource::unended(),
    };
    let progress = body.progress().clone();
    let end = async {
        if let Some(ms) = ends {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            progress.end();
        }
    };
    let ran = async {
        let result = attempts.run(&script, head(), body, &mut notes).await;
        (result, start.elapsed())
    };
    let ((result, took), ()) = tokio::join!(ran, end);
    let result = result.map(|delivered| delivered.response.status().as_u16());
    Run {
        result,
        notes,
        script,
        took,
    }
}

fn status(run: &Run) -> u16 {
    match &run.result {
        Ok(status) => *status,
        Err(reply) => panic!("a local reply instead of a response: {}", reply.details),
    }
}

fn reply(run: &Run) -> &'static str {
    local_reply(run).details
}

fn local_reply(run: &Run) -> LocalReply {
    match &run.result {
        Ok(status) => panic!("a response {status} instead of a local reply"),
        Err(reply) => *reply,
    }
}

#[tokio::test(start_paused = true)]
async fn a_retriable_status_is_retried_on_another_endpoint() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let policy = on_503();
    let run = run(
        &cluster,
        &policy,
        None,
        &[Answer::Status(503), Answer::Status(200)],
    )
    .await;
    assert_eq!(status(&run), 200);
    let endpoints = run.script.endpoints();
    assert_eq!(endpoints.len(), 2);
    assert_ne!(
        endpoints[0], endpoints[1],
        "the retry avoids the endpoint that failed"
    );
    assert!(
        run.notes.flags.is_empty(),
        "a retry that succeeds is no URX"
    );
    assert_eq!(
        run.notes.events,
        [
            "attempt 0 10.9.0.1:80",
            "answered 503",
            "retrying 1: retriable status",
            "attempt 1 10.9.0.2:80",
            "retry span 1",
            "answered 200",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn statuses_outside_the_conditions_are_delivered_as_they_are() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let policy = on_503();
    for answer in [500, 502, 404] {
        let run = run(&cluster, &policy, None, &[Answer::Status(answer)]).await;
        assert_eq!(status(&run), answer, "Istio's default retries 503 only");
        assert_eq!(run.script.endpoints().len(), 1);
    }
    let gateway = retry(2, &[RetryOn::GATEWAY_ERROR]);
    let run = run(
        &cluster,
        &gateway,
        None,
        &[Answer::Status(502), Answer::Status(200)],
    )
    .await;
    assert_eq!(status(&run), 200);
}

#[tokio::test(start_paused = true)]
async fn retries_used_up_deliver_the_last_answer_with_urx() {
    let cluster = cluster(3, PoolLimits::default(), None);
    let policy = on_503();
    let answers = [Answer::Status(503); 3];
    let run = run(&cluster, &policy, None, &answers).await;
    assert_eq!(status(&run), 503);
    assert_eq!(
        run.script.endpoints().len(),
        3,
        "one attempt and two retries"
    );
    assert_eq!(
        run.notes.flags,
        ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
    );
}

/// A malformed response is Envoy's protocol-error reset: 502 UPE, retried
/// where resets are (`reset`, `5xx`), not under Istio's default policy.
#[tokio::test(start_paused = true)]
async fn a_malformed_response_is_a_502_retried_as_a_reset() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let policy = on_503();
    let malformed = run(&cluster, &policy, None, &[Answer::Malformed]).await;
    assert_eq!(
        reply(&malformed),
        LocalReply::UPSTREAM_PROTOCOL_ERROR.details
    );
    assert_eq!(LocalReply::UPSTREAM_PROTOCOL_ERROR.status, 502);
    assert_eq!(malformed.script.endpoints().len(), 1, "not retried");

    let on_reset = retry(1, &[RetryOn::RESET]);
    let answers = [Answer::Malformed, Answer::Status(200)];
    let retried = run(&cluster, &on_reset, None, &answers).await;
    assert_eq!(status(&retried), 200);
    assert_eq!(retried.script.endpoints().len(), 2, "retried once");
}

#[tokio::test(start_paused = true)]
async fn no_answer_is_retried_only_under_its_condition() {
    let cluster = cluster(2, PoolLimits::default(), None);
    // Istio's default retries connect failures, not resets.
    let policy = on_503();
    let reset = run(&cluster, &policy, None, &[Answer::Reset]).await;
    assert_eq!(reply(&reset), LocalReply::CONNECTION_TERMINATION.details);
    assert!(reset.notes.flags.is_empty(), "no retry was allowed: no URX");
    let refused = [Answer::ConnectFailure, Answer::Status(200)];
    assert_eq!(status(&run(&cluster, &policy, None, &refused).await), 200);

    let on_reset = retry(1, &[RetryOn::RESET]);
    let run2 = run(
        &cluster,
        &on_reset,
        None,
        &[Answer::Reset, Answer::Status(200)],
    )
    .await;
    assert_eq!(status(&run2), 200);

    let failing = [Answer::ConnectFailure; 3];
    let gave_up = run(&cluster, &policy, None, &failing).await;
    assert_eq!(reply(&gave_up), LocalReply::CONNECT_FAILURE.details);
    assert_eq!(
        gave_up.notes.flags,
        ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
    );
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_in_headers_is_retried_whatever_the_request() {
    // Envoy reads grpc-status from any answer once a gRPC condition is on.
    let cluster = cluster(2, PoolLimits::default(), None);
    let answers = [Answer::Grpc(14), Answer::Grpc(0)];
    let unavailable = run(&cluster, &RetryPolicy::istio_default(), None, &answers).await;
    assert_eq!(
        unavailable.script.endpoints().len(),
        2,
        "UNAVAILABLE is retried"
    );
    let without = retry(2, &[RetryOn::FIVE_XX]);
    let ignored = run(&cluster, &without, None, &answers).await;
    assert_eq!(
        ignored.script.endpoints().len(),
        1,
        "no gRPC condition is on"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_by_the_conditions_envoy_retries_them_under() {
    use Answer::{ConnectFailure, Reset, ResetBeforeRequest};
    let cluster = cluster(3, PoolLimits::default(), None);
    let tries = |on: RetryOn, first: Answer| {
        let cluster = cluster.clone();
        async move {
            let run = run(
                &cluster,
                &retry(2, &[on]),
                None,
                &[first, Answer::Status(200)],
            )
            .await;
            run.script.endpoints().len()
        }
    };
    // 5xx, gateway-error and reset: every failure (it becomes a 503).
    for on in [RetryOn::FIVE_XX, RetryOn::GATEWAY_ERROR, RetryOn::RESET] {
        for failure in [Reset, ResetBeforeRequest, ConnectFailure] {
            assert_eq!(tries(on, failure).await, 2, "{on:?} retries {failure:?}");
        }
    }
    // reset-before-request: only what wrote none of the request, which is
    // safe whatever the method.
    let before = RetryOn::RESET_BEFORE_REQUEST;
    assert_eq!(tries(before, ResetBeforeRequest).await, 2);
    assert_eq!(tries(before, ConnectFailure).await, 2);
    assert_eq!(
        tries(before, Reset).await,
        1,
        "the app may have the request"
    );
    // connect-failure: only that.
    assert_eq!(tries(RetryOn::CONNECT_FAILURE, ConnectFailure).await, 2);
    assert_eq!(tries(RetryOn::CONNECT_FAILURE, ResetBeforeRequest).await, 1);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_its_number() {
    let cluster = cluster(3, PoolLimits::default(), None);
    let answers = [
        Answer::Status(500),
        Answer::Status(502),
        Answer::Status(200),
    ];
    let run = run(&cluster, &retry(2, &[RetryOn::FIVE_XX]), None, &answers).await;
    assert!(matches!(run.result, Ok(200)));
    assert_eq!(*run.script.counts.borrow(), ["1", "2", "3"]);
}

#[tokio::test(start_paused = true)]
async fn an_answer_marked_rate_limited_is_not_retried() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let policy = retry(2, &[RetryOn::FIVE_XX]);
    let limited = run(&cluster, &policy, None, &[Answer::RateLimited]).await;
    assert!(matches!(limited.result, Ok(503)));
    assert_eq!(limited.script.endpoints().len(), 1);
    let plain = run(
        &cluster,
        &policy,
        None,
        &[Answer::Status(503), Answer::Status(200)],
    )
    .await;
    assert!(matches!(plain.result, Ok(200)), "an unmarked 503 is");
    // Under `envoy-ratelimited` it is, as Envoy's `shouldRetryHeaders`.
    let policy = retry(2, &[RetryOn::ENVOY_RATELIMITED]);
    let answers = [Answer::RateLimited, Answer::Status(200)];
    let retried = run(&cluster, &policy, None, &answers).await;
    assert!(matches!(retried.result, Ok(200)));
}

/// `internal` retries gRPC INTERNAL (13), as Envoy's `retry_on: internal`;
/// the agent refused a config naming it (and `envoy-ratelimited`,
/// `retriable-headers`, `http3-post-connect-failure`), which Istio accepts.
#[tokio::test(start_paused = true)]
async fn grpc_internal_is_retried_under_internal() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let policy = retry(2, &[RetryOn::parse("internal").expect("known")]);
    let run = run(
        &cluster,
        &policy,
        None,
        &[Answer::Grpc(13), Answer::Grpc(0)],
    )
    .await;
    assert!(matches!(run.result, Ok(200)));
    assert_eq!(run.script.endpoints().len(), 2);
    for name in [
        "envoy-ratelimited",
        "retriable-headers",
        "http3-post-connect-failure",
    ] {
        assert!(RetryOn::parse(name).is_some(), "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_is_jittered_under_its_ceiling() {
    let cluster = cluster(4, PoolLimits::default(), None);
    let policy = retry(3, &[RetryOn::FIVE_XX]);
    let answers = [Answer::Status(500); 4];
    let run = run(&cluster, &policy, None, &answers).await;
    let times = run.script.times();
    assert_eq!(times.len(), 4);
    // Retry n waits up to (2^n − 1) × 25ms, never more than 250ms.
    for (n, pair) in times.windows(2).enumerate() {
        let ceiling =
            Duration::from_millis(25 * ((1 << (n + 1)) - 1)).min(Duration::from_millis(250));
        let pause = pair[1] - pair[0];
        assert!(
            pause <= ceiling,
            "retry {}: waited {pause:?} > {ceiling:?}",
            n + 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_ends_one_attempt_and_may_be_retried() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let mut policy = retry(1, &[RetryOn::RESET]);
    policy.per_try_timeout = Some(Duration::from_millis(100));
    let retried = run(
        &cluster,
        &policy,
        None,
        &[Answer::Hang, Answer::Status(200)],
    )
    .await;
    assert_eq!(status(&retried), 200);
    let times = retried.script.times();
    assert!(
        times[1] - times[0] >= Duration::from_millis(100),
        "the first attempt got its 100ms"
    );
    assert!(
        retried
            .notes
            .events
            .contains(&"failed upstream_per_try_timeout".to_owned())
    );

    // The attempt that timed out is dropped when its timeout fires —
    // its connection closed, its stream reset — before the failure is
    // judged and the backoff waited out, as Envoy resets it.
    assert_eq!(
        retried.script.order.borrow()[..4],
        [
            "attempt dropped",
            "failed upstream_per_try_timeout",
            "retrying 1",
            "attempt dropped"
        ]
    );

    // Without a condition that covers it, the per-try timeout is the answer.
    let mut strict = retry(1, &[RetryOn::CONNECT_FAILURE]);
    strict.per_try_timeout = Some(Duration::from_millis(100));
    let timed_out = run(&cluster, &strict, None, &[Answer::Hang]).await;
    assert_eq!(reply(&timed_out), LocalReply::PER_TRY_TIMEOUT.details);
}

#[tokio::test(start_paused = true)]
async fn the_per_try_timeout_starts_once_the_connection_is_had() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let mut policy = retry(1, &[RetryOn::CONNECT_FAILURE]);
    policy.per_try_timeout = Some(Duration::from_millis(100));
    let connecting = |connect, answer| Answer::Connecting { connect, answer };
    // A connect slower than the per-try timeout is not cut by it.
    let slow = run(&cluster, &policy, None, &[connecting(300, Some(0))]).await;
    assert_eq!(status(&slow), 200);
    // Counted from the connection: 80 ms connecting, then an answer 50 ms
    // later is in time, and none is cut 100 ms after the connection.
    let answered = run(&cluster, &policy, None, &[connecting(80, Some(50))]).await;
    assert_eq!(status(&answered), 200);
    let unanswered = run(&cluster, &policy, None, &[connecting(80, None)]).await;
    assert_eq!(reply(&unanswered), LocalReply::PER_TRY_TIMEOUT.details);
    assert_eq!(unanswered.took, Duration::from_millis(180));
    // A connect that times out is a connect failure, retried as one, and
    // the last attempt's failure is the answer (Envoy: 503 URX,UF).
    let failed = run(
        &cluster,
        &policy,
        None,
        &[Answer::ConnectFailsIn(300), Answer::ConnectFailsIn(300)],
    )
    .await;
    assert_eq!(reply(&failed), LocalReply::CONNECT_FAILURE.details);
    assert_eq!(failed.script.endpoints().len(), 2, "retried");
    // The overall deadline still bounds a connect.
    let bounded = run(
        &cluster,
        &policy,
        Some(Duration::from_millis(200)),
        &[connecting(300, Some(0))],
    )
    .await;
    assert_eq!(reply(&bounded), LocalReply::TIMEOUT.details);
}

#[tokio::test(start_paused = true)]
async fn the_overall_deadline_ends_retries_with_ut() {
    let cluster = cluster(3, PoolLimits::default(), None);
    let mut policy = retry(5, &[RetryOn::RESET]);
    policy.per_try_timeout = Some(Duration::from_millis(100));
    let answers = [Answer::Hang; 6];
    let run = run(
        &cluster,
        &policy,
        Some(Duration::from_millis(250)),
        &answers,
    )
    .await;
    assert_eq!(reply(&run), LocalReply::TIMEOUT.details);
    assert!(
        run.notes.events.contains(&"failed UT".to_owned()),
        "{:?}",
        run.notes.events
    );
    assert!(
        run.took >= Duration::from_millis(250) && run.took < Duration::from_millis(300),
        "{:?}",
        run.took
    );
    assert!(
        run.script.endpoints().len() <= 3,
        "no attempt starts after the deadline"
    );
    assert!(run.notes.flags.is_empty(), "a timeout is UT, not URX");
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_and_max_retries_hold_retries_back() {
    let limits = PoolLimits {
        max_retries: 1,
        ..PoolLimits::default()
    };
    let limited = cluster(2, limits, None);
    let policy = on_503();
    let held = limited
        .state
        .take_retry(1, None)
        .expect("the one retry slot");
    let run1 = run(&limited, &policy, None, &[Answer::Status(503)]).await;
    assert_eq!(status(&run1), 503, "no retry slot: the answer is delivered");
    assert_eq!(
        run1.notes.flags,
        ResponseFlags::UPSTREAM_OVERFLOW,
        "a retry held back by maxRetries is Envoy's UO, not URX"
    );
    drop(held);
    let run2 = run(
        &limited,
        &policy,
        None,
        &[Answer::Status(503), Answer::Status(200)],
    )
    .await;
    assert_eq!(status(&run2), 200, "the slot is back");

    // Istio's default has no budget: retries in flight are bounded by
    // maxRetries (2^32 - 1) alone.
    let open = cluster(2, PoolLimits::default(), None);
    let held: Vec<Slot> = (0..50)
        .filter_map(|_| open.state.take_retry(u64::MAX, None))
        .collect();
    assert_eq!(held.len(), 50);
    let run3 = run(
        &open,
        &policy,
        None,
        &[Answer::Status(503), Answer::Status(200)],
    )
    .await;
    assert_eq!(status(&run3), 200, "no budget to spend");

    // `trafficPolicy.retryBudget`: 20% of requests in flight, at least 3.
    let budget = crate::model::live::RetryBudget {
        percent: 20.0,
        min_concurrency: 3,
    };
    let budgeted = cluster(
        2,
        PoolLimits {
            retry_budget: Some(budget),
            ..PoolLimits::default()
        },
        None,
    );
    let spent: Vec<Slot> = (0..3)
        .filter_map(|_| budgeted.state.take_retry(u64::MAX, Some(budget)))
        .collect();
    assert_eq!(spent.len(), 3);
    let run4 = run(&budgeted, &policy, None, &[Answer::Status(503)]).await;
    assert_eq!(status(&run4), 503, "the budget is spent");
    assert_eq!(run4.notes.flags, ResponseFlags::UPSTREAM_OVERFLOW);
}

#[tokio::test(start_paused = true)]
async fn full_request_limits_and_pool_overflow_answer_uo() {
    let limits = PoolLimits {
        max_requests: 1,
        ..PoolLimits::default()
    };
    let busy = cluster(1, limits, None);
    let _in_flight = busy.state.take_request(1).expect("the one request slot");
    let policy = on_503();
    let run1 = run(&busy, &policy, None, &[]).await;
    assert_eq!(
        local_reply(&run1).decided_by,
        LocalReply::overflow(MAX_REQUESTS).decided_by
    );
    assert!(
        run1.script.endpoints().is_empty(),
        "nothing is sent past maxRequests"
    );

    let open = cluster(2, PoolLimits::default(), None);
    let overflow = run(&open, &policy, None, &[Answer::Overflow]).await;
    assert_eq!(
        local_reply(&overflow).decided_by,
        DecidedBy::Limit(MAX_CONNECTIONS),
        "the pool names the limit"
    );
    assert_eq!(
        overflow.script.endpoints().len(),
        1,
        "an overflow is never retried"
    );
}

#[tokio::test(start_paused = true)]
async fn consecutive_errors_eject_an_endpoint_and_then_nothing_is_left() {
    let outlier = OutlierSettings {
        consecutive_5xx: 2,
        consecutive_gateway: 0,
        consecutive_local_origin: None,
        interval: Duration::from_secs(10),
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 100,
        min_health_percent: 0,
    };
    let cluster = cluster(1, PoolLimits::default(), Some(outlier));
    let policy = retry(0, &[]);
    let first = run(&cluster, &policy, None, &[Answer::Status(500)]).await;
    assert!(first.notes.ejected.is_empty());
    let second = run(&cluster, &policy, None, &[Answer::Status(500)]).await;
    assert_eq!(second.notes.ejected, [Arc::<str>::from("10.9.0.1:80")]);
    assert!(
        second
            .notes
            .events
            .contains(&"ejected for consecutive5xxErrors".to_owned())
    );
    let third = run(&cluster, &policy, None, &[]).await;
    assert_eq!(reply(&third), LocalReply::NO_HEALTHY_UPSTREAM.details, "UH");
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_counts_the_first_ejection_too() {
    // Envoy 1.40 without always_eject_one_host: ejecting one of n hosts
    // must itself stay within the percentage.
    let outlier = |max_ejection_percent| OutlierSettings {
        consecutive_5xx: 1,
        consecutive_gateway: 0,
        consecutive_local_origin: None,
        interval: Duration::from_secs(10),
        base_ejection: Duration::from_secs(30),
        max_ejection_percent,
        min_health_percent: 0,
    };
    let policy = retry(0, &[]);
    for (hosts, percent, ejected) in [
        (1, 10, false),
        (5, 10, false),
        (10, 10, true),
        (1, 100, true),
    ] {
        let cluster = cluster(hosts, PoolLimits::default(), Some(outlier(percent)));
        let failed = run(&cluster, &policy, None, &[Answer::Status(500)]).await;
        assert_eq!(
            !failed.notes.ejected.is_empty(),
            ejected,
            "{hosts} hosts at {percent}%"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn every_attempt_holds_a_request_slot_until_the_request_ends() {
    let cluster = cluster(2, PoolLimits::default(), None);
    let policy = on_503();
    let run = run(
        &cluster,
        &policy,
        None,
        &[Answer::Status(503), Answer::Status(200)],
    )
    .await;
    assert_eq!(run.notes.held.len(), 2);
    assert_eq!(
        cluster
            .state
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    drop(run);
    assert_eq!(
        cluster
            .state
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_for_a_pooled_connection_is_recorded_with_its_limit() {
    let cluster = cluster(1, PoolLimits::default(), None);
    let policy = on_503();
    let waited = run(&cluster, &policy, None, &[Answer::AfterWait(40)]).await;
    assert_eq!(status(&waited), 200);
    assert!(
        waited
            .notes
            .events
            .contains(&format!("waited 40ms on {MAX_CONNECTIONS}")),
        "{:?}",
        waited.notes.events
    );
}

/// A route's timeout runs from when the whole request has arrived, as
/// Envoy's global timeout does: a slow upload is the client's time.
/// Until then it runs from the head while the attempt waits for its
/// connection (Envoy's runs then, its buffer reading the body ahead).
#[tokio::test(start_paused = true)]
async fn the_route_timeout_runs_from_the_requests_end() {
    let cluster = cluster(1, PoolLimits::default(), None);
    let policy = retry(0, &[]);
    let timeout = Some(Duration::from_millis(300));
    let connecting = |connect, answer| Answer::Connecting { connect, answer };
    // The body ends at 1000 ms, the answer comes 100 ms later: in time.
    let upload = run_ending(
        &cluster,
        &policy,
        timeout,
        &[connecting(0, Some(1100))],
        Some(1000),
    )
    .await;
    assert_eq!(status(&upload), 200);
    // No answer: cut 300 ms after the body's end.
    let unanswered = run_ending(
        &cluster,
        &policy,
        timeout,
        &[connecting(0, None)],
        Some(1000),
    )
    .await;
    assert_eq!(reply(&unanswered), LocalReply::TIMEOUT.details);
    assert_eq!(unanswered.took, Duration::from_millis(1300));
    // A connection that takes longer than the timeout: cut 300 ms after
    // the head, the body unread.
    let waiting = run_ending(
        &cluster,
        &policy,
        timeout,
        &[connecting(1000, Some(0))],
        Some(2000),
    )
    .await;
    assert_eq!(reply(&waiting), LocalReply::TIMEOUT.details);
    assert_eq!(waiting.took, Duration::from_millis(300));
}

/// With a per-try timeout as well, the earlier of the two cuts: the
/// per-try timeout, from the connection and the request's end.
#[tokio::test(start_paused = true)]
async fn the_per_try_and_route_timeouts_run_from_the_requests_end() {
    let cluster = cluster(1, PoolLimits::default(), None);
    let mut policy = retry(0, &[]);
    policy.per_try_timeout = Some(Duration::from_millis(100));
    let timeout = Some(Duration::from_millis(300));
    let connecting = |connect, answer| Answer::Connecting { connect, answer };
    let cut = run_ending(
        &cluster,
        &policy,
        timeout,
        &[connecting(50, None)],
        Some(500),
    )
    .await;
    assert_eq!(reply(&cut), LocalReply::PER_TRY_TIMEOUT.details);
    assert_eq!(cut.took, Duration::from_millis(600));
}
