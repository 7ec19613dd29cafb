//! Istio's HTTP metadata exchange: the caller's sidecar announces its workload
//! in `x-envoy-peer-metadata` (base64 of a protobuf `Struct`), the callee's
//! sidecar reads and strips it and answers with its own on the response. This
//! is how both sides fill `source_*` and `destination_*` metric labels, and it
//! interoperates with Istio's own sidecars.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use http::HeaderValue;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};

use crate::model::peer::PeerInfo;

/// Header carrying the encoded metadata.
pub const PEER_METADATA: http::HeaderName = http::HeaderName::from_static("x-envoy-peer-metadata");
/// Header carrying the peer's node id.
pub const PEER_METADATA_ID: http::HeaderName =
    http::HeaderName::from_static("x-envoy-peer-metadata-id");

const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

/// The workload facts that go into the header.
#[derive(Debug, Clone, Copy)]
pub struct LocalWorkload<'a> {
    /// Workload name (also used as the pod name).
    pub workload: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Cluster id.
    pub cluster_id: &'a str,
    /// All labels; canonical names are added when absent.
    pub labels: &'a BTreeMap<String, String>,
    /// Canonical service.
    pub canonical_service: &'a str,
    /// Canonical revision.
    pub canonical_revision: &'a str,
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// Encodes the header value announcing `local`: base64 (padded) of the
/// deterministic serialization of a `Struct` (prost writes map entries in
/// key order, like protobuf's deterministic mode).
pub fn encode(local: LocalWorkload<'_>) -> HeaderValue {
    let mut labels: BTreeMap<String, Value> = local
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), string_value(v)))
        .collect();
    labels
        .entry(CANONICAL_NAME.to_owned())
        .or_insert_with(|| string_value(local.canonical_service));
    labels
        .entry(CANONICAL_REVISION.to_owned())
        .or_insert_with(|| string_value(local.canonical_revision));
    let mut fields = BTreeMap::new();
    fields.insert("NAME".to_owned(), string_value(local.workload));
    fields.insert("NAMESPACE".to_owned(), string_value(local.namespace));
    fields.insert("WORKLOAD_NAME".to_owned(), string_value(local.workload));
    fields.insert("CLUSTER_ID".to_owned(), string_value(local.cluster_id));
    fields.insert(
        "LABELS".to_owned(),
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: labels.into_iter().collect(),
            })),
        },
    );
    let bytes = Struct {
        fields: fields.into_iter().collect(),
    }
    .encode_to_vec();
    HeaderValue::try_from(STANDARD.encode(bytes)).expect("base64 is a valid header value")
}

/// Encodes `x-envoy-peer-metadata-id` the way Istio forms node ids.
pub fn encode_id(workload: &str, namespace: &str, ip: &str) -> HeaderValue {
    HeaderValue::try_from(format!(
        "sidecar~{ip}~{workload}.{namespace}~{namespace}.svc.cluster.local"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("sidecar~unknown"))
}

/// Decodes a peer's header; `None` when it is not valid base64 protobuf.
pub fn decode(value: &[u8]) -> Option<PeerInfo> {
    let trimmed = value
        .strip_suffix(b"==")
        .or_else(|| value.strip_suffix(b"="))
        .unwrap_or(value);
    let bytes = STANDARD_NO_PAD.decode(trimmed).ok()?;
    let root = Struct::decode(bytes.as_slice()).ok()?;
    let get = |s: &Struct, key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() => Some(v.clone()),
        _ => None,
    };
    let labels = match root.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => s.clone(),
        _ => Struct::default(),
    };
    let label = |keys: &[&str]| keys.iter().find_map(|k| get(&labels, k));
    let workload = get(&root, "WORKLOAD_NAME").or_else(|| get(&root, "NAME"));
    let app = label(&["app.kubernetes.io/name", "app"]);
    let version = label(&["app.kubernetes.io/version", "version"]);
    let unknown = PeerInfo::unknown();
    Some(PeerInfo {
        canonical_service: label(&[CANONICAL_NAME])
            .or_else(|| app.clone())
            .or_else(|| workload.clone())
            .unwrap_or(unknown.canonical_service),
        canonical_revision: label(&[CANONICAL_REVISION])
            .or_else(|| version.clone())
            .unwrap_or(unknown.canonical_revision),
        workload: workload.unwrap_or(unknown.workload),
        namespace: get(&root, "NAMESPACE").unwrap_or(unknown.namespace),
        app: app.unwrap_or(unknown.app),
        version: version.unwrap_or(unknown.version),
        cluster: get(&root, "CLUSTER_ID").unwrap_or(unknown.cluster),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let labels = BTreeMap::from([
            ("app".to_owned(), "reviews".to_owned()),
            ("version".to_owned(), "v2".to_owned()),
        ]);
        let header = encode(LocalWorkload {
            workload: "reviews-v2",
            namespace: "default",
            cluster_id: "Kubernetes",
            labels: &labels,
            canonical_service: "reviews",
            canonical_revision: "v2",
        });
        let peer = decode(header.as_bytes()).expect("decodes");
        assert_eq!(peer.workload, "reviews-v2");
        assert_eq!(peer.namespace, "default");
        assert_eq!(peer.app, "reviews");
        assert_eq!(peer.version, "v2");
        assert_eq!(peer.canonical_service, "reviews");
        assert_eq!(peer.cluster, "Kubernetes");
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode(b"not base64!"), None);
        assert_eq!(decode(b"AAAA"), None);
    }
}
