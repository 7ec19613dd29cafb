//! The TLS a gateway server terminates: certificates and keys from files,
//! client verification, protocol versions and cipher suites → a rustls
//! `ServerConfig`, built once per config load.
//!
//! Where Istio reads a Kubernetes Secret (`credentialName`, a Gateway
//! listener's `certificateRefs`), tracemesh reads a directory laid out as
//! a Secret volume mounts it: the Secret `<namespace>/<name>` is
//! `<credentialDirectory>/<namespace>/<name>/` holding `tls.crt`, `tls.key`
//! and, for client verification, `ca.crt` — or Istio's generic-secret keys
//! `cert`, `key`, `cacert`; a revocation list for client certificates is
//! `ca.crl` beside `ca.crt` (`crl` beside `cacert`). As in Istio, the
//! client CA is first looked for in a separate Secret `<name>-cacert`, and
//! `credentialName` Secrets are read from the gateway workload's
//! namespace. Files named directly
//! (`serverCertificate`, `privateKey`, `caCertificates`, `caCrl`) are read
//! as written.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use base64::Engine as _;

use crate::config::diagnostics::{Diagnostics, Location};
use crate::config::gateway::ServerTlsSettings;
use crate::model::gateway::ServerTlsMode;
use crate::tls::material::{self, ALPN};
use crate::tls::select::CertificateSelector;
use crate::tls::verify::{CheckedClientVerifier, ClientCheck, ClientPins};

/// Where a server's certificate, key and client CA are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CertificateFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (MUTUAL, OPTIONAL_MUTUAL).
    pub ca: Option<PathBuf>,
    /// PEM certificate revocation lists for client certificates (`caCrl`,
    /// a Secret's `ca.crl`).
    pub crl: Option<PathBuf>,
    /// Further certificate chains and keys the server may answer with
    /// (`credentialNames`, `tlsCertificates` past the first).
    pub more: Vec<(PathBuf, PathBuf)>,
}

/// The files of the Secret `namespace/name` under `directory`: the first
/// of each key's names that exists (else the standard name, so the error
/// names the file a user should create).
pub(super) fn secret_files(directory: &str, namespace: &str, name: &str) -> CertificateFiles {
    let dir = Path::new(directory).join(namespace).join(name);
    let pick = |names: &[&str]| {
        names
            .iter()
            .map(|n| dir.join(n))
            // A file that cannot be looked at is picked, so reading it
            // reports why.
            .find(|p| p.try_exists().unwrap_or(true))
            .unwrap_or_else(|| dir.join(names[0]))
    };
    // The client CA and its revocation list as Istio's `GetCaCert` and
    // `ExtractRoot` read them: the Secret `<name>-cacert` first, else
    // `<name>`; in it `cacert` with `crl`, else `ca.crt` with `ca.crl`.
    let exists = |p: &Path| p.try_exists().unwrap_or(true);
    let ca_dir = Path::new(directory)
        .join(namespace)
        .join(format!("{name}-cacert"));
    let (ca, crl) = [&ca_dir, &dir]
        .into_iter()
        .find_map(|d| {
            [("cacert", "crl"), ("ca.crt", "ca.crl")]
                .into_iter()
                .find_map(|(ca, crl)| {
                    let (ca, crl) = (d.join(ca), d.join(crl));
                    exists(&ca).then(|| (Some(ca), exists(&crl).then_some(crl)))
                })
        })
        .unwrap_or((None, None));
    CertificateFiles {
        cert: pick(&["tls.crt", "cert"]),
        key: pick(&["tls.key", "key"]),
        ca,
        crl,
        more: Vec::new(),
    }
}

/// What a terminating server asks for.
pub(super) struct ServerTlsInput<'a> {
    /// The mode (not ISTIO_MUTUAL, which uses the workload certificate).
    pub mode: ServerTlsMode,
    /// Certificate, key and client CA.
    pub files: CertificateFiles,
    /// `minProtocolVersion` (`TLS_AUTO`, `TLSV1_0` … `TLSV1_3`).
    pub min_version: Option<&'a str>,
    /// `maxProtocolVersion`.
    pub max_version: Option<&'a str>,
    /// `cipherSuites` (OpenSSL names, as Envoy takes them).
    pub cipher_suites: &'a [String],
    /// Offer HTTP/2 and HTTP/1.1 by ALPN (HTTP servers).
    pub alpn: bool,
    /// What a client certificate must name or hash to (MUTUAL,
    /// OPTIONAL_MUTUAL).
    pub pins: ClientPins,
}

/// A server's `subjectAltNames`, `verifyCertificateSpki` and
/// `verifyCertificateHash`, decoded, or None with an error at the value
/// Envoy would refuse: an SPKI pin is the base64 of a SHA-256 digest, a
/// certificate hash its hex (colons between bytes allowed, any case).
/// Under SIMPLE no client certificate is asked for: each present field is
/// a warning and nothing is pinned.
pub(super) fn client_pins(
    t: &ServerTlsSettings,
    mode: ServerTlsMode,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<ClientPins> {
    if mode == ServerTlsMode::Simple {
        for (name, set) in [
            ("subjectAltNames", !t.subject_alt_names.is_empty()),
            (
                "verifyCertificateSpki",
                !t.verify_certificate_spki.is_empty(),
            ),
            (
                "verifyCertificateHash",
                !t.verify_certificate_hash.is_empty(),
            ),
        ] {
            if set {
                let msg = "SIMPLE TLS asks no client certificate: nothing is checked";
                diags.warn(loc, Some(format!("{field}.{name}")), msg);
            }
        }
        return Some(ClientPins::default());
    }
    let mut ok = true;
    let mut decode =
        |values: &[String], name: &str, what: &str, parse: fn(&str) -> Option<Vec<u8>>| {
            let mut out = Vec::new();
            for (i, value) in values.iter().enumerate() {
                match parse(value).and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()) {
                    Some(digest) => out.push(digest),
                    None => {
                        ok = false;
                        let msg =
                            format!("{value:?} is not the {what} of a SHA-256 digest (32 bytes)");
                        diags.error(loc, Some(format!("{field}.{name}[{i}]")), msg);
                    }
                }
            }
            out
        };
    let spki_sha256 = decode(
        &t.verify_certificate_spki,
        "verifyCertificateSpki",
        "base64",
        |v| base64::engine::general_purpose::STANDARD.decode(v).ok(),
    );
    let cert_sha256 = decode(
        &t.verify_certificate_hash,
        "verifyCertificateHash",
        "hex",
        |v| {
            // Envoy's two forms: 64 hex digits, or the 32 bytes' pairs
            // joined by colons (95 characters).
            let colons = v.len() == 95 && v.bytes().skip(2).step_by(3).all(|b| b == b':');
            let hex: String = if colons {
                v.split(':').collect()
            } else {
                v.to_owned()
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect()
        },
    );
    ok.then(|| ClientPins {
        subject_alt_names: t.subject_alt_names.clone(),
        spki_sha256,
        cert_sha256,
    })
}

/// Istio's (Envoy's, OpenSSL's) names of the TLS 1.2 suites rustls offers.
/// TLS 1.3 suites are not configurable, in Envoy as here.
const TLS12_SUITES: &[(&str, SupportedCipherSuite)] = {
    use rustls::crypto::ring::cipher_suite as cs;
    &[
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
};

/// A protocol version field: 2 for TLS 1.2 (and the older versions rustls
/// does not speak, warned about), 3 for TLS 1.3, None for `TLS_AUTO`.
fn version(
    value: Option<&str>,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<u8> {
    match value? {
        "TLS_AUTO" => None,
        "TLSV1_2" => Some(2),
        "TLSV1_3" => Some(3),
        old @ ("TLSV1_0" | "TLSV1_1") => {
            let msg =
                format!("{old}: tracemesh speaks TLS 1.2 and 1.3 only (rustls); TLS 1.2 is used");
            diags.warn(loc, Some(field.to_owned()), msg);
            Some(2)
        }
        other => {
            let msg = format!("{other:?} is not TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3");
            diags.error(loc, Some(field.to_owned()), msg);
            None
        }
    }
}

fn read(
    path: &Path,
    what: &str,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<String> {
    diags.reading(path);
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) => {
            let msg = format!("cannot read the {what} {}: {err}", path.display());
            diags.error(loc, Some(field.to_owned()), msg);
            None
        }
    }
}

/// The rustls config of a terminating server and the URI SANs of its
/// certificate (`By` in XFCC), or None with errors reported at `field`
/// (the server's `tls`).
pub(super) fn server_config(
    input: &ServerTlsInput<'_>,
    field: &str,
    loc: &Location,
    diags: &mut Diagnostics,
) -> Option<(Arc<ServerConfig>, Vec<String>)> {
    let min = version(
        input.min_version,
        &format!("{field}.minProtocolVersion"),
        loc,
        diags,
    );
    let max = version(
        input.max_version,
        &format!("{field}.maxProtocolVersion"),
        loc,
        diags,
    );
    let versions: Vec<&'static SupportedProtocolVersion> =
        [(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| min.is_none_or(|m| *v >= m) && max.is_none_or(|m| *v <= m))
            .map(|(_, v)| v)
            .collect();
    if versions.is_empty() {
        let msg = "minProtocolVersion is above maxProtocolVersion";
        diags.error(loc, Some(field.to_owned()), msg);
        return None;
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if !input.cipher_suites.is_empty() {
        let mut tls12 = Vec::new();
        for (i, name) in input.cipher_suites.iter().enumerate() {
            match TLS12_SUITES.iter().find(|(n, _)| n == name) {
                Some((_, suite)) => tls12.push(*suite),
                None => {
                    let msg = format!(
                        "{name:?} is not a suite tracemesh offers (rustls: ECDHE with AES-GCM or CHACHA20-POLY1305); skipped"
                    );
                    diags.warn(loc, Some(format!("{field}.cipherSuites[{i}]")), msg);
                }
            }
        }
        if tls12.is_empty() && versions.iter().any(|v| **v == rustls::version::TLS12) {
            let msg = "no listed suite is available for TLS 1.2";
            diags.error(loc, Some(format!("{field}.cipherSuites")), msg);
            return None;
        }
        provider
            .cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || tls12.contains(s));
    }
    let provider = Arc::new(provider);
    let cert_pem = read(&input.files.cert, "server certificate", field, loc, diags);
    let key_pem = read(&input.files.key, "private key", field, loc, diags);
    let needs_ca = matches!(
        input.mode,
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    let ca_pem = match (&input.files.ca, needs_ca) {
        (Some(path), true) => read(path, "client CA bundle", field, loc, diags),
        (None, true) => {
            let msg = "MUTUAL needs a CA bundle for client certificates (`caCertificates`, or `ca.crt` beside the credential, or a `<name>-cacert` credential)";
            diags.error(loc, Some(field.to_owned()), msg);
            return None;
        }
        (_, false) => None,
    };
    // Revocation lists, and the CA bundle as chains are checked through
    // it then ([`material::bundle_for_revocation`]); errors name the
    // `caCrl` field (also for a Secret's `ca.crl`) and the file.
    let revocation = match (&input.files.crl, &ca_pem, needs_ca) {
        (Some(path), Some(ca), true) => {
            let pem = read(path, "revocation list", field, loc, diags)?;
            let parsed = material::revocation_lists(&pem, "caCrl").and_then(|crls| {
                Ok((
                    material::bundle_for_revocation(ca, "client CA bundle")?,
                    crls,
                ))
            });
            match parsed {
                Ok(parsed) => Some(parsed),
                Err(err) => {
                    let msg = format!("{}: {err}", path.display());
                    diags.error(loc, Some(format!("{field}.caCrl")), msg);
                    return None;
                }
            }
        }
        _ => None,
    };
    let more: Vec<Option<(String, String)>> = (input.files.more.iter())
        .map(|(cert, key)| {
            let cert = read(cert, "server certificate", field, loc, diags);
            let key = read(key, "private key", field, loc, diags);
            cert.zip(key)
        })
        .collect();
    let more: Vec<(String, String)> = more.into_iter().collect::<Option<_>>()?;
    let (cert_pem, key_pem) = (cert_pem?, key_pem?);
    let mut local_uris = Vec::new();
    let built = (|| -> Result<ServerConfig, material::MaterialError> {
        let certs = material::certificates(&cert_pem, "server certificate")?;
        if let Some(leaf) = certs.first().and_then(|c| tracemesh_ca::CertInfo::parse(c)) {
            local_uris = leaf.uri_sans().map(str::to_owned).collect();
        }
        let key = material::private_key(&key_pem)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let builder = match &ca_pem {
            Some(ca) => {
                let roots = match &revocation {
                    Some(((roots, _), _)) => roots.clone(),
                    None => material::root_store(ca, "client CA bundle")?,
                };
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                // Pins make a certificate required under OPTIONAL_MUTUAL
                // too: Envoy asks for one whenever its validation context
                // matches names or hashes (Envoy 1.40 refuses a client
                // without one there, and takes it with a CRL alone).
                let optional = input.mode == ServerTlsMode::OptionalMutual && input.pins.is_empty();
                let verifier = if optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                // Revocation lists cover every CA of a client's chain below
                // a root, as Envoy requires one for each: a certificate
                // whose issuer has none is refused, as is one checked
                // against a list past its nextUpdate.
                let verifier = match &revocation {
                    Some((_, crls)) => verifier
                        .with_crls(crls.clone())
                        .enforce_revocation_expiration(),
                    None => verifier,
                };
                let mut verifier = verifier
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                let intermediates = revocation.as_ref().map(|((_, i), _)| i.clone());
                if !input.pins.is_empty() || intermediates.as_ref().is_some_and(|i| !i.is_empty()) {
                    verifier = Arc::new(
                        CheckedClientVerifier::new(verifier, ClientCheck::Pins(input.pins.clone()))
                            .with_intermediates(intermediates.unwrap_or_default()),
                    );
                }
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        if more.is_empty() {
            return Ok(builder.with_single_cert(certs, key)?);
        }
        let mut keys = vec![Arc::new(CertifiedKey::from_der(certs, key, &provider)?)];
        for (cert, key) in &more {
            let certs = material::certificates(cert, "server certificate")?;
            let key = material::private_key(key)?;
            keys.push(Arc::new(CertifiedKey::from_der(certs, key, &provider)?));
        }
        Ok(builder.with_cert_resolver(Arc::new(CertificateSelector::new(keys))))
    })();
    match built {
        Ok(mut config) => {
            if input.alpn {
                config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
            }
            Some((Arc::new(config), local_uris))
        }
        Err(err) => {
            diags.error(loc, Some(field.to_owned()), err.to_string());
            None
        }
    }
}
