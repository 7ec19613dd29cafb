//! Protocol detection from a connection's first bytes, as Envoy's
//! `http_inspector` and `tls_inspector` listener filters do for Istio's
//! protocol sniffing: an HTTP/1.x request line, the HTTP/2 connection
//! preface, or a TLS ClientHello (with its SNI and ALPN); anything else is
//! opaque TCP. A pure function over a byte buffer, allocation-free but for
//! a ClientHello split over several TLS records, reassembled as a TLS
//! server reassembles it.

use std::borrow::Cow;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes worth reading: one whole TLS record (5-byte header and the
/// largest plaintext fragment, RFC 8446 §5.1), more than a ClientHello may
/// take ([`MAX_CLIENT_HELLO`]). A request line longer than this is not
/// sniffed as HTTP.
pub const MAX_SNIFF: usize = 5 + (1 << 14);

/// Most bytes of a connection a ClientHello may take, its records' headers
/// included: Envoy's `tls_inspector` reads no more
/// (`max_client_hello_size`, 16 KiB by default) and closes a connection
/// whose hello is not whole by then (`client_hello_too_large`).
pub const MAX_CLIENT_HELLO: usize = 1 << 14;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed<'a> {
    /// Not enough bytes to tell yet.
    NeedMore,
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 preface (h2c with prior knowledge).
    Http2,
    /// A TLS ClientHello.
    Tls(ClientHello<'a>),
    /// A ClientHello longer than is read of any ([`MAX_CLIENT_HELLO`]): Envoy's
    /// `tls_inspector` closes such a connection (`client_hello_too_large`).
    TooLarge,
    /// Anything else: proxied as bytes.
    Opaque,
}

/// What a ClientHello asks for: borrowed from the buffer when the hello
/// came in one record, owned when it was reassembled from several.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello<'a> {
    /// The `server_name` extension's host name (RFC 6066 §3), when sent
    /// and valid UTF-8; lower-cased by the caller if needed.
    pub sni: Option<Cow<'a, str>>,
    /// The raw `application_layer_protocol_negotiation` protocol list
    /// (RFC 7301 §3.1, without its length prefix); see [`ClientHello::alpn`].
    pub alpn_list: Option<Cow<'a, [u8]>>,
}

impl ClientHello<'_> {
    /// The ALPN protocols offered, in order (`h2`, `http/1.1`, `istio`…).
    pub fn alpn(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.alpn_list.as_deref().unwrap_or_default();
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let len = usize::from(len);
            if len == 0 || tail.len() < len {
                rest = &[];
                return None;
            }
            let (name, tail) = tail.split_at(len);
            rest = tail;
            Some(name)
        })
    }
}

/// Classifies the first bytes of a connection. `NeedMore` until they decide;
/// call [`sniff_final`] when no more will come (end of stream, timeout,
/// [`MAX_SNIFF`] bytes read).
pub fn sniff(buf: &[u8]) -> Sniffed<'_> {
    let Some(&first) = buf.first() else {
        return Sniffed::NeedMore;
    };
    if first == 0x16 {
        return tls(buf);
    }
    let preface = buf.len().min(H2_PREFACE.len());
    if buf[..preface] == H2_PREFACE[..preface] {
        return if preface == H2_PREFACE.len() {
            Sniffed::Http2
        } else {
            Sniffed::NeedMore
        };
    }
    http1(buf)
}

/// Whether the first bytes are TLS, and its ClientHello when they are; any
/// first byte but a handshake record's decides `Opaque` at once (for a
/// port whose protocol is declared, where only mTLS is in question).
pub fn sniff_tls(buf: &[u8]) -> Sniffed<'_> {
    match buf.first() {
        None => Sniffed::NeedMore,
        Some(0x16) => tls(buf),
        Some(_) => Sniffed::Opaque,
    }
}

/// [`sniff`] when no more bytes will come: undecided is opaque.
pub fn sniff_final(buf: &[u8]) -> Sniffed<'_> {
    match sniff(buf) {
        Sniffed::NeedMore => Sniffed::Opaque,
        decided => decided,
    }
}

/// The methods Envoy's HTTP/1 codec takes (http-parser's list); any other
/// token, lowercase spellings of these included, gets 400 there. Methods
/// are case-sensitive (RFC 9110 §9.1), and an AuthorizationPolicy on `GET`
/// does not match `get`, which an app may still serve as GET — whichever
/// HTTP version carried it, so HTTP/2 is held to the same list (Envoy
/// takes any token there).
pub const HTTP1_METHODS: [&str; 34] = [
    "DELETE",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PATCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
];

/// `tchar` of RFC 9110 §5.6.2.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `method SP request-target SP HTTP/1.x CRLF` (RFC 9112 §3), the method
/// one of [`HTTP1_METHODS`] (the only ones the agent serves, as Envoy's
/// codec): bytes that cannot begin one decide at once, so a client whose
/// first write is `ruok` or `PING` is not kept waiting for a line it will
/// never send.
fn http1(buf: &[u8]) -> Sniffed<'_> {
    let method = buf.iter().take_while(|b| is_token(**b)).count();
    let word = &buf[..method];
    let begins_one = |m: &&str| m.as_bytes().starts_with(word);
    if method == buf.len() {
        return if HTTP1_METHODS.iter().any(begins_one) {
            Sniffed::NeedMore
        } else {
            Sniffed::Opaque
        };
    }
    if buf[method] != b' ' || !HTTP1_METHODS.iter().any(|m| m.as_bytes() == word) {
        return Sniffed::Opaque;
    }
    let rest = &buf[method + 1..];
    let target = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    if target == rest.len() {
        return Sniffed::NeedMore;
    }
    if target == 0 || rest[target] != b' ' {
        return Sniffed::Opaque;
    }
    let version = &rest[target + 1..];
    for want in [
        &b"HTTP/1.1\r\n"[..],
        b"HTTP/1.0\r\n",
        b"HTTP/1.1\n",
        b"HTTP/1.0\n",
    ] {
        let n = version.len().min(want.len());
        if version[..n] == want[..n] {
            return if n == want.len() {
                Sniffed::Http1
            } else {
                Sniffed::NeedMore
            };
        }
    }
    Sniffed::Opaque
}

/// A cursor over big-endian TLS fields; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }

    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let len = match len_bytes {
            1 => self.u8()?,
            2 => self.u16()?,
            _ => self.u24()?,
        };
        self.take(len)
    }
}

/// A TLS record carrying a ClientHello (RFC 8446 §4.1.2, §5.1), or the
/// first of the records it is fragmented over (§5.1: a handshake message
/// may span records), which are then reassembled as a TLS server does —
/// copied once, when the whole message is there. Handshake bytes after the
/// hello in its last record are refused, as BoringSSL refuses them
/// (`has_unprocessed_handshake_data`).
fn tls(buf: &[u8]) -> Sniffed<'_> {
    // A first record longer than a hello may be: too large whatever it
    // holds, once its header is whole and it may still be a ClientHello.
    if let Some(&[0x16, 3, _, high, low]) = buf.get(..5)
        && buf.get(5).is_none_or(|&kind| kind == 1)
        && 5 + usize::from(u16::from_be_bytes([high, low])) > MAX_CLIENT_HELLO
    {
        return Sniffed::TooLarge;
    }
    let mut records = Reader(buf);
    let first = match handshake_record(&mut records) {
        Ok(fragment) => fragment,
        // The first record's header is whole and well-formed: its first
        // byte after it says which handshake message it carries.
        Err(Sniffed::NeedMore) if buf.get(5).is_some_and(|&kind| kind != 1) => {
            return Sniffed::Opaque;
        }
        Err(undecided) => return undecided,
    };
    if first[0] != 1 {
        return Sniffed::Opaque;
    }
    if let Some(len) = message_len(first).filter(|&len| len <= first.len()) {
        return match client_hello(&first[4..len]).filter(|_| len == first.len()) {
            Some(hello) => Sniffed::Tls(hello),
            None => Sniffed::Opaque,
        };
    }
    // Walk the further records until the message is whole, copying only
    // its 4-byte header: a client sending a byte at a time is sniffed
    // again at each, and must not be copied each time.
    let rest = records.0;
    let mut header = [0u8; 4];
    let mut have = 0;
    let mut total = 0;
    let mut walk = Reader(rest);
    let mut fragment = first;
    let len = loop {
        let take = fragment.len().min(4 - have);
        header[have..have + take].copy_from_slice(&fragment[..take]);
        have += take;
        total += fragment.len();
        if let Some(len) = message_len(&header[..have]) {
            if len + 2 * 5 > MAX_CLIENT_HELLO {
                return Sniffed::TooLarge;
            }
            if total >= len {
                break len;
            }
        }
        fragment = match handshake_record(&mut walk) {
            Ok(fragment) => fragment,
            Err(Sniffed::NeedMore) if buf.len() >= MAX_CLIENT_HELLO => return Sniffed::TooLarge,
            Err(undecided) => return undecided,
        };
        if buf.len() - walk.0.len() > MAX_CLIENT_HELLO {
            return Sniffed::TooLarge;
        }
    };
    if total != len {
        return Sniffed::Opaque;
    }
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(first);
    let mut again = Reader(rest);
    while message.len() < len {
        match handshake_record(&mut again) {
            Ok(fragment) => message.extend_from_slice(fragment),
            Err(undecided) => return undecided,
        }
    }
    match client_hello(&message[4..]) {
        Some(hello) => Sniffed::Tls(ClientHello {
            sni: hello.sni.map(|sni| Cow::Owned(sni.into_owned())),
            alpn_list: hello.alpn_list.map(|list| Cow::Owned(list.into_owned())),
        }),
        None => Sniffed::Opaque,
    }
}

/// The length of the handshake message `message` begins (its 4-byte
/// header included), once that header is all there.
fn message_len(message: &[u8]) -> Option<usize> {
    let mut header = Reader(message);
    header.u8()?;
    Some(4 + header.u24()?)
}

/// The fragment of the next record when it is a whole, well-formed
/// handshake record (content type 22, version 3.x, 1 to 2^14 bytes); `Err`
/// with what that says otherwise: `NeedMore` for a record not all here yet
/// (its header plausible so far), `Opaque` for anything else.
fn handshake_record<'a>(records: &mut Reader<'a>) -> Result<&'a [u8], Sniffed<'a>> {
    let buf = records.0;
    let Some(header) = records.take(5) else {
        // Check what is there: content type 22, version 3.x.
        // Any 3.x record version: BoringSSL reads only the major one.
        let plausible = buf.first().is_none_or(|&kind| kind == 0x16)
            && buf.get(1).is_none_or(|&major| major == 3);
        return Err(if plausible {
            Sniffed::NeedMore
        } else {
            Sniffed::Opaque
        });
    };
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if header[0] != 0x16 || header[1] != 3 || length == 0 || length > 1 << 14 {
        return Err(Sniffed::Opaque);
    }
    records.take(length).ok_or(Sniffed::NeedMore)
}

/// The extensions of a ClientHello body; `None` when it is malformed in a
/// way BoringSSL refuses before Envoy's `tls_inspector` sees a name (a
/// hello it refuses is no TLS to the inspector): a session id over 32
/// bytes, no or an odd count of cipher suite bytes, a `legacy_version`
/// that is no TLS 1.0 or later, bytes after the
/// extensions, an extension sent twice, a `server_name`
/// that is not exactly one non-empty `host_name` without NUL. Not checked
/// here: the content of other extensions (`supported_versions`,
/// `supported_groups`…), which BoringSSL parses too. A malformed ALPN list
/// leaves the hello without ALPN, as `tls_inspector` drops it.
fn client_hello(body: &[u8]) -> Option<ClientHello<'_>> {
    let mut r = Reader(body);
    // legacy_version: SSL 3.0 and below, or another major version, is no
    // hello Envoy 1.40's inspector reads (it closes them); TLS 1.0 and up,
    // 3.4 and past included (TLS 1.3 names itself in `supported_versions`).
    let version = r.u16()?;
    if version >> 8 != 3 || version & 0xff == 0 {
        return None;
    }
    r.take(32)?; // random
    // BoringSSL's `ssl_parse_client_hello_with_trailing_data`: a session
    // id of at most 32 bytes, cipher suites in pairs (at least one).
    let session_id = r.vec(1)?;
    let cipher_suites = r.vec(2)?;
    r.vec(1)?; // legacy_compression_methods
    if session_id.len() > 32 || cipher_suites.is_empty() || cipher_suites.len() % 2 != 0 {
        return None;
    }
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Some(hello); // no extensions (TLS 1.2 allows it)
    }
    let mut extensions = Reader(r.vec(2)?);
    if !r.0.is_empty() {
        return None;
    }
    let mut seen = [0u64; 1 << 10];
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec(2)?;
        let (word, bit) = (kind / 64, 1u64 << (kind % 64));
        if seen[word] & bit != 0 {
            return None;
        }
        seen[word] |= bit;
        match kind {
            0 => hello.sni = Some(server_name(data)?),
            16 => hello.alpn_list = alpn_list(data).map(Cow::Borrowed),
            _ => {}
        }
    }
    Some(hello)
}

/// The one `host_name` of a `server_name` extension (RFC 6066 §3, as
/// BoringSSL takes it: one entry, no other name type, 1 to 255 bytes, no
/// NUL); bytes that are no UTF-8 are kept as replacement characters, so a
/// name still matches a wildcard on its other labels, as Envoy matches
/// the raw name.
fn server_name(data: &[u8]) -> Option<Cow<'_, str>> {
    let mut extension = Reader(data);
    let mut list = Reader(extension.vec(2)?);
    let kind = list.u8()?;
    let name = list.vec(2)?;
    let one_host_name = extension.0.is_empty() && list.0.is_empty() && kind == 0;
    (one_host_name && !name.is_empty() && name.len() <= 255 && !name.contains(&0))
        .then(|| String::from_utf8_lossy(name))
}

/// The protocol list of an `application_layer_protocol_negotiation`
/// extension when it is well formed (RFC 7301 §3.1: one list of non-empty
/// names filling the extension), as Envoy's `tls_inspector` reads it.
fn alpn_list(data: &[u8]) -> Option<&[u8]> {
    let mut extension = Reader(data);
    let list = extension.vec(2)?;
    if !extension.0.is_empty() || list.is_empty() {
        return None;
    }
    let mut names = Reader(list);
    while !names.0.is_empty() {
        if names.vec(1)?.is_empty() {
            return None;
        }
    }
    Some(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls would send it, with `extensions` appended.
    fn client_hello_record(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        hello_record(body)
    }

    /// A ClientHello `body` in its handshake header, in one record.
    fn hello_record(body: Vec<u8>) -> Vec<u8> {
        let mut handshake = vec![1];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![0x16, 3, 1];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    fn sni_extension(name: &str) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        let mut ext = vec![0, 0];
        ext.extend((list.len() as u16).to_be_bytes());
        ext.extend(list);
        ext
    }

    fn alpn_extension(protocols: &[&str]) -> Vec<u8> {
        let mut list = Vec::new();
        for p in protocols {
            list.push(p.len() as u8);
            list.extend(p.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        let mut ext = vec![0, 16];
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
        ext
    }

    #[test]
    fn http1_request_lines() {
        assert_eq!(
            sniff(b"GET /reviews/0 HTTP/1.1\r\nHost: reviews\r\n"),
            Sniffed::Http1
        );
        assert_eq!(sniff(b"OPTIONS * HTTP/1.0\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"M-SEARCH * HTTP/1.1\n"), Sniffed::Http1);
        assert_eq!(
            sniff(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Sniffed::Http1
        );
        for partial in [
            &b"G"[..],
            b"GET",
            b"GET ",
            b"GET /a",
            b"GET /a ",
            b"GET /a HTTP/1",
            b"GET /a HTTP/1.1\r",
        ] {
            assert_eq!(
                sniff(partial),
                Sniffed::NeedMore,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
            assert_eq!(sniff_final(partial), Sniffed::Opaque);
        }
    }

    #[test]
    fn what_is_not_http1_is_opaque_as_soon_as_it_shows() {
        for bytes in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"GET /a HTTP/2.0\r\n",
            b"GET /a HTTP/1.2\r\n",
            b"GET  /a HTTP/1.1\r\n",
            b"GET /a\tb HTTP/1.1\r\n",
            b"\0\0\0\x0c",
            b"*3\r\n$3\r\nSET\r\n",
            b"{\"json\": true}",
            b"HELLO",
        ] {
            let got = sniff_final(bytes);
            assert_eq!(got, Sniffed::Opaque, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(
            sniff(&[b'A'; 40]),
            Sniffed::Opaque,
            "an endless method is no method"
        );
        assert_eq!(sniff(b""), Sniffed::NeedMore);
    }

    #[test]
    fn a_first_write_that_begins_no_method_decides_at_once() {
        // Without a line end, these were held until one came (a ZooKeeper
        // `ruok` waited for ever): only a prefix of a method the agent
        // serves keeps sniffing.
        for bytes in [
            &b"x"[..],
            b"ruok",
            b"PING",
            b"AUTH secret",
            b"0123",
            b"ab cd",
            b"get / HTTP/1.1\r\n",
            b"FOO / HTTP/1.1\r\n",
        ] {
            assert_eq!(
                sniff(bytes),
                Sniffed::Opaque,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        for prefix in [&b"G"[..], b"P", b"PU", b"M-SEA", b"PROPF", b"PR"] {
            assert_eq!(
                sniff(prefix),
                Sniffed::NeedMore,
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
    }

    #[test]
    fn the_http2_preface() {
        assert_eq!(sniff(H2_PREFACE), Sniffed::Http2);
        let mut with_settings = H2_PREFACE.to_vec();
        with_settings.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(sniff(&with_settings), Sniffed::Http2);
        assert_eq!(sniff(&H2_PREFACE[..10]), Sniffed::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nXX"), Sniffed::Opaque);
    }

    #[test]
    fn a_client_hello_gives_its_sni_and_alpn() {
        let mut extensions = sni_extension("reviews.default.svc.cluster.local");
        extensions.extend(alpn_extension(&["h2", "http/1.1"]));
        let record = client_hello_record(&extensions);
        let Sniffed::Tls(hello) = sniff(&record) else {
            panic!("not TLS: {:?}", sniff(&record));
        };
        assert_eq!(
            hello.sni.as_deref(),
            Some("reviews.default.svc.cluster.local")
        );
        let alpn: Vec<&[u8]> = hello.alpn().collect();
        assert_eq!(alpn, [&b"h2"[..], b"http/1.1"]);
        for cut in [1, 3, 5, 6, record.len() - 1] {
            assert_eq!(sniff(&record[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        let bare = client_hello_record(&[]);
        assert_eq!(sniff(&bare), Sniffed::Tls(ClientHello::default()));
    }

    #[test]
    fn a_real_rustls_client_hello() {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"istio".to_vec(), b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("ratings.example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).unwrap();
        let Sniffed::Tls(hello) = sniff(&wire) else {
            panic!("rustls' hello is TLS");
        };
        assert_eq!(hello.sni.as_deref(), Some("ratings.example.com"));
        assert_eq!(hello.alpn().next(), Some(&b"istio"[..]));
    }

    #[test]
    fn broken_or_other_tls_records_are_opaque_and_never_panic() {
        assert_eq!(
            sniff(&[0x16, 2]),
            Sniffed::Opaque,
            "SSLv2-era major version"
        );
        // Any 3.x record version is TLS's, as BoringSSL reads it.
        assert_eq!(sniff(&[0x16, 3, 9]), Sniffed::NeedMore);
        assert_eq!(sniff(&[0x16, 3, 1, 0, 0]), Sniffed::Opaque, "empty record");
        assert_eq!(
            sniff(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Sniffed::Opaque,
            "a ServerHello"
        );
        let mut record = client_hello_record(&sni_extension("a.example"));
        // Lie about the extensions' length: malformed, not a panic.
        let at = record.len() - sni_extension("a.example").len() - 2;
        record[at] = 0xff;
        assert_eq!(sniff(&record), Sniffed::Opaque);
        // Every prefix and every single-byte corruption of a hello is handled.
        let good = client_hello_record(&sni_extension("b.example"));
        for i in 0..good.len() {
            let _ = sniff(&good[..i]);
            let mut bad = good.clone();
            bad[i] ^= 0xa5;
            let _ = sniff(&bad);
        }
    }

    /// `sniffed` holding its own bytes.
    fn owned(sniffed: Sniffed<'_>) -> Sniffed<'static> {
        match sniffed {
            Sniffed::Tls(hello) => Sniffed::Tls(ClientHello {
                sni: hello.sni.map(|n| Cow::Owned(n.into_owned())),
                alpn_list: hello.alpn_list.map(|l| Cow::Owned(l.into_owned())),
            }),
            Sniffed::NeedMore => Sniffed::NeedMore,
            Sniffed::Http1 => Sniffed::Http1,
            Sniffed::Http2 => Sniffed::Http2,
            Sniffed::Opaque => Sniffed::Opaque,
            Sniffed::TooLarge => Sniffed::TooLarge,
        }
    }

    /// Hellos BoringSSL refuses before it reads a name are no TLS to
    /// Envoy's `tls_inspector`, nor here; a malformed ALPN list is dropped,
    /// the hello kept.
    #[test]
    fn hellos_a_tls_server_refuses_are_opaque_and_bad_alpn_lists_dropped() {
        let hello = |extensions: &[u8]| owned(sniff(&client_hello_record(extensions)));
        let sni = sni_extension("db.example.com");
        let twice = [sni.clone(), sni_extension("other.example.com")].concat();
        assert_eq!(hello(&twice), Sniffed::Opaque, "server_name sent twice");
        let padding = [0, 21, 0, 1, 0];
        assert_eq!(
            hello(&[&sni[..], &padding, &padding].concat()),
            Sniffed::Opaque,
            "padding sent twice"
        );
        let server_name = |entries: &[(u8, &[u8])]| {
            let mut list = Vec::new();
            for (kind, name) in entries {
                list.push(*kind);
                list.extend((name.len() as u16).to_be_bytes());
                list.extend(*name);
            }
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            let mut ext = vec![0, 0];
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
            ext
        };
        for (entries, why) in [
            (
                &[(0, &b"db.example.com"[..]), (0, b"other.example.com")][..],
                "two names",
            ),
            (
                &[(1, &b"x"[..]), (0, b"db.example.com")],
                "another name type first",
            ),
            (&[(0, &b""[..])], "an empty name"),
            (&[(0, &b"db\0.example.com"[..])], "a NUL"),
        ] {
            assert_eq!(hello(&server_name(entries)), Sniffed::Opaque, "{why}");
        }
        let Sniffed::Tls(latin) = hello(&server_name(&[(0, b"\xffdb.example.com")])) else {
            panic!("a name of no UTF-8 is still TLS");
        };
        assert_eq!(latin.sni.as_deref(), Some("\u{fffd}db.example.com"));
        // Bytes after the extensions.
        let mut trailing = client_hello_record(&sni);
        trailing.push(0);
        let len = u16::from_be_bytes([trailing[3], trailing[4]]) + 1;
        trailing[3..5].copy_from_slice(&len.to_be_bytes());
        let body = u32::from_be_bytes([0, trailing[6], trailing[7], trailing[8]]) + 1;
        trailing[6..9].copy_from_slice(&body.to_be_bytes()[1..]);
        assert_eq!(
            sniff(&trailing),
            Sniffed::Opaque,
            "bytes after the extensions"
        );
        // ALPN lists with an empty name, or bytes after the list.
        let alpn = |data: &[u8]| {
            let mut ext = vec![0, 16];
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
            let Sniffed::Tls(hello) = hello(&[&sni[..], &ext].concat()) else {
                panic!("a bad ALPN list leaves a hello");
            };
            assert_eq!(hello.sni.as_deref(), Some("db.example.com"));
            hello.alpn().map(<[u8]>::to_vec).collect::<Vec<_>>()
        };
        assert_eq!(
            alpn(&[0, 6, 5, b'i', b's', b't', b'i', b'o']),
            [b"istio".to_vec()]
        );
        assert!(alpn(&[0, 7, 5, b'i', b's', b't', b'i', b'o', 0]).is_empty());
        assert!(alpn(&[0, 6, 5, b'i', b's', b't', b'i', b'o', 9]).is_empty());
        assert!(alpn(&[0, 0]).is_empty());
        // The hello's fixed fields, as BoringSSL reads them.
        let record_of = |session: usize, suites: &[u8], compression: &[u8]| {
            let mut body = vec![3, 3];
            body.extend([7u8; 32]);
            body.push(session as u8);
            body.extend(vec![1u8; session]);
            body.extend((suites.len() as u16).to_be_bytes());
            body.extend(suites);
            body.push(compression.len() as u8);
            body.extend(compression);
            body.extend((sni.len() as u16).to_be_bytes());
            body.extend(&sni);
            hello_record(body)
        };
        assert!(matches!(
            sniff(&record_of(32, &[0x13, 1], &[0])),
            Sniffed::Tls(_)
        ));
        // legacy_version as Envoy 1.40 reads it: TLS 1.0 up to any 3.x
        // routed, SSL 3.0, SSL 2.0 and another major version closed.
        let versioned = |version: [u8; 2]| {
            let mut record = record_of(0, &[0x13, 1], &[0]);
            record[9..11].copy_from_slice(&version);
            matches!(sniff(&record), Sniffed::Tls(_))
        };
        for version in [[3, 1], [3, 3], [3, 4], [3, 0x7f]] {
            assert!(versioned(version), "{version:?}");
        }
        for version in [[3, 0], [2, 0], [0x7f, 0x7f], [4, 1]] {
            assert!(!versioned(version), "{version:?}");
        }
        for (record, why) in [
            (
                record_of(33, &[0x13, 1], &[0]),
                "a session id over 32 bytes",
            ),
            (
                record_of(0, &[0x13, 1, 0x13], &[0]),
                "an odd cipher suite list",
            ),
            (record_of(0, &[], &[0]), "no cipher suite"),
        ] {
            assert_eq!(sniff(&record), Sniffed::Opaque, "{why}");
        }
        // A handshake byte after the hello in its record.
        let mut after = client_hello_record(&sni);
        after.push(0);
        let len = u16::from_be_bytes([after[3], after[4]]) + 1;
        after[3..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(sniff(&after), Sniffed::Opaque, "bytes after the hello");
    }

    /// `record`'s handshake message cut into records of `sizes` bytes
    /// (the last takes what is left).
    fn refragment(record: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut message = &record[5..];
        let mut wire = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let size = if i + 1 == sizes.len() {
                message.len()
            } else {
                size
            };
            let (fragment, rest) = message.split_at(size);
            wire.extend([0x16, 3, 1]);
            wire.extend((fragment.len() as u16).to_be_bytes());
            wire.extend(fragment);
            message = rest;
        }
        wire
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let mut extensions = sni_extension("c.example");
        extensions.extend(alpn_extension(&["istio-peer-exchange", "istio"]));
        let whole = client_hello_record(&extensions);
        // The handshake header itself split, then the extensions.
        for sizes in [&[20, 0][..], &[2, 0], &[1, 1, 1, 40, 0], &[60, 0]] {
            let wire = refragment(&whole, sizes);
            let Sniffed::Tls(hello) = sniff(&wire) else {
                panic!("{sizes:?}: not TLS: {:?}", sniff(&wire));
            };
            assert_eq!(hello.sni.as_deref(), Some("c.example"), "{sizes:?}");
            let alpn: Vec<&[u8]> = hello.alpn().collect();
            assert_eq!(alpn, [&b"istio-peer-exchange"[..], b"istio"], "{sizes:?}");
            for cut in 1..wire.len() {
                assert_eq!(
                    sniff(&wire[..cut]),
                    Sniffed::NeedMore,
                    "{sizes:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_split_hello_broken_or_too_large_is_decided_without_reading_on() {
        let whole = client_hello_record(&sni_extension("d.example"));
        let wire = refragment(&whole, &[20, 0]);
        // Another content type where the hello goes on (an alert).
        let mut interleaved = wire[..25].to_vec();
        interleaved.extend([0x15, 3, 3, 0, 2, 2, 40]);
        assert_eq!(sniff(&interleaved), Sniffed::Opaque);
        // A second record of no TLS version.
        let mut bad = wire.clone();
        bad[26] = 9;
        assert_eq!(sniff(&bad), Sniffed::Opaque);
        // A hello declaring more than is ever read: too large to inspect.
        let mut huge = whole[..6].to_vec();
        huge.extend(&(MAX_SNIFF as u32).to_be_bytes()[1..]);
        huge[3..5].copy_from_slice(&20u16.to_be_bytes());
        huge.extend([0; 16]);
        assert_eq!(sniff(&huge), Sniffed::TooLarge);
        // A buffer filled to the limit with the hello still incomplete: a
        // 16,000-byte message, its first 8,000 bytes in one record, the
        // rest in records of 100 (their headers fill the read).
        let mut full = vec![0x16, 3, 1];
        full.extend(8000u16.to_be_bytes());
        full.push(1);
        full.extend(&15_996u32.to_be_bytes()[1..]);
        full.resize(5 + 8000, 0);
        while full.len() < MAX_SNIFF {
            full.extend([0x16, 3, 1, 0, 100]);
            full.extend([0; 100]);
        }
        full.truncate(MAX_CLIENT_HELLO);
        assert_eq!(sniff(&full), Sniffed::TooLarge);
        assert_eq!(sniff(&full[..MAX_CLIENT_HELLO - 1]), Sniffed::NeedMore);
        // One record of 16,380 bytes: past the 16 KiB read with its header.
        let mut long = vec![0x16, 3, 1];
        long.extend(16_380u16.to_be_bytes());
        long.push(1);
        assert_eq!(sniff(&long), Sniffed::TooLarge);
        long[3..5].copy_from_slice(&16_379u16.to_be_bytes());
        assert_eq!(sniff(&long), Sniffed::NeedMore);
    }
}
