//! Bootstrap tokens: what lets an agent ask the CA for a certificate, and
//! which identity it may ask for (`namespace/service-account`, or `*`).
//! Stored one per line, `<token> <grant>`, in a file readable by the owner.

use std::path::Path;

use crate::authority::CaError;
use crate::files::{read_text, write_private};

/// File name of the tokens in a CA directory.
pub const TOKENS: &str = "tokens";

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Any identity in the trust domain.
    Any,
    /// Only this namespace and service account.
    Identity {
        /// Namespace.
        namespace: String,
        /// Service account.
        service_account: String,
    },
}

impl Grant {
    /// Parses `*` or `namespace/service-account`.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Self::Any);
        }
        let (namespace, service_account) = s.split_once('/')?;
        (!namespace.is_empty() && !service_account.is_empty() && !service_account.contains('/'))
            .then(|| Self::Identity {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            })
    }

    fn render(&self) -> String {
        match self {
            Self::Any => "*".to_owned(),
            Self::Identity {
                namespace,
                service_account,
            } => format!("{namespace}/{service_account}"),
        }
    }
}

/// The tokens of a CA.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<(String, Grant)>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// Loads `dir/tokens` (none yet: no tokens).
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let path = dir.join(TOKENS);
        if std::fs::metadata(&path).is_err() {
            return Ok(Self::default());
        }
        let entries = read_text(&path)?
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (token, grant) = l.split_once(' ')?;
                Some((token.to_owned(), Grant::parse(grant.trim())?))
            })
            .collect();
        Ok(Self { entries })
    }

    /// Adds a new random token for `grant` to `dir/tokens`; returns it.
    pub fn add(dir: &Path, grant: &Grant) -> Result<String, CaError> {
        let mut tokens = Self::load(dir)?;
        let token: String = (0..32)
            .map(|_| format!("{:02x}", fastrand::u8(..)))
            .collect();
        tokens.entries.push((token.clone(), grant.clone()));
        let text: String = tokens
            .entries
            .iter()
            .map(|(t, g)| format!("{t} {}\n", g.render()))
            .collect();
        write_private(&dir.join(TOKENS), &text)?;
        Ok(token)
    }

    /// What `token` allows, compared in constant time.
    pub fn grant(&self, token: &str) -> Option<&Grant> {
        self.entries
            .iter()
            .filter(|(t, _)| constant_time_eq(t.as_bytes(), token.as_bytes()))
            .map(|(_, g)| g)
            .next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_with_their_grants() {
        let dir = tempfile::tempdir().unwrap();
        let any = Tokens::add(dir.path(), &Grant::Any).unwrap();
        let one = Tokens::add(dir.path(), &Grant::parse("default/reviews").unwrap()).unwrap();
        let tokens = Tokens::load(dir.path()).unwrap();
        assert_eq!(tokens.grant(&any), Some(&Grant::Any));
        assert!(
            matches!(tokens.grant(&one), Some(Grant::Identity { service_account, .. }) if service_account == "reviews")
        );
        assert_eq!(tokens.grant("nope"), None);
        assert_eq!(Grant::parse("a/b/c"), None);
    }
}
