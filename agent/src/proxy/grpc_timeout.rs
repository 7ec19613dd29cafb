//! A gRPC call's deadline: the client's `grpc-timeout` (gRPC over HTTP/2,
//! "Requests": 1–8 digits and a unit, `H` `M` `S` `m` `u` `n`) bounds the
//! call as Istio has Envoy bound it. Istio renders `max_grpc_timeout` equal
//! to the route's `timeout`, so the call's timeout is the header's, capped
//! by the route's when it has one, else the route's (Envoy's
//! `FilterUtility::finalTimeout`); the upstream is told what is left in a
//! `grpc-timeout` of its own, as Envoy writes it (`Grpc::Common::toGrpcTimeout`).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value gRPC allows before a unit (8 digits).
const MAX_VALUE: u64 = 99_999_999;

/// The timeout of a gRPC call under a route `timeout`. When the call has
/// one, its `grpc-timeout` is rewritten to it (a value that is no
/// `grpc-timeout` is then replaced, as Envoy replaces it); with none the
/// header goes on as the client wrote it.
pub fn bound(route: Option<Duration>, headers: &mut HeaderMap) -> Option<Duration> {
    let asked = headers.get(&GRPC_TIMEOUT).and_then(|v| parse(v.as_bytes()));
    let timeout = match (asked, route) {
        (Some(asked), Some(route)) => Some(asked.min(route)),
        (asked, route) => asked.or(route),
    };
    if let Some(timeout) = timeout {
        headers.insert(GRPC_TIMEOUT, format(timeout));
    }
    timeout
}

/// A `grpc-timeout` value; `None` when it is not one (Envoy ignores it then).
fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `timeout` as Envoy writes it: milliseconds, or the first larger unit
/// whose value fits in 8 digits.
fn format(timeout: Duration) -> HeaderValue {
    let mut value = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let mut units = [b'm', b'S', b'M', b'H'].into_iter();
    let mut unit = units.next().unwrap_or(b'm');
    let divisors = [1000, 60, 60];
    for (divisor, next) in divisors.into_iter().zip(units) {
        if value <= MAX_VALUE {
            break;
        }
        value /= divisor;
        unit = next;
    }
    let text = format!("{}{}", value.min(MAX_VALUE), unit as char);
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_deadline_is_capped_by_the_route() {
        let secs = Duration::from_secs;
        let cases = [
            (
                Some("200m"),
                Some(secs(5)),
                Some(Duration::from_millis(200)),
                "200m",
            ),
            (
                Some("5S"),
                Some(Duration::from_millis(300)),
                Some(Duration::from_millis(300)),
                "300m",
            ),
            (Some("2M"), None, Some(secs(120)), "120000m"),
            (None, Some(secs(1)), Some(secs(1)), "1000m"),
            (Some("1x"), Some(secs(1)), Some(secs(1)), "1000m"),
            (Some("123456789m"), None, None, "123456789m"),
        ];
        for (asked, route, want, header) in cases {
            let mut h = headers(asked);
            assert_eq!(bound(route, &mut h), want, "{asked:?} under {route:?}");
            assert_eq!(
                h.get(&GRPC_TIMEOUT).unwrap(),
                header,
                "{asked:?} under {route:?}"
            );
        }
        let mut none = headers(None);
        assert_eq!(bound(None, &mut none), None);
        assert!(none.get(&GRPC_TIMEOUT).is_none());
    }

    #[test]
    fn units_are_read_and_written_as_grpc_defines_them() {
        assert_eq!(parse(b"3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse(b"9n"), Some(Duration::from_nanos(9)));
        for bad in [&b""[..], b"S", b"-1S", b"1s", b"123456789S"] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(format(Duration::from_secs(200_000)), "200000S");
        assert_eq!(format(Duration::from_secs(100_000 * 60 * 60)), "6000000M");
        assert_eq!(format(Duration::from_secs(10_000_000 * 3600)), "10000000H");
    }
}
