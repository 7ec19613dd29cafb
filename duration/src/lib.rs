//! Durations as Go writes them (`time.ParseDuration`): `300ms`, `1.5h`,
//! `2h45m`. Istio's resources are read with this grammar (its protobuf
//! durations go through Go's parser, so `1.5s`, the protobuf JSON form, and
//! `15m` are both accepted), Jaeger's query API takes `minDuration` and
//! `lookback`-style parameters in it, and the CLI's flags follow suit — one
//! parser, so the three read the same text the same way.
//!
//! Grammar: `[-+]?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+`, or `0` alone;
//! each number needs a digit on one side of its dot. The result is exact
//! to the nanosecond (a fraction's further digits are dropped, as Go
//! drops them) and at most 2^63 − 1 ns (about 292 years). A negative
//! duration is refused: nothing here means "before now".

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

/// Why a text is not a duration, worded as Go words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    text: String,
    kind: ErrorKind,
}

/// What is wrong with the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not the grammar at all (or too large).
    Invalid,
    /// A number without a unit (`10`).
    MissingUnit,
    /// A unit Go does not know (`1d`).
    UnknownUnit(String),
    /// A valid but negative duration (`-1s`).
    Negative,
}

impl DurationError {
    /// What is wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = &self.text;
        match &self.kind {
            ErrorKind::Invalid => write!(f, "time: invalid duration {text:?}"),
            ErrorKind::MissingUnit => write!(f, "time: missing unit in duration {text:?}"),
            ErrorKind::UnknownUnit(unit) => {
                write!(f, "time: unknown unit {unit:?} in duration {text:?}")
            }
            ErrorKind::Negative => write!(f, "negative duration {text:?}: durations count forward"),
        }
    }
}

impl std::error::Error for DurationError {}

const MAX: u64 = 1 << 63;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        // U+00B5 (micro sign) and U+03BC (Greek mu), as Go accepts both.
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parses `text` as Go's `time.ParseDuration` does, refusing negative values.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let fail = |kind| DurationError {
        text: text.to_owned(),
        kind,
    };
    let invalid = || fail(ErrorKind::Invalid);
    let (negative, mut s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s.starts_with('.') || s.as_bytes()[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let (whole, rest) = leading_int(s).ok_or_else(invalid)?;
        let pre = rest.len() != s.len();
        s = rest;
        let (mut fraction, mut scale, mut post) = (0, 1.0, false);
        if let Some(rest) = s.strip_prefix('.') {
            let (f, sc, after) = leading_fraction(rest);
            post = after.len() != rest.len();
            (fraction, scale, s) = (f, sc, after);
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(fail(ErrorKind::MissingUnit));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let nanos =
            unit_nanos(unit).ok_or_else(|| fail(ErrorKind::UnknownUnit(unit.to_owned())))?;
        if whole > MAX / nanos {
            return Err(invalid());
        }
        let mut value = whole * nanos;
        if fraction > 0 {
            // Go's arithmetic, float and all, so results agree to the nanosecond.
            value += (fraction as f64 * (nanos as f64 / scale)) as u64;
            if value > MAX {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= MAX)
            .ok_or_else(invalid)?;
    }
    if negative {
        return if total == 0 {
            Ok(Duration::ZERO)
        } else {
            Err(fail(ErrorKind::Negative))
        };
    }
    if total > MAX - 1 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total))
}

/// The digits at the start of `s` as a number (`None` past 2^63), and the rest.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut value: u64 = 0;
    for digit in s[..digits].bytes() {
        if value > MAX / 10 {
            return None;
        }
        value = value * 10 + u64::from(digit - b'0');
        if value > MAX {
            return None;
        }
    }
    Some((value, &s[digits..]))
}

/// The digits of a fraction as a number and its scale (10^digits kept), and
/// the rest; digits past what fits are read and dropped.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (mut value, mut scale, mut overflow) = (0u64, 1.0f64, false);
    for digit in s[..digits].bytes() {
        if overflow {
            continue;
        }
        if value > (MAX - 1) / 10 {
            overflow = true;
            continue;
        }
        let next = value * 10 + u64::from(digit - b'0');
        if next > MAX {
            overflow = true;
            continue;
        }
        value = next;
        scale *= 10.0;
    }
    (value, scale, &s[digits..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn go_examples() {
        // The cases of Go's own time.ParseDuration tests.
        let ns = Duration::from_nanos;
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("30s", Duration::from_secs(30)),
            ("1478s", Duration::from_secs(1478)),
            ("+5s", Duration::from_secs(5)),
            ("-0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("5.0s", Duration::from_secs(5)),
            ("5.6s", Duration::from_millis(5600)),
            ("5.s", Duration::from_secs(5)),
            (".5s", Duration::from_millis(500)),
            ("1.0s", Duration::from_secs(1)),
            ("1.00s", Duration::from_secs(1)),
            ("1.004s", Duration::from_millis(1004)),
            ("1.0040s", Duration::from_millis(1004)),
            ("100.00100s", ns(100_001_000_000)),
            ("10ns", ns(10)),
            ("11us", Duration::from_micros(11)),
            ("12µs", Duration::from_micros(12)),
            ("12μs", Duration::from_micros(12)),
            ("13ms", Duration::from_millis(13)),
            ("14s", Duration::from_secs(14)),
            ("15m", Duration::from_secs(15 * 60)),
            ("16h", Duration::from_secs(16 * 3600)),
            ("3h30m", Duration::from_secs(3 * 3600 + 30 * 60)),
            (
                "10.5s4m",
                Duration::from_secs(4 * 60 + 10) + Duration::from_millis(500),
            ),
            ("1h2m3s4ms5us6ns", ns(3_723_004_005_006)),
            ("39h9m14.425s", ns(140_954_425_000_000)),
            ("52763797000ns", ns(52_763_797_000)),
            ("0.3333333333333333333h", ns(1_200_000_000_000)),
            ("9007199254740993ns", ns(9_007_199_254_740_993)),
            ("9223372036854775807ns", ns(9_223_372_036_854_775_807)),
            ("9223372036854775.807us", ns(9_223_372_036_854_775_807)),
            ("9223372036s854ms775us807ns", ns(9_223_372_036_854_775_807)),
            ("0.100000000000000000000h", Duration::from_secs(360)),
            ("0.830103483285477580700h", ns(2_988_372_539_827)),
        ];
        for (text, want) in cases {
            assert_eq!(ok(text), *want, "{text}");
        }
    }

    #[test]
    fn go_refusals() {
        for text in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "\u{fffd}",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "3000000h",
            "9223372036854775808s",
            " 1s",
            "1s ",
            "1 s",
            "00",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn errors_say_what_go_says() {
        assert_eq!(
            parse("10").unwrap_err().to_string(),
            r#"time: missing unit in duration "10""#
        );
        assert_eq!(
            parse("5 days").unwrap_err().to_string(),
            r#"time: unknown unit " days" in duration "5 days""#
        );
        assert_eq!(
            parse("ms").unwrap_err().to_string(),
            r#"time: invalid duration "ms""#
        );
        assert_eq!(
            parse("1x").unwrap_err().kind(),
            &ErrorKind::UnknownUnit("x".into())
        );
    }

    #[test]
    fn negative_durations_are_refused() {
        let error = parse("-1s").unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Negative);
        assert!(parse("-1.5h").is_err());
        assert_eq!(ok("-0s"), Duration::ZERO, "minus zero is zero");
    }

    #[test]
    fn istio_forms() {
        // protobuf JSON's seconds with a fraction, and Go's larger units,
        // as Istio's examples write them.
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
        assert_eq!(ok("9223372036s"), Duration::from_secs(9_223_372_036));
        assert_eq!(ok("15m"), Duration::from_secs(900));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
    }
}
