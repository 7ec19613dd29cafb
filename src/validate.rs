//! `tracemesh validate`: checks Istio resources (and agent configs) in
//! files, directories and standard input without starting anything, as
//! `istioctl validate -f` does. Exit status 0 valid, 1 invalid, 2 when an
//! input could not be read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use tracemesh_agent::compile::check_text;
use tracemesh_agent::config::diagnostics::{Diagnostic, Diagnostics, Location};
use tracemesh_agent::config::source;

/// File extensions read when walking a directory (as `istioctl validate`).
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

#[derive(Args)]
pub struct ValidateArgs {
    /// Files, directories (read recursively: *.yaml, *.yml, *.json) or `-`
    /// for standard input. YAML or JSON, several documents per file,
    /// Kubernetes `List`s. A file with an `Agent` document is checked as
    /// that agent's config.
    #[arg(value_name = "FILE|DIR|-")]
    paths: Vec<PathBuf>,
    /// The same, as `istioctl validate -f` spells it (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    filenames: Vec<PathBuf>,
    /// `text` (one line per finding, as the agent logs them) or `json`
    /// (every finding with file, document, line and field, for scripts and CI).
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// One input's outcome.
struct Report {
    file: Arc<str>,
    status: Status,
    agent: bool,
    gateway: bool,
    diagnostics: Diagnostics,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Valid,
    Invalid,
    Unreadable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Invalid => "invalid",
            Status::Unreadable => "unreadable",
        }
    }
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    let inputs: Vec<PathBuf> = args.paths.iter().chain(&args.filenames).cloned().collect();
    if inputs.is_empty() {
        eprintln!("error: name at least one FILE, DIR or `-` (standard input)");
        return ExitCode::from(2);
    }
    let mut reports = Vec::new();
    for input in &inputs {
        collect(input, &mut reports);
    }
    match args.output {
        Output::Text => print_text(&reports),
        Output::Json => print_json(&reports),
    }
    match reports.iter().map(|r| r.status).max() {
        Some(Status::Unreadable) => ExitCode::from(2),
        Some(Status::Invalid) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}

/// Checks `input`: standard input, a file, or every config file under a directory.
fn collect(input: &Path, reports: &mut Vec<Report>) {
    if input == Path::new("-") {
        let read = source::read_text_bounded(std::io::stdin());
        reports.push(check(Arc::from("<stdin>"), read));
        return;
    }
    if input.is_dir() {
        let mut files = Vec::new();
        if let Err(err) = walk(input, &mut files) {
            reports.push(unreadable(Arc::from(input.display().to_string()), &err));
            return;
        }
        if files.is_empty() {
            let err = std::io::Error::other("no .yaml, .yml or .json files in this directory");
            reports.push(unreadable(Arc::from(input.display().to_string()), &err));
        }
        for file in files {
            let name = Arc::from(file.display().to_string());
            reports.push(check(name, read_text(&file)));
        }
        return;
    }
    let name = Arc::from(input.display().to_string());
    reports.push(check(name, read_text(input)));
}

/// A config file's text, at most [`source::MAX_CONFIG_BYTES`].
fn read_text(path: &Path) -> std::io::Result<String> {
    source::read_text_bounded(std::fs::File::open(path)?)
}

/// Config files under `dir`, sorted, hidden entries skipped.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn check(file: Arc<str>, text: std::io::Result<String>) -> Report {
    match text {
        Ok(text) => {
            let checked = check_text(&file, &text);
            let status = if checked.diagnostics.has_errors() {
                Status::Invalid
            } else {
                Status::Valid
            };
            Report {
                file,
                status,
                agent: checked.agent,
                gateway: checked.gateway,
                diagnostics: checked.diagnostics,
            }
        }
        Err(err) => unreadable(file, &err),
    }
}

fn unreadable(file: Arc<str>, err: &std::io::Error) -> Report {
    let mut diagnostics = Diagnostics::default();
    diagnostics.error(&Location::file(&file), None, format!("cannot read: {err}"));
    Report {
        file,
        status: Status::Unreadable,
        agent: false,
        gateway: false,
        diagnostics,
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn print_text(reports: &[Report]) {
    for report in reports {
        for diagnostic in report.diagnostics.iter() {
            println!("{diagnostic}");
        }
        let errors = report.diagnostics.errors().count();
        let warnings = report.diagnostics.warnings().count();
        match report.status {
            Status::Valid => println!("{}: valid ({})", report.file, plural(warnings, "warning")),
            Status::Invalid => println!("{}: invalid ({})", report.file, plural(errors, "error")),
            Status::Unreadable => println!("{}: unreadable", report.file),
        }
    }
    if reports.len() > 1 {
        let count = |s: Status| reports.iter().filter(|r| r.status == s).count();
        let errors: usize = reports.iter().map(|r| r.diagnostics.errors().count()).sum();
        let warnings: usize = reports
            .iter()
            .map(|r| r.diagnostics.warnings().count())
            .sum();
        println!(
            "{}: {} valid, {} invalid, {} unreadable ({}, {})",
            plural(reports.len(), "file"),
            count(Status::Valid),
            count(Status::Invalid),
            count(Status::Unreadable),
            plural(errors, "error"),
            plural(warnings, "warning"),
        );
    }
}

fn print_json(reports: &[Report]) {
    let files: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "file": &*r.file,
                "status": r.status.as_str(),
                "agent": r.agent,
                "gateway": r.gateway,
                "errors": r.diagnostics.errors().count(),
                "warnings": r.diagnostics.warnings().count(),
            })
        })
        .collect();
    let diagnostics: Vec<&Diagnostic> = reports.iter().flat_map(|r| r.diagnostics.iter()).collect();
    let out = serde_json::json!({
        "valid": reports.iter().all(|r| r.status == Status::Valid),
        "files": files,
        "diagnostics": diagnostics,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}
