//! End-to-end tests of `tracemesh collector`: real processes on port 0, real
//! sockets, a real OpenTelemetry SDK as the client.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod harness;

mod attributes;
mod backpressure;
mod bad_input;
mod durability;
mod export;
mod otlp_json;
mod sdk;
mod time_range;
mod timeouts;
mod wal_damage;
mod zipkin;
