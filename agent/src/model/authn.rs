//! End-user authentication (RequestAuthentication), as Envoy's jwt_authn
//! filter applies it for Istio: a request without a token passes (the
//! AuthorizationPolicies decide); a request with a token that does not
//! verify gets 401 (403 when only its audience is not accepted) with
//! Envoy's reason as the body and
//! `www-authenticate: Bearer realm="http://<host><path>", error="invalid_token"`.
//! A CORS preflight is not authenticated (Istio renders
//! `bypass_cors_preflight`).
//!
//! Tokens are looked for where each `jwtRules[]` entry says
//! (`fromHeaders` with their prefix, compared case-sensitively as Envoy
//! does, `fromParams`, `fromCookies`), by default in `Authorization: Bearer …`
//! and the `access_token` query parameter; an empty parameter is an empty,
//! malformed token. Every token found must verify: its `iss` must be a rule's
//! `issuer` (else `Jwt issuer is not configured`), its signature one of the
//! rule's keys (RS256/384/512, PS256/384/512, ES256/384, EdDSA; the key
//! chosen by `kid` and `alg`), `exp` and `nbf` hold with [`CLOCK_SKEW`] of
//! leeway (Envoy's default, 60 s), and when the rule lists `audiences` one
//! of the token's `aud` must be among them. The first token found gives the
//! request's identity: principal `<iss>/<sub>`, the claims, the audiences
//! and the presenter (`azp`).

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::JwksStore;

/// Leeway on `exp` and `nbf` (Envoy's `clock_skew_seconds` default).
pub const CLOCK_SKEW: u64 = 60;

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header, after a prefix (`Bearer `).
    Header {
        /// The header.
        name: HeaderName,
        /// What precedes the token.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// One `jwtRules[]` entry, compiled.
#[derive(Debug)]
pub struct JwtRule {
    /// `namespace/name` of the RequestAuthentication and the rule's index.
    pub source: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values (empty: any).
    pub audiences: Vec<String>,
    /// Its keys.
    pub keys: Arc<JwksStore>,
    /// Where its tokens are.
    pub locations: Vec<TokenLocation>,
    /// Keep the token in the request sent on.
    pub forward_original_token: bool,
    /// Header that receives the payload (base64url, unpadded).
    pub output_payload_to_header: Option<HeaderName>,
    /// Claims copied to headers.
    pub output_claim_to_headers: Vec<(HeaderName, String)>,
    /// Claims whose string value is a space-separated list (`scope` and
    /// `permission` always are, as in Istio).
    pub space_delimited_claims: Vec<String>,
}

impl JwtRule {
    /// Whether the rule may verify a token issued by `iss`: its own
    /// issuer, or any when it names none.
    fn names(&self, iss: &str) -> bool {
        self.issuer.is_empty() || self.issuer == iss
    }
}

/// Every RequestAuthentication rule that applies to this workload.
#[derive(Debug, Default)]
pub struct Authenticator {
    /// The rules, in document order.
    pub rules: Vec<JwtRule>,
}

impl Authenticator {
    /// Starts fetching the key sets of the rules' `jwksUri`s in the
    /// background (once per URI; a store a reload keeps is not fetched
    /// again), for a config put in force, before any token asks for them.
    pub fn start_key_fetches(&self) {
        for rule in &self.rules {
            rule.keys.start();
        }
    }

    /// Waits for the first fetch of each remote key set that has none yet
    /// and that `request` carries a token for — at a location its rule
    /// reads, naming its issuer, inside its time window, as Envoy reads a
    /// token before it fetches keys — all at once, so at most one
    /// the longest of their rules' `timeout` in all. A request without
    /// such a token never waits, and none waits once every rule has keys.
    pub async fn keys_fetched(&self, request: &AuthnRequest<'_>) {
        if self.rules.iter().all(|rule| rule.keys.has_keys()) {
            return;
        }
        let now = unix_now();
        let wants_keys = |rule: &JwtRule| {
            rule.locations
                .iter()
                .filter_map(|location| tokens(request, location))
                .any(|token| {
                    Unverified::parse(&token).is_ok_and(|says| {
                        says.issuer.as_deref().is_some_and(|iss| rule.names(iss))
                            && says.in_window(now).is_ok()
                    })
                })
        };
        let mut waits: Vec<&JwksStore> = Vec::new();
        for rule in &self.rules {
            let store: &JwksStore = &rule.keys;
            if !store.has_keys()
                && !waits.iter().any(|w| std::ptr::eq(*w, store))
                && wants_keys(rule)
            {
                waits.push(store);
            }
        }
        futures_util::future::join_all(waits.into_iter().map(JwksStore::first_fetch)).await;
    }
}

/// Now, in Unix seconds (0 before the epoch).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the authenticator reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct AuthnRequest<'a> {
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// Host, for `www-authenticate`'s realm.
    pub host: &'a str,
    /// Path without query, for the realm.
    pub path: &'a str,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// `<iss>/<sub>` (`request.auth.principal`, matched by `requestPrincipals`).
    pub principal: String,
    /// Every claim (`request.auth.claims[…]`).
    pub claims: Arc<Map<String, Value>>,
    /// `aud` as a list (`request.auth.audiences`).
    pub audiences: Vec<String>,
    /// `azp` (`request.auth.presenter`).
    pub presenter: Option<String>,
    /// The rule that verified it.
    pub source: String,
    /// The verifying rule's `spaceDelimitedClaims`: top-level claims whose
    /// string value is a space-separated list (besides `scope` and
    /// `permission`, which always are).
    pub space_delimited_claims: Vec<String>,
    /// Header edits to apply before the request goes on.
    pub edits: AuthnEdits,
}

impl Authenticated {
    /// Whether top-level claim `claim` is a space-separated list.
    pub fn space_delimited(&self, claim: &str) -> bool {
        matches!(claim, "scope" | "permission")
            || self.space_delimited_claims.iter().any(|c| c == claim)
    }
}

/// Header edits of a successful authentication.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthnEdits {
    /// Headers to remove (tokens not forwarded, and spoofed output headers).
    pub remove: Vec<HeaderName>,
    /// Headers to set (`outputPayloadToHeader`, `outputClaimToHeaders`).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Query parameters to remove (tokens not forwarded).
    pub remove_params: Vec<String>,
}

/// Why a request is refused with 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnFailure {
    /// Envoy's reason, sent as the body (`Jwt is expired`).
    pub reason: &'static str,
    /// The `www-authenticate` value.
    pub www_authenticate: HeaderValue,
    /// The rule whose token failed (none: no rule knows the issuer).
    pub source: Option<String>,
}

impl AuthnFailure {
    /// 403 for a token whose audience is not accepted (the token is
    /// genuine but not for this service), 401 for every other failure, as
    /// Envoy's jwt_authn answers.
    pub fn status(&self) -> http::StatusCode {
        if self.reason == reason::AUDIENCE {
            http::StatusCode::FORBIDDEN
        } else {
            http::StatusCode::UNAUTHORIZED
        }
    }
}

impl AuthnFailure {
    /// Envoy's response code details: `jwt_authn_access_denied{<reason>}`,
    /// the reason's spaces made underscores as Envoy writes it
    /// (`jwt_authn_access_denied{Jwt_is_expired}`).
    pub fn details(&self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.reason.replace(' ', "_")
        )
    }
}

/// Envoy's reasons, word for word.
pub mod reason {
    /// The token is not three base64url parts.
    pub const MALFORMED: &str =
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    /// The header is not base64url.
    pub const HEADER_BASE64: &str = "Jwt header is an invalid Base64url encoded";
    /// The header is not a JSON object.
    pub const BAD_HEADER: &str = "Jwt header is an invalid JSON";
    /// The header has no `alg`, or not a string.
    pub const ALG_MISSING: &str = "Jwt header [alg] field is required and must be a string";
    /// `alg` names no algorithm Envoy verifies (`none` among them).
    pub const ALG_NOT_SUPPORTED: &str = "Jwt header [alg] is not supported";
    /// `kid` is there but not a string.
    pub const KID_NOT_STRING: &str = "Jwt header [kid] field is not a string";
    /// The payload is not base64url.
    pub const PAYLOAD_BASE64: &str = "Jwt payload is an invalid Base64url encoded";
    /// The payload is not a JSON object.
    pub const BAD_PAYLOAD: &str = "Jwt payload is an invalid JSON";
    /// `iss` is there but not a string.
    pub const ISS_NOT_STRING: &str = "Jwt payload [iss] field is not a string";
    /// `sub` is there but not a string.
    pub const SUB_NOT_STRING: &str = "Jwt payload [sub] field is not a string";
    /// `iat` is there but not a number.
    pub const IAT_NOT_INTEGER: &str = "Jwt payload [iat] field is not an integer";
    /// `iat` is negative or past 2^64.
    pub const IAT_OUT_OF_RANGE: &str = "Jwt payload [iat] field is not a positive 64 bit integer";
    /// `nbf` is there but not a number.
    pub const NBF_NOT_INTEGER: &str = "Jwt payload [nbf] field is not an integer";
    /// `nbf` is negative or past 2^64.
    pub const NBF_OUT_OF_RANGE: &str = "Jwt payload [nbf] field is not a positive 64 bit integer";
    /// `exp` is there but not a number.
    pub const EXP_NOT_INTEGER: &str = "Jwt payload [exp] field is not an integer";
    /// `exp` is negative or past 2^64.
    pub const EXP_OUT_OF_RANGE: &str = "Jwt payload [exp] field is not a positive 64 bit integer";
    /// `jti` is there but not a string.
    pub const JTI_NOT_STRING: &str = "Jwt payload [jti] field is not a string";
    /// `aud` is there but neither a string nor a list of strings.
    pub const AUD_NOT_STRING: &str = "Jwt payload [aud] field is not a string or string list";
    /// The signature is not base64url.
    pub const SIGNATURE_BASE64: &str = "Jwt signature is an invalid Base64url encoded";
    /// No rule has the token's issuer.
    pub const UNKNOWN_ISSUER: &str = "Jwt issuer is not configured";
    /// No key fits.
    pub const NO_KEY: &str = "Jwks doesn't have key to match kid or alg from Jwt";
    /// The signature does not verify.
    pub const SIGNATURE: &str = "Jwt verification fails";
    /// `exp` is past.
    pub const EXPIRED: &str = "Jwt is expired";
    /// `nbf` is ahead.
    pub const NOT_YET_VALID: &str = "Jwt not yet valid";
    /// `aud` is not accepted.
    pub const AUDIENCE: &str = "Audiences in Jwt are not allowed";
    /// The rule's key set has not been fetched yet.
    pub const NO_JWKS: &str = "Jwks remote fetch is failed";
}

impl Authenticator {
    /// Whether any rule applies (so the request path can skip the work).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule's output headers (`outputPayloadToHeader`,
    /// `outputClaimToHeaders`): the agent's to write, so a client's own
    /// copy is removed whether or not a token verified, as Envoy's
    /// jwt_authn removes it. A verified token's edits remove them too.
    pub fn output_headers(&self) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = Vec::new();
        for rule in &self.rules {
            for name in (rule.output_payload_to_header.iter())
                .chain(rule.output_claim_to_headers.iter().map(|(h, _)| h))
            {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// `Ok(None)`: no token; `Ok(Some(_))`: verified; `Err`: refused (401 or 403).
    pub fn authenticate(
        &self,
        request: &AuthnRequest<'_>,
    ) -> Result<Option<Authenticated>, AuthnFailure> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let mut first: Option<Authenticated> = None;
        // Each token verified once, with whether its rule forwards it.
        let mut seen: Vec<(Cow<'_, str>, bool)> = Vec::new();
        let mut remove: Vec<HeaderName> = Vec::new();
        let mut remove_params: Vec<String> = Vec::new();
        for rule in &self.rules {
            for location in &rule.locations {
                if let Some(token) = tokens(request, location) {
                    let forward = match seen.iter().find(|(t, _)| *t == token) {
                        Some((_, forward)) => *forward,
                        None => {
                            let verified = self.verify(&token, location, request)?;
                            let forward = verified_rule(self, &verified).forward_original_token;
                            seen.push((token, forward));
                            if first.is_none() {
                                first = Some(verified);
                            }
                            forward
                        }
                    };
                    if !forward {
                        // Envoy takes a token it does not forward out of
                        // the request: its header, or its query parameter.
                        match location {
                            TokenLocation::Header { name, .. } if !remove.contains(name) => {
                                remove.push(name.clone());
                            }
                            TokenLocation::Param(param) if !remove_params.contains(param) => {
                                remove_params.push(param.clone());
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        for name in self.output_headers() {
            if !remove.contains(&name) {
                remove.push(name);
            }
        }
        Ok(first.map(|mut auth| {
            let mut edits = std::mem::take(&mut auth.edits);
            for name in remove {
                if !edits.remove.contains(&name) {
                    edits.remove.push(name);
                }
            }
            edits.remove_params = remove_params;
            auth.edits = edits;
            auth
        }))
    }

    /// Verifies `token`, found at `location`, as Envoy's jwt_authn does
    /// for Istio's providers: only the rules that read `location` and name
    /// the token's `iss` may verify it (a rule without `issuer` names any),
    /// and any one of them accepting it is enough (Istio's `requires_any`);
    /// none accepting it, the first one's refusal is the answer.
    fn verify(
        &self,
        token: &str,
        location: &TokenLocation,
        request: &AuthnRequest<'_>,
    ) -> Result<Authenticated, AuthnFailure> {
        let fail = |reason: &'static str, source: Option<&JwtRule>| AuthnFailure {
            reason,
            www_authenticate: www_authenticate(request),
            source: source.map(|r| r.source.clone()),
        };
        let token_says = Unverified::parse(token).map_err(|r| fail(r, None))?;
        let issuer = token_says
            .issuer
            .as_deref()
            .ok_or_else(|| fail(reason::UNKNOWN_ISSUER, None))?;
        let mut candidates = self
            .rules
            .iter()
            .filter(|r| r.names(issuer) && r.locations.contains(location));
        let first = candidates
            .next()
            .ok_or_else(|| fail(reason::UNKNOWN_ISSUER, None))?;
        let refused = match verify_with(first, token, &token_says, issuer) {
            Ok(verified) => return Ok(verified),
            Err(reason) => fail(reason, Some(first)),
        };
        candidates
            .find_map(|rule| verify_with(rule, token, &token_says, issuer).ok())
            .ok_or(refused)
    }
}

/// Verifies `token` (which says `token_says`, and was issued by `issuer`)
/// by `rule`: its time window, its signature by one of the rule's keys,
/// and its audience; `Err` is Envoy's reason.
fn verify_with(
    rule: &JwtRule,
    token: &str,
    token_says: &Unverified,
    issuer: &str,
) -> Result<Authenticated, &'static str> {
    // Envoy's order: the time window, before any key is looked for.
    token_says.in_window(unix_now())?;
    let Some(keys) = rule.keys.keys() else {
        return Err(reason::NO_JWKS);
    };
    // ES512 is Envoy's but not the JWT library's: no key can verify it.
    let Some(alg) = token_says.alg else {
        return Err(reason::NO_KEY);
    };
    let mut validation = Validation::new(alg);
    // `exp` and `nbf` were judged above, as Envoy reads them.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    let fitting: Vec<_> = keys
        .iter()
        .filter(|k| k.fits(alg, token_says.kid.as_deref()))
        .collect();
    if fitting.is_empty() || matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(reason::NO_KEY);
    }
    // Envoy decodes the signature with padding optional; the JWT
    // library takes it unpadded. The signed part is left as sent.
    let token: Cow<'_, str> = match token.rsplit_once('.') {
        Some((signed, signature)) if signature.ends_with('=') => {
            Cow::Owned(format!("{signed}.{}", signature.trim_end_matches('=')))
        }
        _ => Cow::Borrowed(token),
    };
    let mut outcome = Err(reason::SIGNATURE);
    for key in fitting {
        match jsonwebtoken::decode::<Map<String, Value>>(&token, &key.key, &validation) {
            Ok(data) => {
                outcome = Ok(data.claims);
                break;
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                outcome = Err(match e.kind() {
                    ErrorKind::ExpiredSignature => reason::EXPIRED,
                    ErrorKind::ImmatureSignature => reason::NOT_YET_VALID,
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) => reason::MALFORMED,
                    ErrorKind::Json(_) | ErrorKind::Utf8(_) => reason::BAD_HEADER,
                    _ => reason::SIGNATURE,
                });
                if outcome != Err(reason::SIGNATURE) {
                    break;
                }
            }
        }
    }
    let claims = outcome?;
    let audiences = string_list(claims.get("aud"));
    let accepted = |a: &String| rule.audiences.iter().any(|r| same_audience(r, a));
    if !rule.audiences.is_empty() && !audiences.iter().any(accepted) {
        return Err(reason::AUDIENCE);
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let presenter = claims.get("azp").and_then(Value::as_str).map(str::to_owned);
    let edits = output_edits(rule, &token, &claims);
    Ok(Authenticated {
        principal: format!("{issuer}/{sub}"),
        claims: Arc::new(claims),
        audiences,
        presenter,
        source: rule.source.clone(),
        space_delimited_claims: rule.space_delimited_claims.clone(),
        edits,
    })
}

/// Whether two audiences are one as Envoy's jwt_verify_lib compares them:
/// an `http://` or `https://` scheme and a trailing `/` are not part of it
/// (`https://api.example.com/` is `api.example.com`).
fn same_audience(a: &str, b: &str) -> bool {
    fn bare(audience: &str) -> &str {
        let audience = audience
            .strip_prefix("http://")
            .or_else(|| audience.strip_prefix("https://"))
            .unwrap_or(audience);
        audience.strip_suffix('/').unwrap_or(audience)
    }
    bare(a) == bare(b)
}

fn verified_rule<'a>(authn: &'a Authenticator, auth: &Authenticated) -> &'a JwtRule {
    authn
        .rules
        .iter()
        .find(|r| r.source == auth.source)
        .unwrap_or(&authn.rules[0])
}

/// `Bearer realm="http://<host><path>", error="invalid_token"`, as Envoy sends it.
fn www_authenticate(request: &AuthnRequest<'_>) -> HeaderValue {
    let realm = format!("http://{}{}", request.host, request.path).replace('"', "");
    HeaderValue::from_str(&format!(
        "Bearer realm=\"{realm}\", error=\"invalid_token\""
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

/// What a token says of itself before it is verified, read in the order
/// Envoy's jwt_verify_lib parses it (`Jwt::parseFromString`), each fault
/// answered with its status text: three non-empty base64url sections, a
/// header object with a supported string `alg` and a string `kid` if any,
/// a payload object with a string `iss` and `sub`, numeric `iat`, `nbf`
/// and `exp` in 0..2^64, a string `jti` and a string or string-list `aud`
/// where present, a base64url signature.
struct Unverified {
    /// The algorithm; `None` for one Envoy supports and the JWT library
    /// does not (ES512).
    alg: Option<Algorithm>,
    kid: Option<String>,
    issuer: Option<String>,
    /// `nbf`, Unix seconds (0: none).
    nbf: u64,
    /// `exp`, Unix seconds (0: none).
    exp: u64,
}

impl Unverified {
    /// Whether `now` (Unix seconds) is inside the token's `nbf`–`exp`
    /// window with [`CLOCK_SKEW`] either side; `Err` is Envoy's reason.
    fn in_window(&self, now: u64) -> Result<(), &'static str> {
        if now.saturating_add(CLOCK_SKEW) < self.nbf {
            return Err(reason::NOT_YET_VALID);
        }
        if self.exp != 0 && now > self.exp.saturating_add(CLOCK_SKEW) {
            return Err(reason::EXPIRED);
        }
        Ok(())
    }

    fn parse(token: &str) -> Result<Self, &'static str> {
        let mut sections = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            sections.next(),
            sections.next(),
            sections.next(),
            sections.next(),
        ) else {
            return Err(reason::MALFORMED);
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(reason::MALFORMED);
        }
        let header = json_object(header, reason::HEADER_BASE64, reason::BAD_HEADER)?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg.as_str(),
            _ => return Err(reason::ALG_MISSING),
        };
        let alg = match alg {
            "ES512" => None,
            "ES256" | "ES384" | "HS256" | "HS384" | "HS512" | "RS256" | "RS384" | "RS512"
            | "PS256" | "PS384" | "PS512" | "EdDSA" => {
                Some(alg.parse().map_err(|_| reason::ALG_NOT_SUPPORTED)?)
            }
            _ => return Err(reason::ALG_NOT_SUPPORTED),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(reason::KID_NOT_STRING),
        };
        let payload = json_object(payload, reason::PAYLOAD_BASE64, reason::BAD_PAYLOAD)?;
        let issuer = match payload.get("iss") {
            None => None,
            Some(Value::String(iss)) => Some(iss.clone()),
            Some(_) => return Err(reason::ISS_NOT_STRING),
        };
        if payload.get("sub").is_some_and(|s| !s.is_string()) {
            return Err(reason::SUB_NOT_STRING);
        }
        let time = |claim: &str, not_integer, out_of_range| {
            seconds(payload.get(claim), not_integer, out_of_range)
        };
        time("iat", reason::IAT_NOT_INTEGER, reason::IAT_OUT_OF_RANGE)?;
        let nbf = time("nbf", reason::NBF_NOT_INTEGER, reason::NBF_OUT_OF_RANGE)?;
        let exp = time("exp", reason::EXP_NOT_INTEGER, reason::EXP_OUT_OF_RANGE)?;
        if payload.get("jti").is_some_and(|s| !s.is_string()) {
            return Err(reason::JTI_NOT_STRING);
        }
        match payload.get("aud") {
            None | Some(Value::String(_)) => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            Some(_) => return Err(reason::AUD_NOT_STRING),
        }
        base64url(signature).ok_or(reason::SIGNATURE_BASE64)?;
        Ok(Self {
            alg,
            kid,
            issuer,
            nbf,
            exp,
        })
    }
}

/// A time claim as Envoy's jwt_verify_lib reads it (`GetUInt64`): any JSON
/// number, negative or at least 2^64 out of range, the fraction dropped;
/// absent is 0.
fn seconds(
    value: Option<&Value>,
    not_integer: &'static str,
    out_of_range: &'static str,
) -> Result<u64, &'static str> {
    let Some(value) = value else {
        return Ok(0);
    };
    let n = value.as_f64().ok_or(not_integer)?;
    if !(0.0..u64::MAX as f64).contains(&n) {
        return Err(out_of_range);
    }
    Ok(n as u64)
}

/// A base64url section, decoded as Envoy's (absl's `WebSafeBase64Unescape`)
/// does: padding optional, unused trailing bits ignored.
fn base64url(section: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(section).ok()
}

/// A base64url section holding a JSON object; else `not_base64` or
/// `not_json`.
fn json_object(
    section: &str,
    not_base64: &'static str,
    not_json: &'static str,
) -> Result<Map<String, Value>, &'static str> {
    let bytes = base64url(section).ok_or(not_base64)?;
    serde_json::from_slice(&bytes).map_err(|_| not_json)
}

/// A string or a list of strings as a list.
pub fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The token at one location, as Envoy's extractor finds it: a header's
/// lines joined with `,` (as Envoy's codec joins a repeated header; two
/// `Authorization` lines are one malformed token), then its prefix compared
/// byte for byte (a `bearer …` header carries no token for `Bearer `); the
/// first value of a query parameter or cookie, an empty one included (an
/// empty, malformed token, not a missing one).
fn tokens<'a>(request: &AuthnRequest<'a>, location: &TokenLocation) -> Option<Cow<'a, str>> {
    match location {
        TokenLocation::Header { name, prefix } => {
            let mut lines = request.headers.get_all(name).iter();
            let first = lines.next()?.to_str().ok()?;
            let value: Cow<'a, str> = match lines.next() {
                None => Cow::Borrowed(first),
                Some(second) => {
                    let mut joined = format!("{first},{}", second.to_str().ok()?);
                    for line in lines {
                        joined.push(',');
                        joined.push_str(line.to_str().ok()?);
                    }
                    Cow::Owned(joined)
                }
            };
            let token = match value {
                Cow::Borrowed(v) => Cow::Borrowed(v.strip_prefix(prefix.as_str())?.trim()),
                Cow::Owned(v) => Cow::Owned(v.strip_prefix(prefix.as_str())?.trim().to_owned()),
            };
            (!token.is_empty()).then_some(token)
        }
        TokenLocation::Param(param) => request
            .query?
            .split('&')
            .find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == param).then_some(v)
            })
            .map(Cow::Borrowed),
        TokenLocation::Cookie(cookie) => request
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == cookie).then_some(v)
            })
            .map(Cow::Borrowed),
    }
}

/// `outputPayloadToHeader` and `outputClaimToHeaders`; the named headers are
/// replaced, so a client cannot send its own.
fn output_edits(rule: &JwtRule, token: &str, claims: &Map<String, Value>) -> AuthnEdits {
    let mut edits = AuthnEdits::default();
    if let Some(header) = &rule.output_payload_to_header
        && let Some(payload) = token.split('.').nth(1)
        && let Ok(value) = HeaderValue::from_str(payload.trim_end_matches('='))
    {
        edits.set.push((header.clone(), value));
    }
    for (header, claim) in &rule.output_claim_to_headers {
        let value = match claims.get(claim) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            // A list goes on as its JSON, base64-encoded, as Envoy writes it.
            Some(list @ Value::Array(_)) => {
                use base64::Engine;
                Some(base64::engine::general_purpose::STANDARD.encode(list.to_string()))
            }
            _ => None,
        };
        match value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            Some(v) => edits.set.push((header.clone(), v)),
            None => edits.remove.push(header.clone()),
        }
    }
    edits
}

#[cfg(test)]
#[path = "authn_tests.rs"]
mod tests;
