//! Splits a multi-document YAML file and turns each document into a typed
//! resource, or a diagnostic naming the document and the field.

use std::sync::Arc;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_yaml_ng::Value;

use super::agent::AgentSpec;
use super::destination_rule::DestinationRuleSpec;
use super::diagnostics::{Diagnostics, Location};
use super::meta::ObjectMeta;
use super::rate_limit::RateLimitPolicySpec;
use super::security::{AuthorizationPolicySpec, PeerAuthenticationSpec};
use super::service_entry::ServiceEntrySpec;
use super::virtual_service::VirtualServiceSpec;

/// One typed document, with where it came from.
#[derive(Debug, Clone)]
pub struct Document<S> {
    /// File, document index, line and `Kind ns/name`.
    pub location: Location,
    /// The API version it was written in.
    pub api_version: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec, as written.
    pub spec: S,
}

/// A document of a kind the agent uses. Parsed once per load, so the size
/// difference between variants costs nothing worth boxing for.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    /// The bootstrap.
    Agent(Document<AgentSpec>),
    /// A registry entry.
    ServiceEntry(Document<ServiceEntrySpec>),
    /// Routing rules.
    VirtualService(Document<VirtualServiceSpec>),
    /// Destination policies.
    DestinationRule(Document<DestinationRuleSpec>),
    /// Access control.
    AuthorizationPolicy(Document<AuthorizationPolicySpec>),
    /// mTLS mode.
    PeerAuthentication(Document<PeerAuthenticationSpec>),
    /// Rate limits.
    RateLimitPolicy(Document<RateLimitPolicySpec>),
}

/// The on-disk shape of every resource: unknown top-level fields are errors,
/// `status` (present in `kubectl get -o yaml` output) is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<S> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: S,
    #[serde(default, rename = "status")]
    _status: Option<IgnoredAny>,
}

const NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// Parses every document of `text`; problems go to `diags`.
pub fn parse_documents(file: &Arc<str>, text: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let mut resources = Vec::new();
    for (index, segment) in split_documents(text).into_iter().enumerate() {
        let location = Location {
            file: file.clone(),
            document: Some(index + 1),
            line: Some(segment.first_line),
            resource: None,
        };
        if let Some(resource) = parse_one(segment, location, diags) {
            resources.push(resource);
        }
    }
    resources
}

fn parse_one(
    segment: Segment<'_>,
    mut location: Location,
    diags: &mut Diagnostics,
) -> Option<Resource> {
    let value: Value = match serde_yaml_ng::from_str(segment.text) {
        Ok(value) => value,
        Err(err) => {
            if let Some(at) = err.location() {
                location.line = Some(segment.first_line + at.line() - 1);
            }
            diags.error(&location, None, format!("invalid YAML: {err}"));
            return None;
        }
    };
    if value.is_null() {
        return None; // an empty document, e.g. after a trailing `---`
    }
    let api_version = string_field(&value, "apiVersion");
    let kind = string_field(&value, "kind");
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        diags.error(
            &location,
            None,
            "a document needs both `apiVersion` and `kind`",
        );
        return None;
    };
    location.resource = Some(describe(&value, &kind));
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let versions: &[&str] = match (group, kind.as_str()) {
        ("tracemesh.io", "Agent" | "RateLimitPolicy") => &["v1"],
        ("networking.istio.io", "ServiceEntry" | "VirtualService" | "DestinationRule") => {
            &NETWORKING_VERSIONS
        }
        ("security.istio.io", "AuthorizationPolicy" | "PeerAuthentication") => &SECURITY_VERSIONS,
        _ => {
            diags.warn(
                &location,
                None,
                format!("{api_version} {kind} is not used by the agent; skipped"),
            );
            return None;
        }
    };
    if !versions.contains(&version) {
        let msg = format!(
            "{kind} is not served in version {version} of {group} (known: {})",
            versions.join(", ")
        );
        diags.error(&location, Some("apiVersion".to_owned()), msg);
        return None;
    }
    let (loc, api) = (&location, api_version.as_str());
    match kind.as_str() {
        "Agent" => typed(value, loc, api, diags).map(Resource::Agent),
        "ServiceEntry" => typed(value, loc, api, diags).map(Resource::ServiceEntry),
        "VirtualService" => typed(value, loc, api, diags).map(Resource::VirtualService),
        "DestinationRule" => typed(value, loc, api, diags).map(Resource::DestinationRule),
        "AuthorizationPolicy" => typed(value, loc, api, diags).map(Resource::AuthorizationPolicy),
        "RateLimitPolicy" => typed(value, loc, api, diags).map(Resource::RateLimitPolicy),
        _ => typed(value, loc, api, diags).map(Resource::PeerAuthentication),
    }
}

fn typed<S: DeserializeOwned>(
    value: Value,
    location: &Location,
    api_version: &str,
    diags: &mut Diagnostics,
) -> Option<Document<S>> {
    match serde_path_to_error::deserialize::<_, Envelope<S>>(value) {
        Ok(envelope) => Some(Document {
            location: location.clone(),
            api_version: api_version.to_owned(),
            metadata: envelope.metadata,
            spec: envelope.spec,
        }),
        Err(err) => {
            let path = err.path().to_string();
            let field = (path != ".").then_some(path);
            diags.error(location, field, err.into_inner().to_string());
            None
        }
    }
}

fn string_field(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// `Kind namespace/name` (or `Kind name`) for messages.
fn describe(value: &Value, kind: &str) -> String {
    let meta = value.get("metadata");
    let field = |k| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_owned(),
    }
}

/// One document's text and the line it starts on.
struct Segment<'a> {
    text: &'a str,
    first_line: usize,
}

/// Splits at `---` lines (YAML document markers at column 0), keeping line
/// numbers so errors point into the original file.
fn split_documents(text: &str) -> Vec<Segment<'_>> {
    let mut segments = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "...";
        if is_marker {
            segments.push(Segment {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    segments.push(Segment {
        text: &text[start..],
        first_line: start_line,
    });
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Vec<Resource>, Diagnostics) {
        let mut diags = Diagnostics::default();
        let file: Arc<str> = Arc::from("mesh.yaml");
        (parse_documents(&file, text, &mut diags), diags)
    }

    #[test]
    fn splits_and_numbers_documents() {
        let (docs, diags) = load(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a]}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
        );
        assert_eq!(docs.len(), 1);
        let warning = diags
            .warnings()
            .next()
            .expect("a warning for the Deployment");
        assert_eq!(warning.location.document, Some(4));
        assert!(
            warning
                .to_string()
                .contains("apps/v1 Deployment is not used"),
            "{warning}"
        );
    }

    #[test]
    fn unknown_field_names_its_path() {
        let (_, diags) = load(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {hots: r}\n",
        );
        let error = diags.errors().next().expect("an error");
        let text = error.to_string();
        assert!(text.contains("VirtualService default/r"), "{text}");
        assert_eq!(
            error.field.as_deref(),
            Some("spec.http[0].route[0].destination.hots")
        );
        assert!(text.contains("unknown field `hots`"), "{text}");
    }

    #[test]
    fn missing_kind_is_an_error() {
        let (_, diags) = load("apiVersion: v1\nmetadata: {name: x}\n");
        assert!(diags.has_errors());
    }

    #[test]
    fn unserved_version_is_an_error() {
        let (_, diags) =
            load("apiVersion: networking.istio.io/v2\nkind: VirtualService\nspec: {}\n");
        let error = diags.errors().next().expect("an error");
        assert_eq!(error.field.as_deref(), Some("apiVersion"));
    }

    #[test]
    fn yaml_syntax_error_points_at_the_line() {
        let (_, diags) = load("apiVersion: v1\nkind: Service\n---\nkind: [unclosed\n");
        let error = diags.errors().next().expect("an error");
        assert_eq!(error.location.document, Some(2));
        assert!(error.location.line.is_some_and(|l| l >= 4), "{error}");
    }
}
