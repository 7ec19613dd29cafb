//! Live reload under load: the config flips between two VirtualService
//! versions while requests flow; none fails, traffic follows each version
//! within a second, and a broken file changes nothing.

// Tests fail by panicking; helpers here unwrap as the tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::client::Client;
use common::mesh::{Ep, NO_COLLECTOR, agent, service_entry};
use common::upstream::{Upstream, closed_port};

fn config(base: &str, subset: &str) -> String {
    format!(
        "{base}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: app, namespace: default}}\nspec:\n  hosts: [app]\n  http:\n  - name: to-{subset}\n    route: [{{destination: {{host: app, subset: {subset}}}}}]\n"
    )
}

/// Replaces the file in one step, as editors and ConfigMap updates do.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

type Log = Arc<Mutex<Vec<(Instant, String, u16)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_loses_nothing() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let base = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "app",
            9080,
            "HTTP",
            &[
                Ep {
                    addr: v1.addr,
                    labels: &[("version", "v1")],
                },
                Ep {
                    addr: v2.addr,
                    labels: &[("version", "v2")],
                },
            ],
        )
        + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: app, namespace: default}\nspec:\n  host: app\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";
    let agent = Agent::start(&config(&base, "v1"));
    let client = Client::h1(agent.outbound);

    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, log, stop) = (client.clone(), log.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let entry = match client.try_get("http://app:9080/").await {
                        Ok(reply) => (Instant::now(), reply.upstream(), reply.status.as_u16()),
                        Err(error) => (Instant::now(), error, 0),
                    };
                    log.lock().unwrap().push(entry);
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut slowest_switch = Duration::ZERO;
    for flip in 0..20 {
        let target = if flip % 2 == 0 { "v2" } else { "v1" };
        write_atomically(&agent.config, &config(&base, target));
        let written = Instant::now();
        // Followed when ten responses in a row, all completed after the
        // write, come from the new version.
        loop {
            let followed = {
                let log = log.lock().unwrap();
                let recent: Vec<_> = log.iter().rev().take(10).collect();
                recent.len() == 10
                    && recent
                        .iter()
                        .all(|(at, up, _)| *at > written && up == target)
            };
            if followed {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "flip {flip} never took effect; last responses {:?}; agent said {:?}",
                log.lock().unwrap().iter().rev().take(5).collect::<Vec<_>>(),
                agent.stderr()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest_switch = slowest_switch.max(written.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    assert!(
        slowest_switch < Duration::from_secs(1),
        "traffic took {slowest_switch:?} to follow a version"
    );

    let dump: serde_json::Value =
        serde_json::from_str(&agent.admin_get("/config_dump").await).unwrap();
    assert_eq!(
        dump["version"], 21,
        "twenty reloads on top of the first load"
    );

    // A broken file changes nothing.
    let before = v1.count();
    write_atomically(
        &agent.config,
        &config(&base, "v2").replace("subset: v2", "subset: v2, port: {numbr: 9080}"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = agent.metrics().await;
        if scrape.sum(
            "tracemesh_agent_config_loads_total",
            &[("result", "rejected")],
        ) == 1.0
        {
            assert_eq!(scrape.sum("tracemesh_agent_config_version", &[]), 21.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was never rejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        v1.count() > before,
        "traffic stays on the last good version (v1)"
    );
    assert!(
        agent
            .stderr()
            .iter()
            .any(|l| l.contains("unknown field `numbr`")),
        "the rejection names the field"
    );

    let log = log.lock().unwrap();
    let failed: Vec<_> = log.iter().filter(|(_, _, status)| *status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        log.len(),
        &failed[..failed.len().min(5)]
    );
    let rate = log
        .iter()
        .filter(|(at, _, _)| *at <= started + elapsed)
        .count() as f64
        / elapsed.as_secs_f64();
    assert!(rate >= 500.0, "the load ran at {rate:.0} requests/s");
}

/// `base` with a DestinationRule for `app` that sets
/// `maxRequestsPerConnection` to `per_connection`.
fn pooled(base: &str, per_connection: u32) -> String {
    format!(
        "{base}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: app, namespace: default}}\nspec:\n  host: app\n  trafficPolicy: {{connectionPool: {{http: {{maxRequestsPerConnection: {per_connection}}}}}}}\n"
    )
}

/// A reload that sets or changes a DestinationRule's connection pool
/// settings lets go of the upstream connections pooled under the old ones
/// (none set included), as Envoy drains a changed cluster's pools; one
/// that leaves them as they were keeps them in use. (The old pool's idle connection used to stay open
/// for its idle timeout, an hour by default, with no request to use it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_pool_settings_closes_the_old_idle_connections() {
    let app = Upstream::start("app").await;
    let base = agent("frontend", closed_port().await, NO_COLLECTOR)
        + &service_entry(
            "app",
            9080,
            "HTTP",
            &[Ep {
                addr: app.addr,
                labels: &[],
            }],
        );
    let agent = Agent::start(&base);
    let client = Client::h1(agent.outbound);
    let closed = |what: &'static str| {
        let app = app.clone();
        async move {
            let give_up = Instant::now() + Duration::from_secs(30);
            while app.open_connections() > 0 {
                assert!(Instant::now() < give_up, "{what}: still open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(client.get("http://app:9080/one").await.status, 200);
    assert_eq!(app.accepted_connections(), 1);

    // Settings set where there were none: the plain connection closes.
    agent.rewrite_config(&pooled(&base, 100));
    agent.wait_for_config_version(2.0).await;
    closed("the connection made without settings").await;
    assert_eq!(client.get("http://app:9080/two").await.status, 200);
    assert_eq!(app.accepted_connections(), 2);

    // A reload that keeps the pool settings keeps the pooled connection.
    agent.rewrite_config(&(pooled(&base, 100) + "# unrelated\n"));
    agent.wait_for_config_version(3.0).await;
    assert_eq!(client.get("http://app:9080/three").await.status, 200);
    assert_eq!(
        app.accepted_connections(),
        2,
        "the kept pool was not reused"
    );

    // One that changes them closes it.
    agent.rewrite_config(&pooled(&base, 50));
    agent.wait_for_config_version(4.0).await;
    closed("the old pool's idle connection").await;
    assert_eq!(client.get("http://app:9080/four").await.status, 200);
    assert_eq!(app.accepted_connections(), 3);
}

/// A reload that changes `appProtocol` among HTTP protocols speaks to the
/// application as the new config says from the next request, and does not
/// warn of a restart it does not need; one between HTTP and TCP does (the
/// inbound listener's kind is chosen once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_protocol_among_http_versions_applies_at_once() {
    let app = Upstream::start("app").await;
    let http = agent("backend", app.addr, NO_COLLECTOR);
    assert!(http.contains("appProtocol: HTTP}"), "{http}");
    let agent = Agent::start(&http);
    let client = Client::h1(agent.inbound);
    assert_eq!(client.get("http://backend/one").await.status, 200);
    assert_eq!(app.seen().pop().unwrap().version, http::Version::HTTP_11);

    agent.rewrite_config(&http.replace("appProtocol: HTTP}", "appProtocol: HTTP2}"));
    agent.wait_for_config_version(2.0).await;
    assert_eq!(client.get("http://backend/two").await.status, 200);
    assert_eq!(app.seen().pop().unwrap().version, http::Version::HTTP_2);
    let restart = |agent: &Agent| {
        agent
            .stderr()
            .iter()
            .any(|line| line.contains("take effect after a restart"))
    };
    assert!(!restart(&agent), "{:?}", agent.stderr());

    agent.rewrite_config(&http.replace("appProtocol: HTTP}", "appProtocol: TCP}"));
    agent.wait_for_config_version(3.0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !restart(&agent) {
        assert!(Instant::now() < deadline, "{:?}", agent.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
