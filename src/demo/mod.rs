//! `tracemesh demo`: the whole mesh on one machine with one command. The
//! collector (with the query API and UI mounted on its HTTP port), Istio's
//! Bookinfo as real HTTP services each behind its own sidecar agent, the
//! Bookinfo resources applied as sidecar config, an ingress gateway bound
//! by Bookinfo's own `bookinfo-gateway` Gateway and VirtualService, and
//! the built-in load generator driving `$GATEWAY_URL/productpage`, with
//! live numbers until Ctrl-C or `--duration`. Every hop crosses real sockets and real agents; every
//! internal listener takes a free port.

mod bookinfo;
mod config;
mod mesh;
mod pods;
mod report;
mod roles;
mod scenario;
mod scrape;
mod topology;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tracemesh_collector::config::ListenConfig;
use tracemesh_collector::{Collector, CollectorAddresses, CollectorConfig, ExportArgs};

use crate::load::{self, Control, LoadArgs};
use mesh::Mesh;
use roles::Running;
pub use scenario::Scenario;

/// Flags of `tracemesh demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop by itself after this long (`30s`, `5m`); without it the demo
    /// runs until Ctrl-C.
    #[arg(long, value_parser = load::args::parse_duration_arg)]
    pub duration: Option<Duration>,
    /// Keep the span store, the sidecars' config files and the Prometheus
    /// files here [default: a temporary directory, removed at exit].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port of the UI, the query API and the collector's /metrics, on
    /// 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 16686)]
    pub ui_port: u16,
    /// Change what the mesh does: slow ratings, a failing reviews-v3
    /// (retried once), reviews shifted 50/50 between v1 and v3, or
    /// productpage rate limited.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Requests per second the load generator sends to productpage (the
    /// article's `fortio load -qps 10`).
    #[arg(long, default_value_t = 10.0)]
    pub qps: f64,
    /// Connections of the load generator (the article's `-c 10`).
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,
    /// How often a line of live numbers is printed.
    #[arg(long, default_value = "5s", value_parser = load::args::parse_duration_arg)]
    pub report_every: Duration,
    /// Run each Bookinfo workload in a pod of its own — a network
    /// namespace whose traffic `tracemesh iptables` captures, the
    /// application as its own process calling plain service URLs, its
    /// agent beside it under uid 1337 — as a node runs them. Needs root.
    #[arg(long)]
    pub pods: bool,
    /// Where the embedded collector forwards spans (an external OTLP backend).
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Flags of `tracemesh demo-app`: one Bookinfo application, as `demo
/// --pods` runs it in its pod.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    /// The workload (`reviews-v2`, `productpage-v1`, …).
    #[arg(long)]
    pub workload: String,
    /// The demo's scenario, as the application plays it.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Where to listen [default: every address, on the service's port].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Runs one Bookinfo application until killed: it calls the others by
/// their plain service URLs (`http://reviews:9080/…`), as an application
/// in a captured pod does.
///
/// # Errors
/// An unknown workload, or a port that cannot be bound.
pub fn run_app(args: &AppArgs) -> anyhow::Result<()> {
    let workload = topology::WORKLOADS
        .into_iter()
        .find(|w| w.name == args.workload)
        .ok_or_else(|| anyhow!("no Bookinfo workload {:?}", args.workload))?;
    let listen = args.listen.unwrap_or(SocketAddr::from((
        [0, 0, 0, 0],
        topology::service_port(workload.service),
    )));
    let database = workload
        .calls()
        .iter()
        .find(|c| topology::service_protocol(c) == topology::Protocol::Tcp)
        .map(|c| format!("{c}:{}", topology::service_port(c)));
    let app = bookinfo::App::new(
        workload,
        scenario::behaviour(args.scenario, &workload),
        None,
        database,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listen on {listen}"))?;
        tokio::select! {
            () = bookinfo::serve(listener, Arc::new(app)) => {}
            () = crate::signal::shutdown_signal() => {}
        }
        Ok(())
    })
}

/// Where the demo's workloads are, however they run.
struct Layout<'a> {
    /// Where a browser reaches productpage.
    productpage: SocketAddr,
    /// Where the load connects for productpage.
    load_target: SocketAddr,
    /// The URL the load requests.
    load_url: String,
    /// The ingress gateway the load enters through, if it does.
    gateway: Option<SocketAddr>,
    /// The network namespace the load runs in (`None`: this one).
    load_netns: Option<&'a str>,
    /// Prometheus targets: each workload's agent admin address.
    admins: Vec<(&'static str, SocketAddr)>,
    /// Where a signal is seen, when it is watched from before the start
    /// (`None`: the live loop watches for it).
    interrupt: Option<&'a Interrupt>,
}

/// Ctrl-C or SIGTERM, seen by a task watching from before the pods start.
#[derive(Default)]
struct Interrupt {
    /// Set once the signal came.
    flag: AtomicBool,
    /// Notified once (the permit waits for the live loop).
    notify: tokio::sync::Notify,
}

/// How long a demo without `--duration` lets its load run: until Ctrl-C.
const UNTIL_STOPPED: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Longest a request of the load may take; past it, it counts as an error.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the demo. `services` mounts the query API and UI on the
/// collector's HTTP listener (the binary's `collector_services`).
pub fn run(
    args: &DemoArgs,
    services: impl FnOnce(&Collector) -> axum::Router,
) -> anyhow::Result<()> {
    if !(args.qps > 0.0 && args.qps.is_finite()) {
        return Err(anyhow!("--qps must be a positive rate"));
    }
    if args.pods {
        pods::check()?;
    }
    let (data_dir, _temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("tracemesh-demo-")
                .tempdir()
                .context("create a temporary data directory")?;
            (dir.path().to_owned(), Some(dir))
        }
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bookinfo")
        .enable_all()
        .build()
        .context("start the applications' runtime")?;
    let collector = start_collector(args, &data_dir, services)?;
    let mesh_dir = data_dir.join("mesh");
    let otlp = collector.addresses.otlp_grpc;
    let (outcome, stopped) = if args.pods {
        // Watched from now on: Ctrl-C while the pods start still removes them.
        let interrupt = Arc::new(Interrupt::default());
        let watcher = {
            let interrupt = interrupt.clone();
            runtime.spawn(async move {
                crate::signal::shutdown_signal().await;
                interrupt.flag.store(true, Ordering::Relaxed);
                interrupt.notify.notify_one();
            })
        };
        let started = std::fs::create_dir_all(&mesh_dir)
            .with_context(|| format!("create {}", mesh_dir.display()))
            .and_then(|()| {
                pods::PodMesh::start(&runtime, &mesh_dir, otlp, args.scenario, &interrupt.flag)
            });
        let mesh = match started {
            Ok(mesh) => mesh,
            Err(error) => {
                let _ = collector.stop();
                return Err(error);
            }
        };
        let layout = Layout {
            productpage: mesh.productpage,
            load_target: mesh.productpage_pod,
            load_url: format!("http://{}/productpage", mesh.productpage_pod),
            gateway: Some(mesh.productpage_pod),
            load_netns: Some(mesh.hub()),
            admins: mesh.admins.clone(),
            interrupt: Some(&interrupt),
        };
        let outcome = drive(args, &runtime, &data_dir, &collector.addresses, &layout);
        watcher.abort();
        (outcome, mesh.stop().and(collector.stop()))
    } else {
        let mesh = match Mesh::start(&runtime, &mesh_dir, otlp, args.scenario) {
            Ok(mesh) => mesh,
            Err(error) => {
                let _ = collector.stop();
                return Err(error);
            }
        };
        // Traffic enters through the ingress gateway, as the article
        // sends it to $GATEWAY_URL/productpage.
        let gateway = mesh.gateway_url().ok_or_else(|| anyhow!("no gateway"))?;
        let mut admins: Vec<(&'static str, SocketAddr)> = mesh
            .sidecars
            .iter()
            .map(|s| (s.workload.name, s.addresses().admin))
            .collect();
        if let Some(running) = &mesh.gateway {
            admins.push(("istio-ingressgateway", running.addresses.admin));
        }
        let layout = Layout {
            productpage: gateway,
            load_target: gateway,
            load_url: format!("http://{gateway}/productpage"),
            gateway: Some(gateway),
            load_netns: None,
            admins,
            interrupt: None,
        };
        let outcome = drive(args, &runtime, &data_dir, &collector.addresses, &layout);
        (outcome, mesh.stop().and(collector.stop()))
    };
    drop(runtime);
    outcome?;
    stopped?;
    println!("demo stopped");
    Ok(())
}

fn start_collector(
    args: &DemoArgs,
    data_dir: &Path,
    services: impl FnOnce(&Collector) -> axum::Router,
) -> anyhow::Result<Running<CollectorAddresses>> {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let config = CollectorConfig {
        data_dir: data_dir.to_owned(),
        listen: ListenConfig {
            otlp_grpc: local(0),
            otlp_http: local(0),
            zipkin: local(0),
            http: local(args.ui_port),
        },
        exporters: args.export.exporters()?,
        ..CollectorConfig::default()
    };
    config.validate()?;
    let collector = Collector::open(config).context("collector")?;
    let router = services(&collector);
    let ui_port = args.ui_port;
    roles::spawn("collector", move |stop, ready| {
        collector
            .run_until(router, stop, ready)
            .map_err(|error| match error.port_in_use() {
                Some(("http", addr)) => anyhow!(
                    "the UI port {} is in use on {} (another demo, collector or Jaeger?): \
                     stop it, or choose another port with --ui-port (0: any free port)",
                    ui_port,
                    addr.ip()
                ),
                _ => anyhow::Error::from(error),
            })
    })
}

/// Prints where everything is, drives the load with live numbers until the
/// duration is up or a signal comes, and prints the summary.
fn drive(
    args: &DemoArgs,
    runtime: &tokio::runtime::Runtime,
    data_dir: &Path,
    collector: &CollectorAddresses,
    layout: &Layout<'_>,
) -> anyhow::Result<()> {
    let productpage = layout.productpage;
    let mut targets = vec![scrape::Target {
        workload: None,
        address: collector.http,
    }];
    targets.extend(
        layout
            .admins
            .iter()
            .map(|(workload, address)| scrape::Target {
                workload: Some(workload),
                address: *address,
            }),
    );
    let prometheus_config = scrape::write(&data_dir.join("prometheus"), &targets)?;
    let ready = report::Ready {
        ui: collector.http,
        otlp_grpc: collector.otlp_grpc,
        productpage: format!("http://{productpage}/productpage"),
        gateway: layout.gateway.map(|g| format!("http://{g}")),
        data_dir,
        mesh_dir: &data_dir.join("mesh"),
        prometheus_config: &prometheus_config,
        targets: &targets,
        load: (args.connections, args.qps),
        weights: scenario::reviews_weights(args.scenario),
        scenario: args
            .scenario
            .and_then(|s| clap::ValueEnum::to_possible_value(&s))
            .map(|v| v.get_name().to_owned()),
        pods_hub: layout.load_netns,
    };
    print_now(&ready.render());

    let load_args = LoadArgs {
        url: layout.load_url.clone(),
        connections: args.connections,
        qps: args.qps,
        duration: args.duration.unwrap_or(UNTIL_STOPPED),
        requests: None,
        h2: false,
        headers: Vec::new(),
        traceparent: false,
        method: None,
        payload: None,
        payload_size: None,
        connect_to: Some(layout.load_target.to_string()),
        timeout: LOAD_TIMEOUT,
        json: false,
        samples_out: None,
    };
    let control = Arc::new(Control::default());
    let load_netns = layout.load_netns.map(str::to_owned);
    let load = {
        let control = control.clone();
        std::thread::Builder::new()
            .name("load".into())
            .spawn(move || -> anyhow::Result<load::report::Report> {
                // In pods, the load is a client in the hub, outside the mesh.
                if let Some(netns) = &load_netns {
                    crate::pods::enter_netns(netns)?;
                }
                Ok(load::run_with(&load_args, control)?)
            })
            .context("start the load generator")?
    };
    let started = Instant::now();
    runtime.block_on(watch_live(args, started, &control, &load, layout.interrupt));
    control.stop();
    let report = load
        .join()
        .map_err(|_| anyhow!("the load generator panicked"))??;
    print_now(&report::summary(&report));
    Ok(())
}

/// Prints a line of live numbers every `--report-every` until the
/// duration is up, a signal comes, or the load generator ends.
async fn watch_live(
    args: &DemoArgs,
    started: Instant,
    control: &Control,
    load: &std::thread::JoinHandle<anyhow::Result<load::report::Report>>,
    interrupt: Option<&Interrupt>,
) {
    let every = args.report_every;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = async {
        match args.duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let signal = async {
        match interrupt {
            Some(interrupt) => interrupt.notify.notified().await,
            None => crate::signal::shutdown_signal().await,
        }
    };
    tokio::pin!(signal);
    let mut last = started;
    loop {
        tokio::select! {
            () = &mut deadline => break,
            () = &mut signal => {
                print_now("stopping\n");
                break;
            }
            _ = ticks.tick() => {
                let now = Instant::now();
                let window = control.take_window();
                print_now(&format!("{}\n", report::live_line(now - started, now - last, &window)));
                last = now;
                if load.is_finished() {
                    break;
                }
            }
        }
    }
}

fn print_now(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
