//! Reading query-string parameters the way Jaeger's query service reads
//! them: repeated keys (`service=a&service=b`), Go durations (`1.2s`,
//! `100ms`, `1h30m`), integers with the parameter named in the error.

use std::time::Duration;

use crate::error::QueryError;

/// Most traces one answer holds: a larger `limit` (or `query.num_traces`,
/// `query.searchDepth`) is lowered to it, so one request cannot make the
/// service read and serialise an unbounded number of traces.
pub const MAX_TRACES: usize = 1000;

/// A request's query string, decoded.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes a raw query string (`None`: no parameters).
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of any of `names`, with the name it came by.
    pub fn get_any<'a>(&'a self, names: &[&'a str]) -> Option<(&'a str, &'a str)> {
        names
            .iter()
            .find_map(|name| self.get(name).map(|value| (*name, value)))
    }

    /// Every non-empty value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether `name` is present at all.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// An integer parameter.
    pub fn int<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, QueryError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|e| QueryError::param(name, e)))
            .transpose()
    }

    /// How many traces to answer with: the first non-empty value of any of
    /// `names`, or `default` when absent or 0 (Jaeger's storage readers
    /// take `NumTraces` 0 as their default), at most [`MAX_TRACES`].
    pub fn limit(&self, names: &[&str], default: usize) -> Result<usize, QueryError> {
        let limit = match self.get_any(names) {
            Some((name, text)) => text
                .parse::<usize>()
                .map_err(|e| QueryError::param(name, e))?,
            None => default,
        };
        let limit = if limit == 0 { default } else { limit };
        Ok(limit.clamp(1, MAX_TRACES))
    }

    /// A boolean parameter (Go's `strconv.ParseBool` spellings).
    pub fn bool(&self, name: &str) -> Result<bool, QueryError> {
        match self.get(name) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(QueryError::param(
                name,
                format!("strconv.ParseBool: parsing {other:?}: invalid syntax"),
            )),
        }
    }

    /// A Go duration parameter (`1.2s`, `100ms`).
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, QueryError> {
        self.get(name)
            .map(|v| parse_duration(v).map_err(|e| QueryError::param(name, e)))
            .transpose()
    }

    /// An upper duration bound: the first non-empty value of any of
    /// `names`, a Go duration; zero is no bound, as Jaeger's query parser
    /// and storage readers take `maxDuration=0` (every API reads its
    /// maximum duration this way).
    pub fn max_duration(&self, names: &[&str]) -> Result<Option<Duration>, QueryError> {
        Ok(self
            .get_any(names)
            .map(|(name, text)| parse_duration(text).map_err(|e| QueryError::param(name, e)))
            .transpose()?
            .filter(|max| !max.is_zero()))
    }

    /// Refuses (400) an upper duration bound below the lower one, in the
    /// words of Jaeger's query parser (`'maxDuration' should be greater
    /// than 'minDuration'`), with `min` and `max` the parameters' names: a
    /// search that can match nothing is a mistake to name, not an empty
    /// answer. Equal bounds are a range.
    pub fn check_duration_range(
        range: (Option<Duration>, Option<Duration>),
        min: &str,
        max: &str,
    ) -> Result<(), QueryError> {
        match range {
            (Some(lower), Some(upper)) if upper < lower => Err(QueryError::BadRequest(format!(
                "'{max}' should be greater than '{min}'"
            ))),
            _ => Ok(()),
        }
    }

    /// A duration given as a whole number of `unit`s (Jaeger's `lookback`
    /// and `step` are milliseconds).
    pub fn units(&self, name: &str, unit: Duration) -> Result<Option<Duration>, QueryError> {
        Ok(self
            .int::<u64>(name)?
            .map(|n| unit.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)))
            .map(|d| d.max(Duration::ZERO)))
    }
}

/// Parses a Go duration (`1.2s`, `100ms`, `1h30m`), in Go's words when it
/// is not one, as Jaeger's query service answers.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    tracemesh_duration::parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_capped_and_zero_is_the_default() {
        let params = Params::parse(Some("limit=1000000&query.num_traces=0"));
        assert_eq!(params.limit(&["limit"], 20).unwrap(), MAX_TRACES);
        assert_eq!(params.limit(&["query.num_traces"], 20).unwrap(), 20);
        assert_eq!(params.limit(&["absent"], 20).unwrap(), 20);
        let error = Params::parse(Some("limit=-1"))
            .limit(&["limit"], 20)
            .unwrap_err();
        assert!(error.to_string().contains("'limit'"), "{error}");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1.2s"), Ok(Duration::from_millis(1200)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("15µs"), Ok(Duration::from_micros(15)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn a_zero_max_duration_is_no_bound() {
        for zero in ["0", "0s", "0ms", "0h0m"] {
            let params = Params::parse(Some(&format!("max={zero}")));
            assert_eq!(params.max_duration(&["max"]).unwrap(), None, "{zero}");
        }
        let params = Params::parse(Some("b=1.5s"));
        assert_eq!(
            params.max_duration(&["a", "b"]).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(params.max_duration(&["absent"]).unwrap(), None);
        let error = Params::parse(Some("max=10"))
            .max_duration(&["max"])
            .unwrap_err();
        assert!(error.to_string().contains("'max'"), "{error}");
    }

    #[test]
    fn repeated_keys_and_errors_name_the_parameter() {
        let params = Params::parse(Some("service=a&service=b&limit=x&tags=%7B%7D"));
        assert_eq!(params.all("service"), ["a", "b"]);
        assert_eq!(params.get("tags"), Some("{}"));
        let error = params.int::<u32>("limit").unwrap_err();
        assert!(error.to_string().contains("'limit'"), "{error}");
    }
}
