//! Parsing of the provider's `config` table, which `init` receives as JSON.

use serde::de::DeserializeOwned;

use crate::types::Error;

/// Parses the provider config into `T`. An empty string or `null` parses like `{}`, so that a
/// provider without a config table gets `T`'s defaults. Fails with [`Error::Invalid`] naming the
/// offending key path (for example `delays_ms.start`) and what was wrong with it.
pub fn config<T: DeserializeOwned>(json: &str) -> Result<T, Error> {
    let trimmed = json.trim();
    let json = if trimmed.is_empty() || trimmed == "null" { "{}" } else { trimmed };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path.is_empty() || path == "." {
            Error::Invalid(format!("invalid config: {inner}"))
        } else {
            Error::Invalid(format!("invalid config at `{path}`: {inner}"))
        }
    })?;
    deserializer.end().map_err(|error| Error::Invalid(format!("invalid config: {error}")))?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        count: u32,
        nested: Nested,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        delay_ms: u64,
    }

    fn check_invalid(json: &str, expected_fragments: &[&str]) {
        match config::<Example>(json) {
            Err(Error::Invalid(message)) => {
                for fragment in expected_fragments {
                    assert!(message.contains(fragment), "{message:?} does not contain {fragment:?}");
                }
            }
            other => panic!("expected invalid for {json}, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_null_configs_take_defaults() {
        for json in ["", "  ", "null", "{}"] {
            assert_eq!(config::<Example>(json).ok(), Some(Example::default()), "{json:?}");
        }
    }

    #[test]
    fn errors_name_the_offending_key() {
        check_invalid(r#"{"nested": {"delay_ms": "soon"}}"#, &["nested.delay_ms", "invalid type"]);
        check_invalid(r#"{"count": -1}"#, &["count"]);
        check_invalid(r#"{"nested": {"delay": 3}}"#, &["unknown field `delay`"]);
        check_invalid(r#"{"cuont": 3}"#, &["unknown field `cuont`"]);
        check_invalid(r#"{"count": 3} trailing"#, &["trailing"]);
    }
}
