//! DestinationRule `trafficPolicy.tls` → how a cluster's connections are
//! secured: DISABLE, SIMPLE and MUTUAL origination from files, ISTIO_MUTUAL
//! with the workload's identity, or Istio's auto mTLS when unset.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::config::destination_rule::ClientTlsSettings;
use crate::config::diagnostics::{Diagnostics, Location};
use crate::model::cluster::{Origination, TlsServer, UpstreamTls};
use crate::model::live::LiveState;
use crate::tls::material::{self, provider};
use crate::tls::verify::{MeshServerVerifier, NameCheck};

/// Where the system's CA bundle lives on Debian and friends, used by SIMPLE
/// origination without `caCertificates`.
const SYSTEM_ROOTS: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Checks a `tls` block; reported once per place it is written.
pub(super) fn validate(
    tls: &ClientTlsSettings,
    loc: &Location,
    field: &str,
    has_identity: bool,
    diags: &mut Diagnostics,
) {
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    let mut err = |sub: &str, msg: String| diags.error(loc, Some(format!("{field}.{sub}")), msg);
    match mode {
        "DISABLE" | "SIMPLE" => {}
        "MUTUAL" if tls.client_certificate.is_none() || tls.private_key.is_none() => {
            err(
                "mode",
                "MUTUAL needs clientCertificate and privateKey".into(),
            );
        }
        "MUTUAL" => {}
        "ISTIO_MUTUAL" if !has_identity => {
            err(
                "mode",
                "ISTIO_MUTUAL needs the Agent's spec.identity (the workload certificate)".into(),
            );
        }
        // The validator refused any other mode.
        _ => {}
    }
    if matches!(mode, "SIMPLE" | "MUTUAL") {
        for (sub, path) in [
            ("caCertificates", &tls.ca_certificates),
            ("caCrl", &tls.ca_crl),
            ("clientCertificate", &tls.client_certificate),
            ("privateKey", &tls.private_key),
        ] {
            if let Some(path) = path {
                diags.reading(std::path::Path::new(path));
                let read = std::fs::read_to_string(path).map_err(|e| e.to_string());
                if let Err(e) = read.and_then(|pem| holds(sub, &pem)) {
                    let at = format!("{field}.{sub}");
                    diags.error(loc, Some(at), format!("{path}: {e}"));
                }
            }
        }
    }
    if tls.credential_name.is_some() {
        let msg = "Kubernetes secrets are not read by the agent; use caCertificates/clientCertificate/privateKey files";
        diags.warn(loc, Some(format!("{field}.credentialName")), msg);
    }
}

/// Whether `pem`, the file of the `tls` field `sub`, holds what the field
/// names (CA certificates, revocation lists, a certificate chain, a
/// private key): an empty,
/// truncated or half-written file is an error here, so the config in force
/// stays, rather than a config whose every connection then fails.
fn holds(sub: &str, pem: &str) -> Result<(), String> {
    let held = match sub {
        "caCertificates" => material::root_store(pem, "caCertificates").map(drop),
        "caCrl" => material::revocation_lists(pem, "caCrl").map(drop),
        "clientCertificate" => material::certificates(pem, "clientCertificate").map(drop),
        _ => material::private_key(pem).map(drop),
    };
    held.map_err(|e| e.to_string())
}

/// The cluster's TLS for `host` (the service FQDN), with Istio's
/// `serviceAccounts` of the service — the ServiceEntry's
/// `subjectAltNames` and the SPIFFE identity of each endpoint's
/// `serviceAccount` in the mesh's trust domain and its aliases — which
/// mesh mTLS and, without `subjectAltNames` of its own, origination check
/// the server against; `http`: the cluster carries HTTP (Istio's
/// `auto_sni` and `auto_san_validation` are HTTP options, which a TCP
/// cluster's `tcp_proxy` never reads).
pub(super) fn upstream_tls(
    tls: Option<&ClientTlsSettings>,
    host: &str,
    service_accounts: &[String],
    has_identity: bool,
    http: bool,
    live: &LiveState,
) -> UpstreamTls {
    let mode = tls.and_then(|t| t.mode.as_deref());
    let sans = |t: Option<&ClientTlsSettings>| -> Box<[String]> {
        match t.map(|t| &t.subject_alt_names).filter(|s| !s.is_empty()) {
            Some(names) => names.as_slice().into(),
            None => service_accounts.into(),
        }
    };
    let mesh = |only_sidecars, sni: &str| UpstreamTls::Mesh {
        only_sidecars,
        server: ServerName::try_from(sni.to_owned())
            .ok()
            .map(|server_name| {
                Arc::new(TlsServer {
                    server_name,
                    expected: sans(tls),
                })
            }),
    };
    // Auto mTLS only without a `tls` block: one without a `mode` is
    // DISABLE (the field's default), which Istio's
    // `buildUpstreamTLSSettings` takes as the user's choice.
    match (tls, mode) {
        (None, _) if has_identity => mesh(true, host),
        (None, _) | (Some(_), None | Some("DISABLE")) => UpstreamTls::Plain,
        (Some(t), Some("ISTIO_MUTUAL")) => mesh(false, t.sni.as_deref().unwrap_or(host)),
        (Some(t), Some(_)) => match originate(t, host, service_accounts, http, live) {
            Ok(origination) => origination,
            Err(reason) => UpstreamTls::Broken(reason.into()),
        },
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

/// SIMPLE or MUTUAL origination: configs for both ALPN protocols, the
/// running config's when its settings and files are the same (Envoy keeps
/// the connection pools of a cluster a config update leaves unchanged).
/// `service_accounts`: Istio's `serviceAccounts` of the service
/// ([`upstream_tls`]); `http`: the
/// cluster carries HTTP.
fn originate(
    tls: &ClientTlsSettings,
    host: &str,
    service_accounts: &[String],
    http: bool,
    live: &LiveState,
) -> Result<UpstreamTls, String> {
    // A wildcard host (`*.example.com`) names no server: with auto SNI each
    // HTTP request's authority does, and the wildcard's domain stands for
    // a connection without one (TCP).
    let sni =
        (tls.sni.clone()).unwrap_or_else(|| host.strip_prefix("*.").unwrap_or(host).to_owned());
    let server_name = ServerName::try_from(sni.clone()).map_err(|e| format!("sni {sni:?}: {e}"))?;
    let roots_pem = match &tls.ca_certificates {
        Some(path) => read(path)?,
        None => SYSTEM_ROOTS
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default(),
    };
    // The name checked, as Istio's `constructUpstreamTLS` and
    // `setAutoSniAndAutoSanValidation` render it: the rule's
    // `subjectAltNames`; else, without `sni` on an HTTP cluster, the name
    // each connection is opened for (`auto_san_validation`; `tcp_proxy`
    // reads no such option) and, when the service has accounts (the
    // ServiceEntry's `subjectAltNames` and its endpoints' identities),
    // one of them too — Envoy 1.40 checks the validation context's
    // matchers beside the automatic name; else those accounts; else the
    // chain alone.
    let check = if tls.insecure_skip_verify == Some(true) {
        NameCheck::Skip
    } else if !tls.subject_alt_names.is_empty() {
        NameCheck::AnyOf(tls.subject_alt_names.clone())
    } else if tls.sni.is_none() && http && service_accounts.is_empty() {
        NameCheck::ServerName
    } else if tls.sni.is_none() && http {
        NameCheck::ServerNameAnd(service_accounts.to_vec())
    } else if !service_accounts.is_empty() {
        NameCheck::AnyOf(service_accounts.to_vec())
    } else {
        NameCheck::Chain
    };
    let client_files = match (&tls.client_certificate, &tls.private_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    // `caCrl`: no list when verification is skipped, as Envoy then has
    // no validation context.
    let crl_pem = match &tls.ca_crl {
        Some(path) if !matches!(check, NameCheck::Skip) => read(path)?,
        _ => String::new(),
    };
    // Istio's `auto_sni`: no `sni`, so each HTTP request's authority.
    let auto_sni = tls.sni.is_none();
    let key = origination_key(
        &sni,
        auto_sni,
        &check,
        &roots_pem,
        &crl_pem,
        client_files.as_ref(),
    );
    let build = || -> Result<Origination, String> {
        let roots = if roots_pem.is_empty() && matches!(check, NameCheck::Skip) {
            Arc::new(rustls::RootCertStore::empty())
        } else {
            material::root_store(&roots_pem, "caCertificates").map_err(|e| e.to_string())?
        };
        let revocation = if crl_pem.is_empty() {
            None
        } else {
            Some((
                material::bundle_for_revocation(&roots_pem, "caCertificates")
                    .map_err(|e| e.to_string())?,
                material::revocation_lists(&crl_pem, "caCrl").map_err(|e| e.to_string())?,
            ))
        };
        let client_auth = match &client_files {
            Some((cert, key)) => Some((
                material::certificates(cert, "clientCertificate").map_err(|e| e.to_string())?,
                material::private_key(key).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let config = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
            let provider = provider();
            let mut verifier = MeshServerVerifier::new(roots.clone(), &provider, check.clone());
            if let Some((bundle, crls)) = &revocation {
                verifier = verifier
                    .with_crls(provider.clone(), bundle.clone(), crls.clone())
                    .map_err(|e| e.to_string())?;
            }
            let builder = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier));
            let mut config = match &client_auth {
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| e.to_string())?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Origination {
            h1: config(b"http/1.1")?,
            h2: config(b"h2")?,
            server: Arc::new(TlsServer {
                server_name,
                expected: Box::default(),
            }),
            auto_sni,
        })
    };
    live.origination(&key, build).map(UpstreamTls::Originate)
}

/// What an origination is built from, as a SHA-256 digest in hex: the SNI
/// (and whether requests replace it), the name check and the contents of
/// its files, each length-prefixed.
fn origination_key(
    sni: &str,
    auto_sni: bool,
    check: &NameCheck,
    roots_pem: &str,
    crl_pem: &str,
    client_files: Option<&(String, String)>,
) -> String {
    let check = format!("{check:?}");
    let (cert, key) = client_files.map_or(("", ""), |(c, k)| (c.as_str(), k.as_str()));
    let auto_sni = if auto_sni { "auto" } else { "fixed" };
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [sni, auto_sni, &check, roots_pem, crl_pem, cert, key] {
        digest.update(&(part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
