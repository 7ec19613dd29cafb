//! The `x-forwarded-client-cert` (XFCC) header, as Envoy's HTTP connection
//! manager writes it (`ConnectionManagerUtility::mutateXfccRequestHeader`)
//! under the settings istiod gives each listener: a sidecar's inbound
//! `APPEND_FORWARD` with Subject, URI and DNS (`buildSidecarInboundHTTPOpts`,
//! `GetProxyHeadersFromProxyConfig`), its outbound Envoy's default
//! `SANITIZE`, an ingress gateway's `gatewayTopology.forwardClientCertDetails`
//! (default `SANITIZE_SET`) with Subject, Cert, DNS and URI
//! (`buildGatewayConnectionManager`).
//!
//! A connection's element (`By=…;Hash=…;Subject="…";URI=…`) depends on the
//! client's certificate and this proxy's only: it is built once, when the
//! TLS handshake ends ([`element`]), and each request on the connection
//! reuses it ([`apply`]).

use http::{HeaderMap, HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use x509_parser::asn1_rs::{Tag, ToDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The header's name.
pub const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// How a listener treats the header (Envoy's `forward_client_cert_details`,
/// Istio's `ForwardClientCertDetails`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Removed from every request (Envoy's default; a sidecar's outbound).
    Sanitize,
    /// Passed on as received over mTLS with a client certificate; removed
    /// otherwise.
    ForwardOnly,
    /// Over mTLS with a client certificate, this connection's element is
    /// appended to what was received (`,` between elements); removed
    /// otherwise (a sidecar's inbound).
    AppendForward,
    /// Over mTLS with a client certificate, replaced by this connection's
    /// element; removed otherwise (an ingress gateway's default).
    SanitizeSet,
    /// Passed on as received, whatever the connection.
    AlwaysForwardOnly,
}

impl ForwardClientCert {
    /// Whether requests carry this connection's element (APPEND_FORWARD,
    /// SANITIZE_SET): only then is one built.
    pub fn sets_element(self) -> bool {
        matches!(self, Self::AppendForward | Self::SanitizeSet)
    }
}

/// Which of the client certificate's details the element carries beside
/// `By` and `Hash` (Envoy's `set_current_client_cert_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CertDetails {
    /// `Cert="<URL-encoded PEM>"`: the client's leaf certificate.
    pub cert: bool,
    /// `Chain="<URL-encoded PEM>"`: every certificate the client sent.
    pub chain: bool,
    /// `Subject="<RFC 2253>"` (written even when the subject is empty).
    pub subject: bool,
    /// `URI=<SAN>` per URI SAN (`URI=` when it has none).
    pub uri: bool,
    /// `DNS=<SAN>` per DNS SAN.
    pub dns: bool,
}

/// A listener's XFCC settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XfccPolicy {
    /// What becomes of the header.
    pub mode: ForwardClientCert,
    /// What this connection's element carries.
    pub details: CertDetails,
}

impl XfccPolicy {
    /// A sidecar's inbound as istiod renders it without `proxyHeaders`:
    /// APPEND_FORWARD with Subject, URI and DNS.
    pub const SIDECAR_INBOUND: Self = Self {
        mode: ForwardClientCert::AppendForward,
        details: CertDetails {
            cert: false,
            chain: false,
            subject: true,
            uri: true,
            dns: true,
        },
    };

    /// A sidecar's outbound: istiod sets nothing, so Envoy's SANITIZE.
    pub const SIDECAR_OUTBOUND: Self = Self {
        mode: ForwardClientCert::Sanitize,
        details: CertDetails {
            cert: false,
            chain: false,
            subject: false,
            uri: false,
            dns: false,
        },
    };

    /// An ingress gateway under `mode` (`gatewayTopology
    /// .forwardClientCertDetails`, SANITIZE_SET by default): istiod adds
    /// Subject, Cert, DNS and URI where the mode sets an element.
    pub const fn gateway(mode: ForwardClientCert) -> Self {
        Self {
            mode,
            details: CertDetails {
                cert: true,
                chain: false,
                subject: true,
                uri: true,
                dns: true,
            },
        }
    }
}

impl Default for XfccPolicy {
    fn default() -> Self {
        Self::SIDECAR_INBOUND
    }
}

/// The element a connection's requests carry: `By=` per URI SAN of the
/// certificate this proxy served (`local_uris`), `Hash=` the SHA-256 of
/// the client's leaf (DER, lowercase hex), then as `details` asks, in
/// Envoy's order, Cert, Chain, Subject, URI, DNS; `;` between them.
/// `None` when the client sent no certificate (Envoy then removes the
/// header) or the element is no header value.
pub fn element<'a>(
    details: &CertDetails,
    local_uris: impl IntoIterator<Item = &'a str>,
    client_chain: &[CertificateDer<'_>],
) -> Option<HeaderValue> {
    let leaf = client_chain.first()?;
    let mut parts: Vec<String> = Vec::new();
    for uri in local_uris {
        parts.push(format!("By={uri}"));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    parts.push(format!("Hash={}", hex(digest.as_ref())));
    let parsed = X509Certificate::from_der(leaf.as_ref())
        .ok()
        .map(|(_, c)| c);
    if details.cert {
        parts.push(format!("Cert=\"{}\"", url_encoded_pem(leaf.as_ref())));
    }
    if details.chain {
        let chain: String = client_chain
            .iter()
            .map(|c| url_encoded_pem(c.as_ref()))
            .collect();
        parts.push(format!("Chain=\"{chain}\""));
    }
    let (uris, dns) = parsed.as_ref().map(sans).unwrap_or_default();
    if details.subject {
        let subject = parsed
            .as_ref()
            .map(|c| rfc2253(c.subject()))
            .unwrap_or_default();
        parts.push(format!("Subject=\"{subject}\""));
    }
    if details.uri {
        if uris.is_empty() {
            parts.push("URI=".to_owned());
        }
        for uri in uris {
            parts.push(format!("URI={uri}"));
        }
    }
    if details.dns {
        for name in dns {
            parts.push(format!("DNS={name}"));
        }
    }
    HeaderValue::try_from(parts.join(";")).ok()
}

/// Applies `mode` to a request's headers: `client_certificate` says the
/// connection is TLS and its client presented a certificate, `element` is
/// the connection's ([`element`]; built where the mode sets one).
/// Allocates only to append to a received header.
pub fn apply(
    headers: &mut HeaderMap,
    mode: ForwardClientCert,
    client_certificate: bool,
    element: Option<&HeaderValue>,
) {
    if mode == ForwardClientCert::AlwaysForwardOnly {
        return;
    }
    if mode == ForwardClientCert::Sanitize || !client_certificate {
        crate::header_scan::remove(headers, &FORWARDED_CLIENT_CERT);
        return;
    }
    let Some(element) = element else {
        if mode != ForwardClientCert::ForwardOnly {
            crate::header_scan::remove(headers, &FORWARDED_CLIENT_CERT);
        }
        return;
    };
    match mode {
        // Forwarded as received (the other modes returned above).
        ForwardClientCert::AlwaysForwardOnly
        | ForwardClientCert::ForwardOnly
        | ForwardClientCert::Sanitize => {}
        ForwardClientCert::SanitizeSet => {
            headers.insert(FORWARDED_CLIENT_CERT, element.clone());
        }
        ForwardClientCert::AppendForward => {
            // Lines received are one value, joined with `,` as Envoy's
            // header map holds them; the element follows after a `,`.
            let mut received = headers.get_all(&FORWARDED_CLIENT_CERT).iter();
            let Some(first) = received.next() else {
                headers.insert(FORWARDED_CLIENT_CERT, element.clone());
                return;
            };
            let mut joined = first.as_bytes().to_vec();
            for line in received {
                if !joined.is_empty() && !line.is_empty() {
                    joined.push(b',');
                }
                joined.extend_from_slice(line.as_bytes());
            }
            if !joined.is_empty() {
                joined.push(b',');
            }
            joined.extend_from_slice(element.as_bytes());
            // Every part was a header value, so the join is one; were it
            // not, what was received is not passed on unvouched.
            let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| element.clone());
            headers.insert(FORWARDED_CLIENT_CERT, value);
        }
    }
}

/// Lowercase hex, as Envoy's `Hex::encode`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// A certificate as `PEM_write_bio_X509` writes it (64-column base64),
/// then URL-encoded as Envoy does it: `\n`, space, `+`, `/` and `=`
/// percent-encoded.
fn url_encoded_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 5 / 4);
    for c in pem.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// The certificate's URI and DNS SANs, in its order.
fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

/// The short names BoringSSL prints attribute types by (`XN_FLAG_FN_SN`).
const SHORT_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "serialNumber"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "street"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "title"),
    ("2.5.4.13", "description"),
    ("2.5.4.15", "businessCategory"),
    ("2.5.4.17", "postalCode"),
    ("2.5.4.41", "name"),
    ("2.5.4.42", "GN"),
    ("2.5.4.43", "initials"),
    ("2.5.4.44", "generationQualifier"),
    ("2.5.4.46", "dnQualifier"),
    ("2.5.4.65", "pseudonym"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
];

/// A name as Envoy prints a certificate's subject (`X509_NAME_print_ex`
/// with `XN_FLAG_RFC2253`): the last attribute first, `,` between RDNs and
/// `+` within one, short type names, RFC 2253 escapes, bytes past ASCII
/// and control characters as `\XX`; a value of a type that is no string,
/// or of an attribute type without a short name here (printed as its OID),
/// as `#` and its DER in hex.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut entries = Vec::new();
    for (index, rdn) in name.iter_rdn().enumerate() {
        for attribute in rdn.iter() {
            entries.push((index, attribute));
        }
    }
    let mut out = String::new();
    let mut previous = None;
    for (index, attribute) in entries.into_iter().rev() {
        if let Some(p) = previous {
            out.push(if p == index { '+' } else { ',' });
        }
        previous = Some(index);
        let oid = attribute.attr_type().to_id_string();
        let short = SHORT_NAMES.iter().find(|(o, _)| *o == oid).map(|(_, n)| *n);
        out.push_str(short.unwrap_or(&oid));
        out.push('=');
        let value = attribute.attr_value();
        let text = short.and_then(|_| string_value(value.tag(), value.data));
        match text {
            Some(text) => escape_into(&text, &mut out),
            None => {
                out.push('#');
                let der = value.to_der_vec().unwrap_or_default();
                out.push_str(&hex(&der).to_ascii_uppercase());
            }
        }
    }
    out
}

/// A string attribute's characters, for the string types BoringSSL
/// prints as text; `None` for the rest (dumped).
fn string_value(tag: Tag, data: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::T61String => Some(data.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// Appends `text` with BoringSSL's RFC 2253 escapes (`ASN1_STRFLGS_RFC2253`):
/// `\` and `"` always, `,+<>;` too, `#` or a space first and a space last;
/// each UTF-8 byte past ASCII and each control character as `\XX`.
fn escape_into(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let (first, last) = (i == 0, i + 1 == bytes.len());
        if !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\{b:02X}"));
        } else if matches!(b, b'\\' | b'"' | b',' | b'+' | b'<' | b'>' | b';')
            || (first && (b == b' ' || b == b'#'))
            || (last && b == b' ')
        {
            out.push('\\');
            out.push(char::from(b));
        } else {
            out.push(char::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn append_forward_joins_with_a_comma() {
        let element = HeaderValue::from_static("By=a;Hash=00;URI=b");
        let mut headers = HeaderMap::new();
        headers.append(&FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=x"));
        headers.append(&FORWARDED_CLIENT_CERT, HeaderValue::from_static("By=y"));
        let mode = ForwardClientCert::AppendForward;
        apply(&mut headers, mode, true, Some(&element));
        assert_eq!(
            headers
                .get_all(&FORWARDED_CLIENT_CERT)
                .iter()
                .collect::<Vec<_>>(),
            ["By=x,By=y,By=a;Hash=00;URI=b"]
        );
    }

    #[test]
    fn without_a_client_certificate_only_always_forward_only_keeps_it() {
        for mode in [
            ForwardClientCert::Sanitize,
            ForwardClientCert::ForwardOnly,
            ForwardClientCert::AppendForward,
            ForwardClientCert::SanitizeSet,
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(FORWARDED_CLIENT_CERT, HeaderValue::from_static("forged"));
            apply(&mut headers, mode, false, None);
            assert!(headers.get(FORWARDED_CLIENT_CERT).is_none(), "{mode:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED_CLIENT_CERT, HeaderValue::from_static("kept"));
        apply(
            &mut headers,
            ForwardClientCert::AlwaysForwardOnly,
            false,
            None,
        );
        assert_eq!(headers[FORWARDED_CLIENT_CERT], "kept");
    }

    /// What Envoy 1.40 wrote (APPEND_FORWARD, Subject, Cert, URI and DNS,
    /// its server certificate's URI SAN `spiffe://cluster.local/ns/default/sa/backend`)
    /// for a client certificate whose
    /// subject has an RDN of two attributes, escapes, bytes past ASCII and
    /// an attribute type BoringSSL has no name for (organizationIdentifier).
    #[test]
    fn the_element_is_what_envoy_writes() {
        let pem = include_str!("testdata/xfcc-client.pem");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let details = CertDetails {
            cert: true,
            chain: false,
            subject: true,
            uri: true,
            dns: true,
        };
        let by = ["spiffe://cluster.local/ns/default/sa/backend"];
        let element = element(&details, by, &chain).unwrap();
        let mut headers = HeaderMap::new();
        let mode = ForwardClientCert::AppendForward;
        apply(&mut headers, mode, true, Some(&element));
        assert_eq!(
            headers[FORWARDED_CLIENT_CERT],
            include_str!("testdata/xfcc-envoy-1.40.txt")
        );
    }

    #[test]
    fn escapes_as_rfc_2253() {
        let mut out = String::new();
        escape_into(" #a,b+c\"d\\é ", &mut out);
        assert_eq!(out, "\\ #a\\,b\\+c\\\"d\\\\\\C3\\A9\\ ");
    }
}
