//! The differential suite: every file in `cases/` is a case — Istio
//! resources, the requests to send, and the Envoy configuration Istio's
//! control plane renders for those resources — run against the tracemesh
//! agent and against real Envoy. Both must reach the same outcome: status,
//! response flags, and the method, path and headers the upstream received;
//! and that outcome must be the one the case expects. Where tracemesh
//! differs from Envoy on purpose, the step says what Envoy does and why,
//! and `docs/envoy-differences.md` lists it.
//!
//! `cargo test --test conformance [-- FILTER]` runs it. Envoy is found as
//! `envoy::locate` says; without it the cases are skipped with a message,
//! except under `CI=true`, where they fail. See `README.md` here for the
//! case format.

// Test helpers: a failed unwrap is a failed case.
#![allow(clippy::unwrap_used)]

// The shared helpers' own unit tests do not run under this harness.
#[allow(unused_imports)]
#[path = "../common/mod.rs"]
mod common;

mod case;
mod client;
mod envoy;
mod outcome;
mod upstream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use serde_yaml_ng::Value;

use case::{Case, Direction, Step};
use common::agent::Agent;
use outcome::Outcome;
use upstream::{Behaviour, Upstream};

fn main() {
    let args = Arguments::from_args();
    let envoy = envoy::locate();
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Err(why) = &envoy {
        if in_ci {
            eprintln!("conformance: {why} (CI=true: the suite must run)");
        } else {
            eprintln!("conformance: {why}; skipping the cases");
        }
    }
    let mut trials = vec![Trial::test("differences_are_documented", || {
        differences_are_documented().map_err(Failed::from)
    })];
    for path in case_files() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let envoy = envoy.clone();
        let skip = envoy.is_err() && !in_ci;
        let trial = Trial::test(name, move || {
            let envoy = envoy.map_err(Failed::from)?;
            run_case(&path, &envoy).map_err(Failed::from)
        });
        trials.push(trial.with_ignored_flag(skip));
    }
    libtest_mimic::run(&args, trials).exit();
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/cases")
}

fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("tests/conformance/cases")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every case with a deliberate difference is in the docs' table.
fn differences_are_documented() -> Result<(), String> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/envoy-differences.md");
    let doc = std::fs::read_to_string(&doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let mut missing = Vec::new();
    for path in case_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let case: Value = serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())?;
        let differs = case["requests"]
            .as_sequence()
            .is_some_and(|steps| steps.iter().any(|step| step.get("why").is_some()));
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if differs && !doc.contains(&format!("`{name}`")) {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "docs/envoy-differences.md does not list: {missing:?}"
        ))
    }
}

fn run_case(path: &Path, envoy_bin: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut upstreams = BTreeMap::new();
        for (name, spec) in case::upstream_specs(&text) {
            let behaviour = Behaviour {
                status: spec.status,
                delay: Duration::from_millis(spec.delay_ms),
                raw: spec.raw,
                max_concurrent_streams: spec.max_concurrent_streams,
                reset: spec.reset,
            };
            upstreams.insert(name.clone(), Upstream::start(&name, behaviour).await);
        }
        let ports = upstreams
            .iter()
            .map(|(name, u)| (name.clone(), u.addr.port()))
            .collect();
        let case = case::load(path, &text, &ports)?;
        if !case.upstreams.keys().eq(upstreams.keys()) {
            return Err("`upstreams` must be a mapping of names to settings".to_owned());
        }

        let agent = Agent::try_start(&agent_config(&case, &upstreams)?)
            .map_err(|e| format!("the agent refused the case's config: {e}"))?;
        let target = match case.direction {
            Direction::Inbound => agent.inbound,
            Direction::Outbound => agent.outbound,
        };
        let mut ours = Vec::new();
        for (i, step) in case.requests.iter().enumerate() {
            let ids = request_ids(1, i, step);
            let replies = send_step(target, &case, step, &ids, &upstreams).await;
            let flags = agent_flags(&agent, &ids);
            ours.push(observe(&case, step, &ids, &replies, flags, &upstreams));
        }
        drop(agent);

        let envoy = envoy::Envoy::start(envoy_bin, &case)?;
        let mut theirs = Vec::new();
        for (i, step) in case.requests.iter().enumerate() {
            let ids = request_ids(2, i, step);
            let replies = send_step(envoy.listener, &case, step, &ids, &upstreams).await;
            let flags = envoy_flags(&envoy, &ids);
            theirs.push(observe(&case, step, &ids, &replies, flags, &upstreams));
        }
        drop(envoy);

        let mut problems = Vec::new();
        for (i, ((step, ours), theirs)) in case.requests.iter().zip(&ours).zip(&theirs).enumerate()
        {
            let label = format!("requests[{i}] {} {}", step.send.method, step.send.path);
            if let Err(e) = outcome::check(&step.expect, ours) {
                problems.push(format!("{label}: tracemesh: {e}\n    tracemesh: {ours}"));
            }
            match &step.envoy {
                // A deliberate difference: Envoy must still do what the case says.
                Some(envoy_expect) => {
                    if let Err(e) = outcome::check(envoy_expect, theirs) {
                        problems.push(format!("{label}: Envoy no longer does what `envoy` says: {e}\n    envoy: {theirs}"));
                    }
                }
                None => {
                    if ours != theirs {
                        problems.push(format!(
                            "{label}: tracemesh and Envoy differ\n    tracemesh: {ours}\n    envoy:     {theirs}"
                        ));
                    } else if let Err(e) = outcome::check(&step.expect, theirs) {
                        problems.push(format!("{label}: envoy: {e}"));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n{}", case.description.trim(), problems.join("\n")))
        }
    })
}

/// The Agent document (every listener on port 0, the app behind inbound is
/// upstream `app`, access log on) with the case's settings merged in, then
/// the case's Istio resources.
fn agent_config(case: &Case, upstreams: &BTreeMap<String, Upstream>) -> Result<String, String> {
    let app = upstreams
        .get("app")
        .map_or_else(|| "127.0.0.1:1".to_owned(), |u| u.addr.to_string());
    let base = format!(
        r#"
apiVersion: tracemesh.io/v1
kind: Agent
metadata: {{name: client-v1, namespace: default}}
spec:
  service: app
  labels: {{app: app, version: v1}}
  concurrency: 1
  inbound: {{listen: "127.0.0.1:0", app: "{app}", appProtocol: HTTP}}
  outbound: {{listen: "127.0.0.1:0"}}
  admin: {{listen: "127.0.0.1:0"}}
  telemetry: {{otlp: {{endpoint: "http://127.0.0.1:1"}}, sampling: 1.0, flushInterval: 100ms}}
  accessLog: {{enabled: true}}
"#
    );
    let mut doc: Value = serde_yaml_ng::from_str(&base).map_err(|e| e.to_string())?;
    if let Some(extra) = &case.agent {
        case::merge(&mut doc["spec"], extra);
    }
    let agent = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    Ok(format!("{agent}---\n{}", case.istio))
}

/// A UUID v4 `x-request-id` per copy. Envoy takes its tracing decision from
/// (and writes it into) the UUID's version digit, so ids are told apart by
/// their last group alone (see `same_request`).
fn request_ids(side: u64, step: usize, s: &Step) -> Vec<String> {
    (0..s.send.concurrent)
        .map(|copy| {
            let tag = (side << 40) | ((step as u64) << 20) | copy as u64;
            format!("00000000-0000-4000-8000-{tag:012x}")
        })
        .collect()
}

/// Whether a logged or forwarded request id is the one sent.
fn same_request(seen: &str, sent: &str) -> bool {
    seen.len() == sent.len() && seen.get(24..) == sent.get(24..)
}

/// Sends every copy of a step at once (raw upstreams answering with the
/// step's `respond`); returns what each client saw.
async fn send_step(
    target: std::net::SocketAddr,
    case: &Case,
    step: &Step,
    ids: &[String],
    upstreams: &BTreeMap<String, Upstream>,
) -> Vec<client::Reply> {
    for upstream in upstreams.values() {
        let respond = step.respond.as_ref().map(|r| r.as_bytes().to_vec());
        upstream.respond_with(respond, step.hold, step.reset_connection);
        upstream.take_accepted(); // counted from here for this step
    }
    let authority = step
        .send
        .authority
        .clone()
        .unwrap_or_else(|| match case.direction {
            Direction::Inbound => "app.default.svc.cluster.local".to_owned(),
            Direction::Outbound => "missing-authority".to_owned(),
        });
    let sends = ids.iter().map(|id| {
        let authority = authority.clone();
        async move { client::send(target, &step.send, id, &authority).await }
    });
    futures_util::future::join_all(sends).await
}

/// Each copy's flags from the agent's access log (waiting for its lines).
fn agent_flags(agent: &Agent, ids: &[String]) -> Vec<String> {
    wait_for(ids, || {
        agent
            .stdout()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|entry| {
                let id = entry["request_id"].as_str().unwrap_or("").to_owned();
                let flags = entry["response_flags"].as_str().unwrap_or("-").to_owned();
                (id, flags)
            })
            .collect()
    })
}

/// Each copy's flags from Envoy's access log.
fn envoy_flags(envoy: &envoy::Envoy, ids: &[String]) -> Vec<String> {
    wait_for(ids, || {
        envoy
            .access_log()
            .into_iter()
            .map(|(_status, flags, details, id)| (id, outcome::envoy_flag_class(&flags, &details)))
            .collect()
    })
}

/// The logged flags of `ids` (`unlogged` for a request that left no line:
/// refused by the proxy's HTTP parser before its request path).
fn wait_for(ids: &[String], read: impl Fn() -> Vec<(String, String)>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let entries = read();
        let found: Vec<Option<String>> = ids
            .iter()
            .map(|id| {
                let entry = entries.iter().find(|(logged, _)| same_request(logged, id));
                entry.map(|(_, flags)| flags.clone())
            })
            .collect();
        if found.iter().all(Option::is_some) || Instant::now() > deadline {
            return found
                .into_iter()
                .map(|f| f.unwrap_or_else(|| "unlogged".to_owned()))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn observe(
    case: &Case,
    step: &Step,
    ids: &[String],
    replies: &[client::Reply],
    flags: Vec<String>,
    upstreams: &BTreeMap<String, Upstream>,
) -> Outcome {
    let mut responses: Vec<String> = replies
        .iter()
        .zip(&flags)
        .map(|(reply, flags)| {
            let mut response = outcome::response(reply.status, flags);
            for name in &step.expect.outcome_headers {
                if let Some(value) = outcome::header(reply, name) {
                    response.push_str(&format!(" {name}={value}"));
                }
            }
            response
        })
        .collect();
    responses.sort();
    let received = upstreams
        .values()
        .flat_map(Upstream::take)
        .filter(|r| {
            let id = r.header("x-request-id").unwrap_or("");
            ids.iter().any(|sent| same_request(id, sent))
        })
        .collect();
    let connections = step
        .expect
        .connections
        .map(|_| upstreams.values().map(Upstream::take_accepted).sum());
    let seen = replies
        .first()
        .map(|reply| outcome::seen(step, reply))
        .unwrap_or_default();
    Outcome {
        responses,
        forwarded: outcome::forwarded(case, &step.send, received),
        headers: seen.headers,
        body: seen.body,
        interim: seen.interim,
        connections,
    }
}
