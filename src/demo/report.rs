//! What the demo prints on stdout: where everything is once it is ready
//! (with one machine-readable `demo ready` line), a line of live numbers
//! every interval, and a summary with one `demo done` line at the end.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::load::Window;
use crate::load::report::Report;

use super::scrape::Target;

/// Where the demo's pieces are, for the ready banner.
pub struct Ready<'a> {
    /// The collector's HTTP listener (UI, query API, `/metrics`).
    pub ui: SocketAddr,
    /// The collector's OTLP/gRPC listener.
    pub otlp_grpc: SocketAddr,
    /// The page the load generator requests.
    pub productpage: String,
    /// The ingress gateway's Bookinfo port (the article's `$GATEWAY_URL`),
    /// where the load enters the mesh; `None` where it enters elsewhere.
    pub gateway: Option<String>,
    /// The data directory.
    pub data_dir: &'a Path,
    /// The sidecars' config files.
    pub mesh_dir: &'a Path,
    /// The Prometheus config the demo wrote.
    pub prometheus_config: &'a Path,
    /// Every scrape target.
    pub targets: &'a [Target],
    /// The load: connections and rate.
    pub load: (u32, f64),
    /// The reviews split in force.
    pub weights: &'a [(&'a str, u32)],
    /// The scenario's name, if any.
    pub scenario: Option<String>,
    /// With `--pods`: the hub namespace, from where the pods are reachable.
    pub pods_hub: Option<&'a str>,
}

impl Ready<'_> {
    /// The banner: for people, then one line for scripts.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let (heading, productpage) = match (self.pods_hub, &self.gateway) {
            (None, Some(_)) => (
                "each workload behind its own sidecar, entered through the ingress gateway",
                "through the gateway, by Bookinfo's bookinfo-gateway Gateway and VirtualService",
            ),
            (None, None) => (
                "each workload behind its own sidecar",
                "its sidecar's inbound listener",
            ),
            (Some(_), _) => (
                "each workload in its own pod, captured by its own sidecar",
                "relayed to the ingress gateway in the hub, in front of productpage's pod",
            ),
        };
        let _ = writeln!(out, "tracemesh demo: Istio's Bookinfo, {heading}");
        let _ = writeln!(out, "  UI and query API   http://{}/", self.ui);
        if let Some(gateway) = &self.gateway {
            let _ = writeln!(out, "  GATEWAY_URL        {gateway} (the ingress gateway)");
        }
        let _ = writeln!(
            out,
            "  productpage        {} ({productpage})",
            self.productpage
        );
        if let Some(hub) = self.pods_hub {
            let _ = writeln!(
                out,
                "  pods               network namespaces {hub} (the hub) and {}-<workload>",
                hub.trim_end_matches("-hub")
            );
        }
        let _ = writeln!(out, "  OTLP/gRPC          http://{}", self.otlp_grpc);
        let _ = writeln!(out, "  data directory     {}", self.data_dir.display());
        let _ = writeln!(
            out,
            "  mesh config        {}/<workload>.yaml (edit one: its sidecar, or the gateway, reloads it)",
            self.mesh_dir.display()
        );
        let split: Vec<String> = self
            .weights
            .iter()
            .map(|(version, weight)| format!("{version} {weight}%"))
            .collect();
        let _ = writeln!(
            out,
            "  load               {} connections at {} qps to /productpage; reviews split {}{}",
            self.load.0,
            self.load.1,
            split.join(" / "),
            self.scenario
                .as_ref()
                .map(|s| format!("; scenario {s}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "Prometheus scrape targets (prometheus --config.file={}):",
            self.prometheus_config.display()
        );
        for target in self.targets {
            let _ = writeln!(
                out,
                "  {:<20} http://{}/metrics",
                target.workload.unwrap_or("tracemesh-collector"),
                target.address
            );
        }
        if let Some(hub) = self.pods_hub {
            // The sidecars' admin ports are on the pods' addresses.
            let _ = writeln!(
                out,
                "  (the sidecars' are the pods' addresses, reached from the hub: \
                 ip netns exec {hub} curl http://<pod>:15000/metrics)"
            );
        }
        let gateway = self
            .gateway
            .as_ref()
            .map(|g| format!(" gateway={g}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "demo ready ui=http://{}/ productpage={}{gateway} data_dir={} prometheus_config={}",
            self.ui,
            self.productpage,
            self.data_dir.display(),
            self.prometheus_config.display()
        );
        out
    }
}

/// One line of live numbers for a window of `length`.
pub fn live_line(elapsed: Duration, length: Duration, window: &Window) -> String {
    let seconds = length.as_secs_f64().max(1e-3);
    let share = |n: u64| {
        if window.requests > 0 {
            100.0 * n as f64 / window.requests as f64
        } else {
            0.0
        }
    };
    format!(
        "[{:>4}s] {:>7.1} req/s   p50 {:>7.1} ms   p99 {:>7.1} ms   errors {:>5.1}%   non-2xx {:>5.1}%",
        elapsed.as_secs(),
        window.requests as f64 / seconds,
        window.p50_us as f64 / 1000.0,
        window.p99_us as f64 / 1000.0,
        share(window.failed),
        share(window.non_2xx)
    )
}

/// The closing summary of the whole run, ending in one `demo done` line.
pub fn summary(report: &Report) -> String {
    let latency = &report.latency_us;
    let failed: u64 = report.errors.total()
        + report
            .codes
            .iter()
            .filter(|(code, _)| code.starts_with('5'))
            .map(|(_, n)| n)
            .sum::<u64>();
    let not_2xx: u64 = report.errors.total()
        + report
            .codes
            .iter()
            .filter(|(code, _)| !code.starts_with('2'))
            .map(|(_, n)| n)
            .sum::<u64>();
    let share = |n: u64| {
        if report.count > 0 {
            n as f64 / report.count as f64
        } else {
            0.0
        }
    };
    let (error_rate, non_2xx_rate) = (share(failed), share(not_2xx));
    let codes: Vec<String> = report
        .codes
        .iter()
        .map(|(code, n)| format!("{code}:{n}"))
        .collect();
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "load: {} requests in {:.1}s ({:.1} req/s), codes {}, errors {:.1}%, non-2xx {:.1}%, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms\n\
         demo done requests={} qps={:.2} p50_ms={:.3} p75_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} error_rate={:.4} non_2xx_rate={:.4}\n",
        report.count,
        report.elapsed_s,
        report.actual_qps,
        if codes.is_empty() {
            "none".to_owned()
        } else {
            codes.join(" ")
        },
        100.0 * error_rate,
        100.0 * non_2xx_rate,
        ms(latency.p50),
        ms(latency.p90),
        ms(latency.p99),
        report.count,
        report.actual_qps,
        ms(latency.p50),
        ms(latency.p75),
        ms(latency.p90),
        ms(latency.p99),
        ms(latency.max),
        error_rate,
        non_2xx_rate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_line_shows_rate_latency_and_errors() {
        let window = Window {
            requests: 50,
            failed: 5,
            non_2xx: 20,
            p50_us: 4_200,
            p99_us: 12_000,
        };
        let line = live_line(Duration::from_secs(10), Duration::from_secs(5), &window);
        assert!(line.contains("10.0 req/s"), "{line}");
        assert!(line.contains("p99    12.0 ms"), "{line}");
        assert!(line.contains("errors  10.0%"), "{line}");
        assert!(line.contains("non-2xx  40.0%"), "{line}");
    }
}
