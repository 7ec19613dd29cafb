//! Durations as Istio writes them (`100ms`, `1.5s`, `1h30m`): Go duration
//! strings (Istio reads its protobuf durations with Go's parser), read by
//! the one parser config, query and CLI share.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use tracemesh_duration::parse as parse_duration;

/// A non-negative duration parsed from Go's duration syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IstioDuration(pub Duration);

impl IstioDuration {
    /// The duration as std's type.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for IstioDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.as_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else if d.as_nanos().is_multiple_of(1_000) {
            write!(f, "{}us", d.as_micros())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(IstioDuration).map_err(|error| {
            serde::de::Error::custom(format!(
                "{error} (write e.g. \"100ms\", \"1.5s\", \"1h30m\")"
            ))
        })
    }
}

impl Serialize for IstioDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_istio_durations() {
        let read = |text: &str| serde_json::from_value::<IstioDuration>(text.into());
        assert_eq!(read("1.5s").unwrap().get(), Duration::from_millis(1500));
        assert_eq!(read("15m").unwrap().get(), Duration::from_secs(900));
        let error = read("10").unwrap_err().to_string();
        assert!(
            error.contains("missing unit") && error.contains("1.5s"),
            "{error}"
        );
        assert!(read("-1s").is_err(), "Istio refuses negative durations");
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(IstioDuration(Duration::from_secs(3)).to_string(), "3s");
        assert_eq!(
            IstioDuration(Duration::from_millis(250)).to_string(),
            "250ms"
        );
    }
}
