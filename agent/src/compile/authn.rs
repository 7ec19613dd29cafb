//! RequestAuthentications → the [`Authenticator`] of this workload: those in
//! its namespace or the mesh's root namespace whose `selector` matches (no
//! selector: the namespace, or the mesh), in document order. `targetRef`
//! and `targetRefs` select gateways: sidecars skip the resource.

use std::sync::Arc;

use http::HeaderName;

use super::bootstrap::Agent;
use crate::config::diagnostics::Diagnostics;
use crate::config::documents::Document;
use crate::config::security::RequestAuthenticationSpec;
use crate::model::authn::{Authenticator, JwtRule, TokenLocation};
use crate::model::jwks::{DEFAULT_TIMEOUT, JwksStore, parse_jwks};
use crate::model::live::LiveState;

pub(super) fn authenticator(
    docs: &[Document<RequestAuthenticationSpec>],
    boot: &Agent,
    live: &LiveState,
    diags: &mut Diagnostics,
) -> Authenticator {
    let mut rules = Vec::new();
    for doc in docs {
        let spec = &doc.spec;
        let loc = &doc.location;
        let namespace = doc
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(&boot.identity.namespace);
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            diags.warn(
                loc,
                Some("spec.targetRef".into()),
                "targets gateways only; sidecars skip it",
            );
            continue;
        }
        let applies = (namespace == boot.root_namespace || namespace == boot.identity.namespace)
            && spec
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&boot.identity.labels));
        for (i, raw) in spec.jwt_rules.iter().enumerate() {
            let field = format!("spec.jwtRules[{i}]");
            // (validation refuses one under 1ms)
            let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get());
            let keys = match (&raw.jwks, &raw.jwks_uri) {
                (Some(inline), _) => match parse_jwks(inline) {
                    Ok(keys) => JwksStore::inline(keys),
                    Err(e) => {
                        diags.error(loc, Some(format!("{field}.jwks")), e.to_string());
                        continue;
                    }
                },
                (None, Some(uri)) => live.jwks(uri, timeout),
                (None, None) => {
                    let msg = "neither jwks nor jwksUri: tracemesh does not discover keys from the issuer (OpenID discovery); every token of this issuer fails";
                    diags.warn(loc, Some(field.clone()), msg);
                    JwksStore::inline(Vec::new())
                }
            };
            let mut locations: Vec<TokenLocation> = raw
                .from_headers
                .iter()
                .filter_map(|h| {
                    Some(TokenLocation::Header {
                        name: HeaderName::try_from(h.name.to_ascii_lowercase()).ok()?,
                        prefix: h.prefix.clone().unwrap_or_default(),
                    })
                })
                .collect();
            locations.extend(raw.from_params.iter().cloned().map(TokenLocation::Param));
            locations.extend(raw.from_cookies.iter().cloned().map(TokenLocation::Cookie));
            if locations.is_empty() {
                locations = vec![
                    TokenLocation::Header {
                        name: http::header::AUTHORIZATION,
                        prefix: "Bearer ".into(),
                    },
                    TokenLocation::Param("access_token".into()),
                ];
            }
            if !applies {
                continue;
            }
            rules.push(JwtRule {
                source: format!("{namespace}/{}[{i}]", doc.metadata.name),
                issuer: raw.issuer.clone(),
                audiences: raw.audiences.clone(),
                keys: Arc::clone(&keys),
                locations,
                forward_original_token: raw.forward_original_token.unwrap_or(false),
                output_payload_to_header: raw
                    .output_payload_to_header
                    .as_ref()
                    .and_then(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok()),
                output_claim_to_headers: raw
                    .output_claim_to_headers
                    .iter()
                    .filter_map(|o| {
                        Some((
                            HeaderName::try_from(o.header.to_ascii_lowercase()).ok()?,
                            o.claim.clone(),
                        ))
                    })
                    .collect(),
                space_delimited_claims: raw.space_delimited_claims.clone(),
            });
        }
    }
    Authenticator { rules }
}
