//! End-to-end tests of the query service: a real `tracemesh collector` on
//! port 0, spans sent over real OTLP/HTTP, answers read over HTTP, by the
//! `tracemesh query` CLI and by a real headless Chromium.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../collector/harness.rs"]
mod harness;

mod api;
mod bounds;
mod browser;
mod cli;
mod data;
mod stats;
mod views;
mod webdriver;
