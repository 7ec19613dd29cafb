//! The `tracemesh` binary: one executable for every runtime role.

mod alloc;
mod demo;
mod load;

use std::path::PathBuf;
use std::process::ExitCode;

mod ca;
mod image;
mod iptables;
mod pods;
mod query;
mod signal;
mod validate;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc: the collector's ingest path allocates per attribute (decode,
/// index documents) and the agent allocates spans on its workers that are
/// freed on the export thread; glibc's malloc took a fifth of the
/// collector's CPU.
#[global_allocator]
static ALLOCATOR: alloc::MiMalloc = alloc::MiMalloc;

/// An observability-first service mesh: sidecar agent, trace collector and
/// query service in one binary.
#[derive(Parser)]
#[command(name = "tracemesh", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sidecar agent: proxy the workload's traffic by Istio's resources,
    /// report spans over OTLP and Istio metrics on the admin port.
    Agent {
        /// The agent's config: an `Agent` document plus Istio resources.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an ingress gateway: listen on the ports Istio `Gateway`s and
    /// Kubernetes Gateway API `Gateway`s name, and route what enters to the
    /// mesh by the VirtualServices and routes bound to them, with the
    /// sidecar's request path (spans, metrics, access log, admin API).
    Gateway {
        /// The gateway's config: an `IngressGateway` document plus the
        /// resources it serves.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make, serve and use the mesh's certificate authority (workload
    /// identities for mTLS).
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// Run the trace collector: OTLP (gRPC, HTTP) and Zipkin receivers, a
    /// write-ahead log, the tantivy span store, span-derived metrics and
    /// exporters. Prints one `collector ready` line with the bound addresses.
    Collector(Box<tracemesh_collector::CollectorArgs>),
    /// Run the whole mesh on this machine: the collector with its UI,
    /// Istio's Bookinfo behind one sidecar per workload, Bookinfo's
    /// routing, DestinationRule and rate limit, and load with live numbers
    /// until Ctrl-C (or --duration).
    Demo(Box<demo::DemoArgs>),
    /// One Bookinfo application, as `demo --pods` runs it in its pod.
    #[command(hide = true)]
    DemoApp(demo::AppArgs),
    /// Redirect this network namespace's TCP to its agent (run as root in
    /// the pod, as Istio's istio-iptables): outbound to --outbound-capture-port,
    /// inbound to --inbound-capture-port, the agent's own uid/gid left alone.
    /// `--cleanup` removes exactly what it installed; `--dry-run` prints it.
    Iptables(iptables::IptablesArgs),
    /// Load-test an HTTP endpoint the way `fortio load` does: `-c` connections
    /// at `--qps` for `-t` (or `-n` requests); reports rate, codes and latency
    /// percentiles (coordinated omission corrected at a fixed rate).
    Load(load::LoadArgs),
    /// Ask the query service about traces, latency and errors (tables, or
    /// `--json`).
    Query(query::QueryArgs),
    /// Check Istio resources and agent configs without starting anything,
    /// as `istioctl validate -f` does: files, directories, `-` for stdin.
    /// Exit status 0 valid, 1 invalid, 2 unreadable.
    Validate(validate::ValidateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(load::args::fortio_spellings(std::env::args_os()));
    init_logging(&cli.command);
    match run(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Agent { config } => {
            let stop = image::release_start_up_pages_then(signal::shutdown_signal());
            tracemesh_agent::run_until(&config, stop, |_| {})
                .with_context(|| format!("agent {}", config.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway { config } => {
            let stop = image::release_start_up_pages_then(signal::shutdown_signal());
            tracemesh_agent::run_gateway_until(&config, stop, |_| {})
                .with_context(|| format!("gateway {}", config.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Collector(args) => {
            let config = args.resolve()?;
            let collector = tracemesh_collector::Collector::open(config).context("collector")?;
            let services = collector_services(&collector);
            collector
                .run_until(services, signal::shutdown_signal(), |_| {})
                .map_err(|error| match error.port_in_use() {
                    Some((listener, addr)) => anyhow::anyhow!(
                        "{addr} is in use (another collector, or Jaeger?): stop it, or \
                         choose another address with --{}",
                        listener.replace('_', "-")
                    ),
                    None => anyhow::Error::from(error),
                })
                .context("collector")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            demo::run(&args, collector_services)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoApp(args) => {
            demo::run_app(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => Ok(validate::run(&args)),
        Command::Iptables(args) => {
            iptables::run(&args).context("tracemesh iptables")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Query(args) => {
            query::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca { command } => {
            ca::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => {
            let report = load::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The HTTP services the collector serves beside its own `/metrics` on its
/// `--http` listener: the query API and UI. Every way of starting a
/// collector (the `collector` command, the demo) mounts them through here.
fn collector_services(collector: &tracemesh_collector::Collector) -> axum::Router {
    match tracemesh_query::router(collector.reader(), collector.registry()) {
        Ok(router) => router,
        Err(error) => {
            tracing::error!(%error, "query service not mounted: its metrics could not be registered");
            axum::Router::new()
        }
    }
}

/// Logs to stderr, quiet by default (start-up, warnings, errors);
/// `RUST_LOG` overrides. The demo runs eight roles in one process and
/// prints its own report on stdout, so it logs warnings and errors only.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Demo(_) => "warn,opentelemetry_sdk=error",
        _ => {
            "warn,tracemesh=info,tracemesh_agent=info,tracemesh_collector=info,tracemesh_ca=info,tracemesh_query=info,opentelemetry_sdk=error"
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
