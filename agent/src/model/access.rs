//! Access control in one place, in Istio's order: authentication
//! (RequestAuthentication: a bad token is 401), then CUSTOM (the external
//! authorizer, asked only when a CUSTOM policy's rules match), then DENY,
//! then ALLOW; AUDIT policies are logged and reported. Rate limits come
//! after, in the request path. Every outcome names what decided it, for the
//! access log, the span and the response details.

use http::{HeaderName, HeaderValue, StatusCode};

use super::authn::{Authenticated, Authenticator, AuthnEdits, AuthnRequest};
use super::authz::{Authorization, AuthzInput, DecisionSource};
use crate::ext_authz::{AllowEdits, BodySettings, CheckOutcome, CheckRequest};
use crate::flags::ResponseFlags;

/// Envoy's details extended with the configuration that decided: `item`
/// (`Kind:namespace/name[rule]`) joins the `{…}` list Envoy already ends
/// some details with, or starts one —
/// `response_timeout{VirtualService:default/reviews[r1]}`,
/// `upstream_reset_before_response_started{overflow,DestinationRule:default/reviews[…]}`.
pub fn with_item(details: &str, item: &str) -> String {
    match details.strip_suffix('}') {
        Some(open) => format!("{open},{item}}}"),
        None => format!("{details}{{{item}}}"),
    }
}

/// What the request path does next. `Allow` is the common outcome and is
/// not boxed, so deciding a request allocates nothing.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum AccessOutcome {
    /// Go on, after applying the edits.
    Allow(Allowed),
    /// Answer with this local reply.
    Deny(Denied),
}

/// A request let in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Allowed {
    /// The verified token, when there was one.
    pub auth: Option<Authenticated>,
    /// Header edits from authentication (token removal, claim headers).
    pub authn_edits: AuthnEdits,
    /// Header edits the external authorizer asked for.
    pub ext_authz_edits: AllowEdits,
    /// The ALLOW policy (or CUSTOM provider) that let it in, when one did.
    pub source: Option<DecisionSource>,
    /// The AUDIT policy that matched, when one did.
    pub audited: Option<DecisionSource>,
    /// What the dry-run AuthorizationPolicies would have decided, when any
    /// applies.
    pub dry_run: Option<String>,
    /// Envoy's response code details of the external check, when one ran.
    pub ext_authz_details: Option<&'static str>,
}

/// A request refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    /// The status.
    pub status: StatusCode,
    /// Headers for the client.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: bytes::Bytes,
    /// Envoy's response flag: `UAEX` (external authorizer), `RBAC`, or none
    /// for a 401 of authentication.
    pub flag: ResponseFlags,
    /// Envoy's response code details (`jwt_authn_access_denied{…}`,
    /// `ext_authz_denied`, `ext_authz_error`, `rbac_access_denied_matched_policy[…]`).
    pub details: String,
    /// What decided (none: no ALLOW policy matched).
    pub source: Option<DecisionSource>,
    /// What the dry-run AuthorizationPolicies would have decided
    /// ([`Authorization::dry_run_verdict`](super::authz::Authorization::dry_run_verdict)),
    /// when the local policies were reached and any applies.
    pub dry_run: Option<String>,
}

/// The start of the request body, read ahead for an external authorizer
/// that asks for it (`includeRequestBodyInCheck`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyAhead {
    /// At most `maxRequestBytes`.
    pub bytes: bytes::Bytes,
    /// The body is longer than `bytes` (`allowPartialMessage` cut it).
    pub partial: bool,
}

/// Where the check gets the request body from: the request path reads it
/// ahead only when a CUSTOM policy's provider asks.
pub trait RequestBody {
    /// Reads the body's start under `settings`; `Err` is the answer the
    /// client gets instead (413 over the limit without
    /// `allowPartialMessage`, or the local reply for a body that broke off).
    fn read_ahead(
        &mut self,
        settings: BodySettings,
    ) -> impl std::future::Future<Output = Result<BodyAhead, Denied>>;
}

/// A request whose body nobody reads ahead: no CUSTOM policy can ask for
/// it (unit tests, and workloads without CUSTOM policies).
impl RequestBody for () {
    async fn read_ahead(&mut self, _: BodySettings) -> Result<BodyAhead, Denied> {
        Ok(BodyAhead::default())
    }
}

/// Authentication and authorization of this workload.
#[derive(Debug, Default)]
pub struct AccessControl {
    /// RequestAuthentication.
    pub authn: Authenticator,
    /// AuthorizationPolicies.
    pub authz: Authorization,
}

impl AccessControl {
    /// Whether nothing applies (the request path skips the step).
    pub fn is_empty(&self) -> bool {
        self.authn.is_empty() && self.authz.is_empty()
    }

    /// Decides one request. `check` describes it to an external authorizer
    /// (asked only when a CUSTOM policy matches), with `body` read ahead
    /// first when the provider includes the body.
    pub async fn check(
        &self,
        authn: &AuthnRequest<'_>,
        input: &AuthzInput<'_>,
        check: &CheckRequest<'_>,
        body: &mut impl RequestBody,
    ) -> AccessOutcome {
        // A CORS preflight passes authentication unchecked, as Istio
        // renders jwt_authn (`bypass_cors_preflight`): browsers send it
        // without credentials. The policies still decide, without a token.
        let authenticated = if is_cors_preflight(input.method, authn.headers) {
            Ok(None)
        } else {
            self.authn.keys_fetched(authn).await;
            self.authn.authenticate(authn)
        };
        let auth = match authenticated {
            Ok(auth) => auth,
            Err(failure) => {
                return AccessOutcome::Deny(Denied {
                    status: failure.status(),
                    headers: vec![(
                        http::header::WWW_AUTHENTICATE,
                        failure.www_authenticate.clone(),
                    )],
                    body: bytes::Bytes::from_static(failure.reason.as_bytes()),
                    flag: ResponseFlags::NONE,
                    details: match &failure.source {
                        Some(rule) => {
                            with_item(&failure.details(), &format!("RequestAuthentication:{rule}"))
                        }
                        None => failure.details(),
                    },
                    source: failure.source.map(|policy| DecisionSource {
                        policy,
                        rule: None,
                        provider: None,
                    }),
                    dry_run: None,
                });
            }
        };
        let mut allowed = Allowed {
            authn_edits: auth.as_ref().map_or_else(
                || AuthnEdits {
                    remove: self.authn.output_headers(),
                    ..AuthnEdits::default()
                },
                |a| a.edits.clone(),
            ),
            ..Allowed::default()
        };
        let custom_match = self.authz.custom_match(input, auth.as_ref());
        if custom_match.is_none()
            && let Some(custom) = self.authz.custom.first()
        {
            // Envoy's ext_authz filter runs only where Istio's shadow rules
            // matched; elsewhere it counts the request as `disabled`.
            custom.client.count_disabled();
        }
        if let Some((custom, rule)) = custom_match {
            let source = DecisionSource {
                policy: custom.policy.name.clone(),
                rule: Some(rule),
                provider: Some(custom.provider.clone()),
            };
            let verdict = match custom.client.settings().body {
                Some(settings) => {
                    let ahead = match body.read_ahead(settings).await {
                        Ok(ahead) => ahead,
                        Err(refused) => return AccessOutcome::Deny(refused),
                    };
                    // No body at all is none in the check, as Envoy buffers
                    // nothing for a request that ended with its headers.
                    let with_body = CheckRequest {
                        body: Some(&ahead.bytes[..]).filter(|b| !b.is_empty() || ahead.partial),
                        body_partial: ahead.partial,
                        ..*check
                    };
                    custom.client.check(&with_body).await
                }
                None => custom.client.check(check).await,
            };
            let decided_by = format!(
                "AuthorizationPolicy:{}[{rule}],provider:{}",
                custom.policy.name, custom.provider
            );
            allowed.ext_authz_details = Some(verdict.details);
            match verdict.outcome {
                CheckOutcome::Deny(denied) => {
                    return AccessOutcome::Deny(Denied {
                        status: denied.status,
                        headers: denied.headers,
                        body: denied.body,
                        flag: ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
                        details: with_item(verdict.details, &decided_by),
                        source: Some(source),
                        dry_run: None,
                    });
                }
                CheckOutcome::Allow(edits) => {
                    allowed.ext_authz_edits = edits;
                    allowed.source = Some(source);
                }
            }
        }
        let local = self.authz.decide_local(input, auth.as_ref());
        if let Some(details) = local.denied_details() {
            return AccessOutcome::Deny(Denied {
                status: StatusCode::FORBIDDEN,
                headers: Vec::new(),
                body: bytes::Bytes::from_static(b"RBAC: access denied"),
                flag: ResponseFlags::RBAC_DENIED,
                details,
                source: local.source,
                dry_run: local.dry_run,
            });
        }
        if local.source.is_some() {
            allowed.source = local.source;
        }
        allowed.audited = local.audited;
        allowed.dry_run = local.dry_run;
        allowed.auth = auth;
        AccessOutcome::Allow(allowed)
    }
}

/// A CORS preflight as Envoy's jwt_authn recognises one: `OPTIONS` with
/// `Origin` and `Access-Control-Request-Method`.
fn is_cors_preflight(method: &str, headers: &http::HeaderMap) -> bool {
    method == "OPTIONS"
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}
