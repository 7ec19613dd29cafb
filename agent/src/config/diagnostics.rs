//! Errors and warnings found while loading and compiling a config file, each
//! naming the file, the document and the field, so an operator can fix them
//! without guessing.

use std::fmt;
use std::sync::Arc;

/// Where in a config file something was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: Arc<str>,
    /// 1-based index of the document in the file, when known.
    pub document: Option<usize>,
    /// 1-based line of the document's start (or of the error), when known.
    pub line: Option<usize>,
    /// `Kind namespace/name` of the document, when known.
    pub resource: Option<String>,
}

impl Location {
    /// A location naming only the file.
    pub fn file(file: &Arc<str>) -> Self {
        Self {
            file: file.clone(),
            document: None,
            line: None,
            resource: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
            match (&self.resource, self.line) {
                (Some(res), Some(line)) => write!(f, " ({res}, line {line})")?,
                (Some(res), None) => write!(f, " ({res})")?,
                (None, Some(line)) => write!(f, " (line {line})")?,
                (None, None) => {}
            }
        } else if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        Ok(())
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Accepted, but the operator should know (skipped kinds, fields not enforced).
    Warning,
    /// The file is rejected.
    Error,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// File and document.
    pub location: Location,
    /// Path of the field inside the document (`spec.http[0].route[1].weight`).
    pub field: Option<String>,
    /// What is wrong, in the operator's words.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: ", self.location)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every finding of one load, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records an error.
    pub fn error(
        &mut self,
        location: &Location,
        field: impl Into<Option<String>>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, location, field.into(), message.into());
    }

    /// Records a warning.
    pub fn warn(
        &mut self,
        location: &Location,
        field: impl Into<Option<String>>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Warning, location, field.into(), message.into());
    }

    fn push(
        &mut self,
        severity: Severity,
        location: &Location,
        field: Option<String>,
        message: String,
    ) {
        self.items.push(Diagnostic {
            severity,
            location: location.clone(),
            field,
            message,
        });
    }

    /// Whether any error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    /// Everything, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
}

/// A config that could not be used: every error found, plus the warnings.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render_rejection(.0))]
pub struct ConfigRejected(pub Diagnostics);

fn render_rejection(diags: &Diagnostics) -> String {
    let count = diags.errors().count();
    let mut out = format!(
        "config rejected ({count} error{})",
        if count == 1 { "" } else { "s" }
    );
    for d in diags.errors() {
        out.push_str("\n  ");
        out.push_str(&d.to_string());
    }
    out
}
