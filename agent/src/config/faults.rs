//! Every fault of a config value at once, where serde stops at the first:
//! what the document loader and the mesh config reader both report.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Most further faults looked for in one document after its first.
const FURTHER_ERRORS: usize = 16;

/// `value` read as a `T`, or every fault found in it: `(field, message)`,
/// the field as diagnostics write it (`spec.http[0].route`; `None`: the
/// whole value). serde stops at the first fault; so that every fault of a
/// file is named at once, the field at fault is taken out and the value read
/// again, while what is taken out is a field of an object (not a list item,
/// whose removal would shift the others' indices) and the next fault is not
/// one of its absence. At most [`FURTHER_ERRORS`] more reads.
pub fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, Vec<(Option<String>, String)>> {
    let first = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(read) => return Ok(read),
        Err(err) => serde_error(err),
    };
    let mut field = first.0.clone();
    let mut found = vec![first];
    let mut value = value;
    let mut removed = Vec::new();
    for _ in 0..FURTHER_ERRORS {
        let Some(path) = field.take() else { break };
        if !remove_field(&mut value, &path) {
            break;
        }
        removed.push(path);
        let Err(err) = serde_path_to_error::deserialize::<_, T>(value.clone()) else {
            break;
        };
        let (next, message) = serde_error(err);
        // A fault at what was taken out, or at an object holding it, is
        // one of its absence (a required field, a one-of): not the file's.
        let caused = |n: &String| {
            let inside = |r: &String| {
                r == n
                    || r.strip_prefix(n.as_str())
                        .is_some_and(|rest| rest.starts_with(['.', '[']))
            };
            removed.iter().any(inside)
        };
        if next.as_ref().is_none_or(caused) {
            break;
        }
        found.push((next.clone(), message));
        field = next;
    }
    Err(found)
}

/// Takes the object field at `path` (`spec.a.b[2].c`, as serde errors and
/// diagnostics write it) out of `value`; false when the path does not end
/// in an object field or is not there.
fn remove_field(value: &mut Value, path: &str) -> bool {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (Some(parent), key),
        None => (None, path),
    };
    if key.contains('[') {
        return false;
    }
    let mut at = value;
    for segment in parent.into_iter().flat_map(|p| p.split('.')) {
        let (name, indices) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest)),
            None => (segment, None),
        };
        let Some(next) = at.get_mut(name) else {
            return false;
        };
        at = next;
        for index in indices.into_iter().flat_map(|r| r.split('[')) {
            let Some(i) = index
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
            else {
                return false;
            };
            let Some(next) = at.get_mut(i) else {
                return false;
            };
            at = next;
        }
    }
    at.as_object_mut().is_some_and(|o| o.remove(key).is_some())
}

/// The field a serde error is about: for a missing field, the field itself
/// rather than the object it is missing from.
pub fn serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> (Option<String>, String) {
    let path = err.path().to_string();
    let message = err.into_inner().to_string();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => Some(name),
        (".", None) => None,
        (_, Some(name)) => Some(format!("{path}.{name}")),
        (_, None) => Some(path),
    };
    (field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_field_takes_object_fields_by_diagnostic_path() {
        let mut doc =
            serde_json::json!({"spec": {"http": [{"route": [{"weight": "x", "w": 1}]}], "a": 1}});
        assert!(remove_field(&mut doc, "spec.http[0].route[0].weight"));
        assert_eq!(
            doc["spec"]["http"][0]["route"][0],
            serde_json::json!({"w": 1})
        );
        assert!(remove_field(&mut doc, "spec.a"));
        // List items are not taken out (the others' indices would shift),
        // nor what is not there.
        assert!(!remove_field(&mut doc, "spec.http[0]"));
        assert!(!remove_field(&mut doc, "spec.http[3].route"));
        assert!(!remove_field(&mut doc, "spec.nothing"));
    }
}
