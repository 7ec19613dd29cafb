//! tracemesh's own `RateLimitPolicy` (tracemesh.io/v1): token buckets in the
//! shape of Envoy's local rate limit, since Istio has no resource for it.
//!
//! ```yaml
//! apiVersion: tracemesh.io/v1
//! kind: RateLimitPolicy
//! metadata: {name: reviews-per-ip, namespace: default}
//! spec:
//!   selector: {matchLabels: {app: reviews}}
//!   rules:
//!   - name: per-client
//!     key: {sourceIp: true}
//!     tokenBucket: {maxTokens: 100, tokensPerFill: 100, fillInterval: 1s}
//! ```

use serde::{Deserialize, Serialize};

use super::duration::IstioDuration;
use super::meta::WorkloadSelector;

/// Rate limits for the workloads a selector picks, applied to their inbound
/// traffic.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// Workloads the policy applies to; none means every workload in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Rules; a request is limited when any rule that applies to it has no token left.
    #[serde(default)]
    pub rules: Vec<RateLimitRule>,
}

/// One token bucket (or one per key).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitRule {
    /// Name, for logs and `/config_dump`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests the rule counts; absent means all.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RateLimitMatch>,
    /// What a bucket is kept per; absent means one bucket for all requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKey>,
    /// The bucket.
    pub token_bucket: TokenBucket,
    /// Most keyed buckets kept (default 10000, at most 1048576); beyond it
    /// the least recently used bucket is recycled, so spoofed keys cannot
    /// grow memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u32>,
}

/// Conditions on the requests a rule counts.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitMatch {
    /// Paths, with `*` as a prefix or suffix wildcard (as AuthorizationPolicy writes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// The key of a bucket: exactly one of these.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitKey {
    /// The TCP peer's IP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
    /// The original client's IP from `x-forwarded-for` (see `numTrustedProxies`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote_ip: bool,
    /// A request header's value (requests without it share one bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The request path (without query).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path: bool,
}

/// Envoy's token bucket.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size: the burst allowed.
    pub max_tokens: u32,
    /// Tokens added per fill (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    /// Time between fills.
    pub fill_interval: IstioDuration,
}
