//! `tracemesh query`: asks a running query service (its HTTP API) about
//! traces, latency and errors, and prints tables, or the API's JSON with
//! `--json`.

mod client;
mod table;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

/// Where to ask and how to print.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The query service (a collector's `--http` address).
    #[arg(
        long,
        env = "TRACEMESH_QUERY_SERVER",
        default_value = "http://127.0.0.1:16686",
        global = true
    )]
    pub server: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub command: QueryCommand,
}

/// The questions.
#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// One trace: its spans as a tree with start offsets and durations.
    Trace {
        /// The trace id (hex).
        id: String,
    },
    /// Traces with a span matching the filter, newest first or `--sort`ed.
    Traces {
        #[command(flatten)]
        filter: Filter,
        /// Only spans of this kind (`server`, `client`, `inbound`,
        /// `outbound`, ...); any kind when absent.
        #[arg(long)]
        kind: Option<String>,
        /// Only spans at least this long (`100ms`, `1.5s`).
        #[arg(long)]
        min_duration: Option<String>,
        /// Only spans at most this long (`0`: no bound).
        #[arg(long)]
        max_duration: Option<String>,
        /// Only failed spans (5xx or a local failure).
        #[arg(long)]
        errors: bool,
        /// Order: newest, longest, shortest, most_spans, most_errors.
        #[arg(long, default_value = "newest")]
        sort: String,
        /// How far back (`15m`, `2h`).
        #[arg(long, default_value = "15m")]
        since: String,
        /// Most traces listed.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A service's request count, rate and latency quantiles (p50, p75,
    /// p90, p95, p99, max): the requests it served, unless `--kind` says
    /// otherwise.
    Latency {
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        view: ViewArgs,
    },
    /// A service's errors (5xx and local failures) and 4xx answers, by HTTP
    /// status code, response flag and operation: of the requests it served,
    /// unless `--kind` says otherwise.
    Errors {
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        view: ViewArgs,
    },
    /// Why is it slower? The hops that added most to the critical path:
    /// of one trace against the typical trace of its operation (`--trace`),
    /// or of a service's requests now against a baseline window.
    Explain {
        /// The trace to explain (against others of its root operation in `--since`).
        #[arg(long, conflicts_with_all = ["service", "operation", "baseline_since"])]
        trace: Option<String>,
        /// The service whose requests to compare.
        #[arg(long, required_unless_present = "trace")]
        service: Option<String>,
        /// Only requests of this operation.
        #[arg(long)]
        operation: Option<String>,
        /// The current window: how far back (`5m`).
        #[arg(long, default_value = "15m")]
        since: String,
        /// The baseline window starts this far back (`1h`).
        #[arg(long, required_unless_present = "trace")]
        baseline_since: Option<String>,
        /// ... and ends this far back (default: now).
        #[arg(long)]
        baseline_until: Option<String>,
    },
}

/// Which spans a statistic counts, and over what time.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// What to count: `inbound` (the requests the service served, its
    /// SERVER spans; the default), `outbound` (the calls it made, retry
    /// attempts left out), a span kind (`server`, `client`, `internal`,
    /// `producer`, `consumer`), or `all`.
    #[arg(long, default_value = "inbound")]
    pub kind: String,
    /// How far back (`15m`, `1h`).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// From this time instead (RFC 3339, or µs since the epoch).
    #[arg(long)]
    pub start: Option<String>,
    /// Up to this time (RFC 3339, or µs since the epoch; default now).
    #[arg(long)]
    pub end: Option<String>,
}

impl ViewArgs {
    fn params(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut params = vec![("kind", self.kind.clone()), ("since", self.since.clone())];
        for (name, value) in [("start", &self.start), ("end", &self.end)] {
            if let Some(value) = value {
                params.push((name, micros(value)?.to_string()));
            }
        }
        Ok(params)
    }
}

/// A time as µs since the epoch: given so, or as RFC 3339.
fn micros(text: &str) -> anyhow::Result<u64> {
    if let Ok(us) = text.parse::<u64>() {
        return Ok(us);
    }
    tracemesh_query::timefmt::parse_rfc3339(text)
        .map(|ns| ns / 1000)
        .map_err(|e| anyhow::anyhow!(e))
}

/// Which spans.
#[derive(Debug, Args)]
pub struct Filter {
    /// The service (`service.name`).
    #[arg(long)]
    pub service: String,
    /// The operation (span name).
    #[arg(long)]
    pub operation: Option<String>,
    /// `key=value` on a span or resource attribute (repeatable); the names
    /// Istio, Envoy and older OpenTelemetry use work too (`http.status_code`,
    /// `response_flags`), and so do `span.kind`, `otel.status_code`, `error`.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

impl Filter {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut params = vec![("service", self.service.clone())];
        if let Some(operation) = &self.operation {
            params.push(("operation", operation.clone()));
        }
        for tag in &self.tags {
            params.push(("tag", tag.clone()));
        }
        params
    }
}

fn path(base: &str, params: &[(&str, String)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in params {
        query.append_pair(key, value);
    }
    format!("{base}?{}", query.finish())
}

/// Runs a query command and prints its answer.
pub fn run(args: &QueryArgs) -> anyhow::Result<()> {
    let (path, render): (String, fn(&Value) -> String) = match &args.command {
        QueryCommand::Trace { id } => (format!("/api/traces/{id}"), table::trace),
        QueryCommand::Traces {
            filter,
            kind,
            min_duration,
            max_duration,
            errors,
            sort,
            since,
            limit,
        } => {
            let mut params = filter.params();
            params.push(("since", since.clone()));
            params.push(("limit", limit.to_string()));
            params.push(("sort", sort.clone()));
            if let Some(kind) = kind {
                params.push(("kind", kind.clone()));
            }
            if let Some(d) = min_duration {
                params.push(("min_duration", d.clone()));
            }
            if let Some(d) = max_duration {
                params.push(("max_duration", d.clone()));
            }
            if *errors {
                params.push(("errors", "true".into()));
            }
            (path("/api/v1/traces", &params), table::traces)
        }
        QueryCommand::Latency { filter, view } => {
            let mut params = filter.params();
            params.extend(view.params()?);
            (path("/api/v1/latency", &params), table::latency)
        }
        QueryCommand::Errors { filter, view } => {
            let mut params = filter.params();
            params.extend(view.params()?);
            (path("/api/v1/errors", &params), table::errors)
        }
        QueryCommand::Explain {
            trace,
            service,
            operation,
            since,
            baseline_since,
            baseline_until,
        } => {
            let mut params = vec![("since", since.clone())];
            let optional = [
                ("trace", trace),
                ("service", service),
                ("operation", operation),
                ("baseline_since", baseline_since),
                ("baseline_until", baseline_until),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    params.push((name, value.clone()));
                }
            }
            (path("/api/v1/explain", &params), table::explain)
        }
    };
    let body = client::get_json(&args.server, &path)
        .with_context(|| format!("GET {}{path}", args.server.trim_end_matches('/')))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", render(&body));
    }
    Ok(())
}
