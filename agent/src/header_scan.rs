//! Whether a header is present, read by walking the names of a small map
//! rather than hashing the name: a request or response carries a handful
//! of headers, and most of those the proxy asks about are absent, where a
//! lookup would hash a name of up to two dozen bytes to learn nothing.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Maps with more distinct names than this are asked by hash.
const WALKED: usize = 16;

/// Whether `headers` has a line named `name`.
pub fn holds(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() > WALKED {
        return headers.contains_key(name);
    }
    headers.keys().any(|held| held == name)
}

/// Removes every line named `name`, returning the first; looks it up only
/// when [`holds`] finds it.
pub fn remove(headers: &mut HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    if holds(headers, name) {
        headers.remove(name)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_maps_answer_alike() {
        let wanted = HeaderName::from_static("x-envoy-peer-metadata");
        for size in [0, 3, 16, 17, 40] {
            for present in [false, true] {
                let mut headers = HeaderMap::new();
                for i in 0..size {
                    let name = HeaderName::try_from(format!("x-h{i}")).unwrap();
                    headers.append(name, HeaderValue::from_static("v"));
                }
                if present {
                    headers.append(wanted.clone(), HeaderValue::from_static("a"));
                    headers.append(wanted.clone(), HeaderValue::from_static("b"));
                }
                assert_eq!(holds(&headers, &wanted), present, "{size}");
                assert!(!holds(&headers, &http::header::HOST));
                let removed = remove(&mut headers, &wanted);
                assert_eq!(removed.is_some(), present, "{size}");
                assert!(!headers.contains_key(&wanted));
                assert_eq!(headers.len(), size);
            }
        }
    }
}
