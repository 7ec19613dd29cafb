//! Errors and warnings found while loading and compiling a config file, each
//! naming the file, the document and the field, so an operator can fix them
//! without guessing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use super::file_stamp::FileStamp;
use super::source::Lines;

/// Where in a config file something was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: Arc<str>,
    /// 1-based index of the document in the file, when known.
    pub document: Option<usize>,
    /// Index of the resource in a Kubernetes `List` document's `items`.
    pub item: Option<usize>,
    /// 1-based line of the resource's start or, in a finding, of the field
    /// it names, when known.
    pub line: Option<usize>,
    /// `Kind namespace/name` of the document, when known.
    pub resource: Option<String>,
    /// Where each field of the resource is, for findings that name one.
    pub lines: Lines,
}

impl Location {
    /// A location naming only the file.
    pub fn file(file: &Arc<str>) -> Self {
        Self {
            file: file.clone(),
            document: None,
            item: None,
            line: None,
            resource: None,
            lines: Lines::default(),
        }
    }

    /// This location, at the line of `field` when the file says where it is.
    fn at(&self, field: Option<&str>) -> Self {
        let line = self.lines.of(field).or(self.line);
        Self {
            line,
            lines: Lines::default(),
            ..self.clone()
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
            if let Some(item) = self.item {
                write!(f, ", items[{item}]")?;
            }
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
        write!(f, "{}: {}: ", self.severity.as_str(), self.location)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// The JSON form `tracemesh validate -o json` prints: `severity`, `file`,
/// `document`, `item`, `line`, `resource`, `field`, `message` (absent parts
/// are null), with the same message text as the plain form.
impl Serialize for Diagnostic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let loc = &self.location;
        let mut out = serializer.serialize_struct("Diagnostic", 8)?;
        out.serialize_field("severity", self.severity.as_str())?;
        out.serialize_field("file", &*loc.file)?;
        out.serialize_field("document", &loc.document)?;
        out.serialize_field("item", &loc.item)?;
        out.serialize_field("line", &loc.line)?;
        out.serialize_field("resource", &loc.resource)?;
        out.serialize_field("field", &self.field)?;
        out.serialize_field("message", &self.message)?;
        out.end()
    }
}

/// Every finding of one load, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    /// Hashes of the findings so far: one finding is said once, even when
    /// two compile steps reach it (a VirtualService bound to two gateway
    /// ports).
    seen: std::collections::HashSet<u64>,
    /// The files the load read besides its own (TLS certificates, keys and
    /// CA bundles), each with its stamp as looked at before the first read.
    files: std::collections::BTreeMap<PathBuf, Option<FileStamp>>,
}

impl Diagnostics {
    /// The load is about to read the file at `path` (a certificate, key or
    /// CA bundle it names): its stamp is taken now, before the read, so a
    /// change made after it is seen by the watcher
    /// ([`Self::files`]).
    pub fn reading(&mut self, path: &Path) {
        self.files
            .entry(path.to_path_buf())
            .or_insert_with(|| FileStamp::at(path));
    }

    /// The files the load read besides its own, each with its stamp from
    /// before the read (`None`: it could not be looked at), in path order.
    pub fn files(&self) -> Vec<(PathBuf, Option<FileStamp>)> {
        self.files.iter().map(|(p, s)| (p.clone(), *s)).collect()
    }

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
        let key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            (
                severity as u8,
                &*location.file,
                location.document,
                location.item,
            )
                .hash(&mut hasher);
            (&field, &message).hash(&mut hasher);
            hasher.finish()
        };
        if !self.seen.insert(key) {
            return;
        }
        self.items.push(Diagnostic {
            severity,
            location: location.at(field.as_deref()),
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

    /// Whether an error names a document of `kind` (its location's
    /// `Kind namespace/name`): one that was found but could not be read.
    pub fn has_errors_in_kind(&self, kind: &str) -> bool {
        self.errors().any(|d| {
            d.location
                .resource
                .as_deref()
                .and_then(|r| r.strip_prefix(kind))
                .is_some_and(|rest| rest.starts_with(' '))
        })
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

    /// How many findings there are so far (errors and warnings).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether an error was recorded after the first `mark` findings.
    pub fn errors_since(&self, mark: usize) -> bool {
        self.items[mark.min(self.items.len())..]
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// Appends every finding of `other`.
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_reached_twice_is_said_once() {
        let file: Arc<str> = Arc::from("mesh.yaml");
        let location = Location::file(&file);
        let mut diags = Diagnostics::default();
        diags.warn(&location, Some("spec.hosts".into()), "no ServiceEntry");
        diags.warn(&location, Some("spec.hosts".into()), "no ServiceEntry");
        diags.warn(&location, Some("spec.http".into()), "no ServiceEntry");
        diags.error(&location, Some("spec.hosts".into()), "no ServiceEntry");
        assert_eq!(diags.warnings().count(), 2);
        assert_eq!(diags.errors().count(), 1);
    }
}
