//! A gRPC call's deadline: the client's `grpc-timeout` (gRPC over HTTP/2,
//! "Requests": 1–8 digits and a unit, `H` `M` `S` `m` `u` `n`) bounds the
//! call as Istio has Envoy bound it. Istio renders `max_grpc_timeout` equal
//! to the route's `timeout`, so the call's global timeout is the header's,
//! capped by the route's when it has one, else the route's; a header of 0
//! is no bound, as no header is (Envoy's `FilterUtility::finalTimeout`).
//! Each attempt tells the upstream what bounds it in a `grpc-timeout` of
//! its own, as Envoy's `FilterUtility::setTimeoutHeaders` writes it: the
//! per-try timeout (when shorter than the global one), else the global
//! timeout, capped by what is left of the global timeout, in Envoy's units
//! (`Grpc::Common::toGrpcTimeout`).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value gRPC allows before a unit (8 digits).
const MAX_VALUE: u64 = 99_999_999;

/// The global timeout of a gRPC call under a route `timeout`: the client's
/// `grpc-timeout` capped by `route`, else `route` (a header that is no
/// `grpc-timeout`, or is 0, counts as none). The header is left as it is:
/// [`set_expected`] writes each attempt's.
pub fn bound(route: Option<Duration>, headers: &HeaderMap) -> Option<Duration> {
    let asked = headers
        .get(&GRPC_TIMEOUT)
        .and_then(|v| parse(v.as_bytes()))
        .filter(|asked| !asked.is_zero());
    match (asked, route) {
        (Some(asked), Some(route)) => Some(asked.min(route)),
        (asked, route) => asked.or(route),
    }
}

/// The timeout an attempt sent `elapsed` after the request ended (zero for
/// the first) is told in its `grpc-timeout`, as Envoy's
/// `setTimeoutHeaders` counts it: the per-try timeout unless it is as long
/// as the global one, else the global one; capped by what is left of the
/// global one (1 ms once none is: 0 would mean no bound). `None` when
/// neither bounds the call: the client's header then goes on as it is.
pub fn expected(
    global: Option<Duration>,
    per_try: Option<Duration>,
    elapsed: Duration,
) -> Option<Duration> {
    let per_try = per_try
        .filter(|per_try| !per_try.is_zero())
        .filter(|per_try| global.is_none_or(|global| *per_try < global));
    let expected = per_try.or(global)?;
    Some(match global {
        Some(global) => {
            let left = global.saturating_sub(elapsed);
            if left < Duration::from_millis(1) {
                Duration::from_millis(1)
            } else {
                expected.min(left)
            }
        }
        None => expected,
    })
}

/// Writes an attempt's `grpc-timeout` ([`expected`]) into `headers`, which
/// keep the client's when nothing bounds the call.
pub fn set_expected(
    headers: &mut HeaderMap,
    global: Option<Duration>,
    per_try: Option<Duration>,
    elapsed: Duration,
) {
    if let Some(timeout) = expected(global, per_try, elapsed) {
        headers.insert(GRPC_TIMEOUT, format(timeout));
    }
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
        let ms = Duration::from_millis;
        let cases = [
            (Some("200m"), Some(secs(5)), Some(ms(200))),
            (Some("5S"), Some(ms(300)), Some(ms(300))),
            (Some("2M"), None, Some(secs(120))),
            (None, Some(secs(1)), Some(secs(1))),
            (Some("1x"), Some(secs(1)), Some(secs(1))),
            (Some("123456789m"), None, None),
            // 0 is no bound, as no header is (Envoy's 0 is infinite)
            (Some("0m"), None, None),
            (Some("0S"), Some(secs(2)), Some(secs(2))),
            (None, None, None),
        ];
        for (asked, route, want) in cases {
            let h = headers(asked);
            assert_eq!(bound(route, &h), want, "{asked:?} under {route:?}");
        }
    }

    #[test]
    fn each_attempt_is_told_its_per_try_bound_capped_by_what_is_left() {
        let ms = Duration::from_millis;
        let zero = Duration::ZERO;
        let cases = [
            // (global, per try, elapsed) -> expected
            ((Some(ms(5000)), Some(ms(300)), zero), Some(ms(300))),
            ((None, Some(ms(300)), zero), Some(ms(300))),
            ((Some(ms(1000)), Some(ms(500)), zero), Some(ms(500))),
            ((Some(ms(1000)), Some(ms(500)), ms(430)), Some(ms(500))),
            ((Some(ms(1000)), Some(ms(500)), ms(836)), Some(ms(164))),
            // a per-try timeout as long as the global one is ignored
            ((Some(ms(300)), Some(ms(300)), zero), Some(ms(300))),
            ((Some(ms(300)), Some(ms(500)), ms(100)), Some(ms(200))),
            // out of time: 1 ms, not 0 (no bound)
            ((Some(ms(300)), None, ms(300)), Some(ms(1))),
            ((None, None, zero), None),
        ];
        for ((global, per_try, elapsed), want) in cases {
            assert_eq!(
                expected(global, per_try, elapsed),
                want,
                "{global:?} {per_try:?} {elapsed:?}"
            );
        }
        let mut h = headers(Some("5S"));
        set_expected(&mut h, Some(ms(5000)), Some(ms(300)), zero);
        assert_eq!(h.get(&GRPC_TIMEOUT).unwrap(), "300m");
        let mut h = headers(Some("0m"));
        set_expected(&mut h, None, None, zero);
        assert_eq!(h.get(&GRPC_TIMEOUT).unwrap(), "0m");
        let mut h = headers(None);
        set_expected(&mut h, None, None, zero);
        assert!(h.get(&GRPC_TIMEOUT).is_none());
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
