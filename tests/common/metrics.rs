//! Prometheus text exposition format, parsed strictly (label values may hold
//! commas, quotes and escapes) and queried by labels.

use std::collections::HashMap;

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name (with `_bucket`/`_sum`/`_count` suffixes as written).
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed scrape.
pub struct Scrape {
    samples: Vec<Sample>,
    /// `# TYPE` of each family.
    pub types: HashMap<String, String>,
    /// The raw text.
    pub text: String,
}

fn parse_labels(s: &str) -> Result<(HashMap<String, String>, &str), String> {
    let mut labels = HashMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = rest[..eq].trim().to_owned();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value not quoted".into());
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or("unterminated label value")?;
        labels.insert(name, value);
        rest = &rest[eq + 1 + end + 1..];
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        || name.is_empty()
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (HashMap::new(), &line[name_end..])
    };
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

impl Scrape {
    /// Parses `text`; panics when it is not valid exposition format.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    panic!("bad TYPE line {line:?}");
                };
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type in {line:?}"
                );
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            samples.push(parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}")));
        }
        Scrape {
            samples,
            types,
            text: text.to_owned(),
        }
    }

    /// Samples named `metric` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        metric: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == metric
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of the samples named `metric` whose labels include `labels`.
    pub fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(metric, labels).map(|s| s.value).sum()
    }

    /// Observations of histogram `metric` with `labels` (its `_count`).
    pub fn histogram_count(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(&format!("{metric}_count"), labels) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_may_hold_commas_and_escapes() {
        let scrape = Scrape::parse("# TYPE m counter\nm{a=\"UF,URX\",b=\"q\\\"x\"} 2\n");
        assert_eq!(scrape.sum("m", &[("a", "UF,URX"), ("b", "q\"x")]), 2.0);
        assert_eq!(scrape.sum("m", &[("a", "UF")]), 0.0);
    }
}
