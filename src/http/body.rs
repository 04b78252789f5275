//! Reading JSON request bodies the way docs/openapi.json describes them: a field that is
//! given must have its type (`null` is refused rather than read as "left out", except
//! where a value may be null), and a whole number written as `12.0` is the number 12, as
//! JSON Schema reads it.

use serde::{Deserialize, Deserializer};

/// The name of the first field (depth first, as `a.b`) that is `null` where `nullable`
/// does not allow it.
pub fn null_field(value: &serde_json::Value, nullable: &[&str]) -> Option<String> {
    fn walk(v: &serde_json::Value, at: &str, nullable: &[&str]) -> Option<String> {
        let serde_json::Value::Object(map) = v else {
            return None;
        };
        for (k, v) in map {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if nullable.contains(&path.as_str()) {
                continue;
            }
            if v.is_null() {
                return Some(path);
            }
            if let Some(p) = walk(v, &path, nullable) {
                return Some(p);
            }
        }
        None
    }
    walk(value, "", nullable)
}

/// Refuse a body with a `null` field outside `nullable`, naming it.
pub fn refuse_nulls(body: &[u8], nullable: &[&str]) -> Result<(), String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => match null_field(&v, nullable) {
            Some(f) => Err(format!(
                "{f}: null is not a value here; leave the field out"
            )),
            None => Ok(()),
        },
        // Not JSON at all: the typed parse says why.
        Err(_) => Ok(()),
    }
}

/// A whole number of at least 0: `12` or `12.0`.
pub fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number of at least 0"
        ))),
    }
}

/// [`whole`] for an optional field.
pub fn whole_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "whole")]
        a: u64,
        #[serde(default, deserialize_with = "whole_opt")]
        b: Option<u64>,
    }

    #[test]
    fn whole_numbers_are_read_as_json_schema_reads_them() {
        let t: T = serde_json::from_str(r#"{"a":12.0,"b":3}"#).unwrap();
        assert_eq!((t.a, t.b), (12, Some(3)));
        assert_eq!(serde_json::from_str::<T>(r#"{"a":1}"#).unwrap().b, None);
        for bad in [r#"{"a":1.5}"#, r#"{"a":-1}"#, r#"{"a":"1"}"#] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nulls_are_named_unless_allowed() {
        let v = serde_json::json!({"user":"u","data":null,"await":{"status":null}});
        assert_eq!(null_field(&v, &["data"]).as_deref(), Some("await.status"));
        assert_eq!(
            null_field(&serde_json::json!({"data":null}), &["data"]),
            None
        );
    }
}
