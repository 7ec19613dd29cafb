//! One span being recorded: its identity (fixed when it starts, told to the
//! next hop), and its attributes and events written as OTLP protobuf the
//! moment they are set. Ending it appends the finished `Span` message to the
//! worker's batch ([`WorkerSpans`]): no span object outlives the request and
//! nothing is converted or encoded twice.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};

use super::otlp_wire::{self as wire, Value};
use super::sampler;
use super::spans::WorkerSpans;
use crate::model::telemetry::{Side, TelemetryPolicy};
use crate::trace_context::Decision;

/// OTLP's `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SPAN_KIND_SERVER`.
    Server = 2,
    /// `SPAN_KIND_CLIENT`.
    Client = 3,
}

/// At most this many events per span; more are counted in
/// `dropped_events_count` (the OpenTelemetry SDK's default limit).
const MAX_EVENTS: u32 = 128;

/// Buffers kept per thread for the spans recording on it, so a span
/// allocates nothing once a few requests have gone by.
#[derive(Default)]
struct Scratch {
    fields: Vec<u8>,
    name: String,
}

thread_local! {
    static SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
}

/// Most scratch buffers kept per thread (one per span in flight is reused).
const SCRATCH_KEPT: usize = 1024;

fn take_scratch() -> Scratch {
    SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

fn give_back(mut scratch: Scratch) {
    // A buffer grown by an outsized span is not kept.
    if scratch.fields.capacity() > 16 << 10 || scratch.name.capacity() > 1 << 10 {
        return;
    }
    scratch.fields.clear();
    scratch.name.clear();
    SCRATCH.with(|s| {
        let mut kept = s.borrow_mut();
        if kept.len() < SCRATCH_KEPT {
            kept.push(scratch);
        }
    });
}

/// What a new span descends from.
pub struct Parent<'a> {
    /// The parent's context (remote: the caller's; local: this hop's span).
    pub context: Option<&'a SpanContext>,
    /// A caller's decision that its context cannot carry (B3 without ids,
    /// or ids without a decision).
    pub decision: Option<Decision>,
}

/// A span, recorded when sampled; an unsampled span still has an identity
/// to pass on.
pub struct Span {
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    kind: Kind,
    start: SystemTime,
    /// `Some` while recording: the name and the encoded attributes and events.
    scratch: Option<Scratch>,
    events: u32,
    /// The error description, when the span failed.
    error: Option<Cow<'static, str>>,
    sink: Rc<WorkerSpans>,
}

fn nonzero_u64() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// How a span decides to be sampled and whether it is reported, when the
/// workload's Telemetry says otherwise than the Agent's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Share of new traces sampled (0.0–1.0); a caller's decision wins.
    pub ratio: f64,
    /// A sampled span is reported (`disableSpanReporting: false`); when
    /// false it is still sampled and propagated as such, never recorded.
    pub report: bool,
}

impl Sampling {
    /// What the workload's Telemetry says for `side`: its share of new
    /// traces (else the mesh's, else `agent_ratio`, the Agent's
    /// `spec.telemetry.sampling`) and whether spans are reported.
    pub fn of(policy: &TelemetryPolicy, side: Side, agent_ratio: f64) -> Self {
        let tracing = policy.side(side).tracing.as_ref();
        Self {
            ratio: policy.sampling_percent(side, agent_ratio) / 100.0,
            report: tracing.is_none_or(|t| !t.disabled),
        }
    }
}

impl Span {
    /// Starts a span of `kind` under `parent` (a new trace's root without
    /// one), sampled as the caller decided or by the worker's ratio.
    pub fn start(
        sink: &Rc<WorkerSpans>,
        kind: Kind,
        parent: Parent<'_>,
        start: SystemTime,
    ) -> Self {
        let sampling = Sampling {
            ratio: sink.ratio(),
            report: true,
        };
        Self::start_with(sink, kind, parent, start, sampling)
    }

    /// [`Span::start`] with the sampling ratio and reporting of `sampling`.
    pub fn start_with(
        sink: &Rc<WorkerSpans>,
        kind: Kind,
        parent: Parent<'_>,
        start: SystemTime,
        sampling: Sampling,
    ) -> Self {
        let valid = parent.context.filter(|cx| cx.is_valid());
        let trace_id = match valid {
            Some(cx) => cx.trace_id(),
            None => loop {
                let id = fastrand::u128(..);
                if id != 0 {
                    break TraceId::from(id);
                }
            },
        };
        let sampled = sampler::sampled(sampling.ratio, parent.decision, valid, trace_id);
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::NOT_SAMPLED
        };
        let trace_state = parent
            .context
            .map(|cx| cx.trace_state().clone())
            .unwrap_or_default();
        let span_id = SpanId::from(nonzero_u64());
        Self {
            context: SpanContext::new(trace_id, span_id, flags, false, trace_state),
            parent: valid.map_or(SpanId::INVALID, SpanContext::span_id),
            parent_is_remote: valid.is_some_and(SpanContext::is_remote),
            kind,
            start,
            scratch: (sampled && sampling.report).then(take_scratch),
            events: 0,
            error: None,
            sink: sink.clone(),
        }
    }

    /// Whether the span is recorded (sampled).
    pub fn is_recording(&self) -> bool {
        self.scratch.is_some()
    }

    /// The span's context: what the next hop is told.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Replaces the span's name with what `write` writes.
    pub fn set_name(&mut self, write: impl FnOnce(&mut String)) {
        if let Some(scratch) = &mut self.scratch {
            scratch.name.clear();
            write(&mut scratch.name);
        }
    }

    /// Replaces the span's name.
    pub fn set_name_str(&mut self, name: &str) {
        self.set_name(|n| n.push_str(name));
    }

    /// Adds an attribute.
    pub fn set(&mut self, key: &str, value: Value<'_>) {
        if let Some(scratch) = &mut self.scratch {
            wire::key_value(&mut scratch.fields, wire::SPAN_ATTRIBUTES, key, value);
        }
    }

    /// Adds a string attribute written by `write` (an address, a number).
    pub fn set_display(&mut self, key: &str, value: impl std::fmt::Display) {
        if self.scratch.is_some() {
            let mut text = String::new();
            let _ = write!(text, "{value}");
            self.set(key, Value::Str(&text));
        }
    }

    /// Adds an event, timestamped now.
    pub fn add_event(&mut self, name: &str, attributes: &[(&str, Value<'_>)]) {
        let Some(scratch) = &mut self.scratch else {
            return;
        };
        self.events += 1;
        if self.events > MAX_EVENTS {
            return;
        }
        let time = nanos(SystemTime::now());
        wire::message(&mut scratch.fields, wire::SPAN_EVENTS, |e| {
            wire::fixed64(e, wire::EVENT_TIME, time);
            wire::bytes(e, wire::EVENT_NAME, name.as_bytes());
            for (key, value) in attributes {
                wire::key_value(e, wire::EVENT_ATTRIBUTES, key, *value);
            }
        });
    }

    /// Marks the span failed. Of two failures the one whose description
    /// sorts last is kept, as the OpenTelemetry SDK keeps it.
    pub fn set_error(&mut self, description: impl Into<Cow<'static, str>>) {
        let description = description.into();
        if self.error.as_ref().is_none_or(|old| description > *old) {
            self.error = Some(description);
        }
    }

    /// Ends the span at `end`: its message goes into the worker's batch.
    pub fn end(mut self, end: SystemTime) {
        self.end_at(end);
    }

    /// Ends the span at `end` and keeps its identity (for a parent whose
    /// children may still end after it). Ending twice does nothing.
    pub fn end_at(&mut self, end: SystemTime) {
        let Some(scratch) = self.scratch.take() else {
            return;
        };
        self.sink.push(|buf| self.encode(&scratch, end, buf));
        give_back(scratch);
    }

    /// Appends this span as `ScopeSpans.spans`. Its length is worked out
    /// first and written ahead of it: a span is usually longer than a
    /// one-byte length, and a prefix fixed up afterwards would move the
    /// whole span (~1.3 KiB in the cost bench) along the batch once more.
    fn encode(&self, scratch: &Scratch, end: SystemTime, buf: &mut Vec<u8>) {
        let cx = &self.context;
        let state = cx.trace_state().header();
        let error = self.error.as_deref();
        let message = error.filter(|e| !e.is_empty());
        let status_len = message.map_or(0, |m| wire::field_len(wire::STATUS_MESSAGE, m.len()))
            + error.map_or(0, |_| {
                wire::uint_len(wire::STATUS_CODE, wire::STATUS_CODE_ERROR)
            });
        let dropped_events = self.events.saturating_sub(MAX_EVENTS);
        let len = wire::field_len(wire::SPAN_TRACE_ID, 16)
            + wire::field_len(wire::SPAN_SPAN_ID, 8)
            + if state.is_empty() {
                0
            } else {
                wire::field_len(wire::SPAN_TRACE_STATE, state.len())
            }
            + if self.parent == SpanId::INVALID {
                0
            } else {
                wire::field_len(wire::SPAN_PARENT_SPAN_ID, 8)
            }
            + if scratch.name.is_empty() {
                0
            } else {
                wire::field_len(wire::SPAN_NAME, scratch.name.len())
            }
            + wire::uint_len(wire::SPAN_KIND, self.kind as u64)
            + wire::fixed64_len(wire::SPAN_START_TIME)
            + wire::fixed64_len(wire::SPAN_END_TIME)
            + scratch.fields.len()
            + if dropped_events > 0 {
                wire::uint_len(wire::SPAN_DROPPED_EVENTS_COUNT, u64::from(dropped_events))
            } else {
                0
            }
            + wire::field_len(wire::SPAN_STATUS, status_len)
            + wire::fixed32_len(wire::SPAN_FLAGS);

        wire::len_prefix(buf, wire::SCOPE_SPANS_SPANS, len);
        let at = buf.len();
        wire::bytes(buf, wire::SPAN_TRACE_ID, &cx.trace_id().to_bytes());
        wire::bytes(buf, wire::SPAN_SPAN_ID, &cx.span_id().to_bytes());
        if !state.is_empty() {
            wire::bytes(buf, wire::SPAN_TRACE_STATE, state.as_bytes());
        }
        if self.parent != SpanId::INVALID {
            wire::bytes(buf, wire::SPAN_PARENT_SPAN_ID, &self.parent.to_bytes());
        }
        if !scratch.name.is_empty() {
            wire::bytes(buf, wire::SPAN_NAME, scratch.name.as_bytes());
        }
        wire::uint(buf, wire::SPAN_KIND, self.kind as u64);
        wire::fixed64(buf, wire::SPAN_START_TIME, nanos(self.start));
        wire::fixed64(buf, wire::SPAN_END_TIME, nanos(end));
        buf.extend_from_slice(&scratch.fields);
        if dropped_events > 0 {
            wire::uint(
                buf,
                wire::SPAN_DROPPED_EVENTS_COUNT,
                u64::from(dropped_events),
            );
        }
        wire::len_prefix(buf, wire::SPAN_STATUS, status_len);
        if let Some(message) = message {
            wire::bytes(buf, wire::STATUS_MESSAGE, message.as_bytes());
        }
        if error.is_some() {
            wire::uint(buf, wire::STATUS_CODE, wire::STATUS_CODE_ERROR);
        }
        let mut flags =
            u32::from(cx.trace_flags().to_u8()) | wire::SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE;
        if self.parent_is_remote {
            flags |= wire::SPAN_FLAGS_CONTEXT_IS_REMOTE;
        }
        wire::fixed32(buf, wire::SPAN_FLAGS, flags);
        debug_assert_eq!(buf.len() - at, len, "the span's length as worked out");
    }
}

impl Drop for Span {
    /// A span dropped before it ended (a request abandoned on the way) ends
    /// now, as an OpenTelemetry SDK span does.
    fn drop(&mut self) {
        self.end_at(SystemTime::now());
    }
}
