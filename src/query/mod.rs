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
    /// Traces with a span matching the filter, newest first.
    Traces {
        #[command(flatten)]
        filter: Filter,
        /// Only spans at least this long (`100ms`, `1.5s`).
        #[arg(long)]
        min_duration: Option<String>,
        /// Only spans at most this long.
        #[arg(long)]
        max_duration: Option<String>,
        /// Only spans with status ERROR.
        #[arg(long)]
        errors: bool,
        /// How far back (`15m`, `2h`).
        #[arg(long, default_value = "15m")]
        since: String,
        /// Most traces listed.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Latency quantiles (p50, p75, p90, p95, p99, max) of a service's spans.
    Latency {
        #[command(flatten)]
        filter: Filter,
        /// How far back.
        #[arg(long, default_value = "1h")]
        since: String,
    },
    /// A service's errors by HTTP status code, response flag and operation.
    Errors {
        #[command(flatten)]
        filter: Filter,
        /// How far back.
        #[arg(long, default_value = "1h")]
        since: String,
    },
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
    /// `key=value` on a span or resource attribute (repeatable).
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
            min_duration,
            max_duration,
            errors,
            since,
            limit,
        } => {
            let mut params = filter.params();
            params.push(("since", since.clone()));
            params.push(("limit", limit.to_string()));
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
        QueryCommand::Latency { filter, since } => {
            let mut params = filter.params();
            params.push(("since", since.clone()));
            (path("/api/v1/latency", &params), table::latency)
        }
        QueryCommand::Errors { filter, since } => {
            let mut params = filter.params();
            params.push(("since", since.clone()));
            (path("/api/v1/errors", &params), table::errors)
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
