//! JSON encoding of contracts.
//!
//! The original .NET ingestion wrote PascalCase (`UploadId`), its other services camelCase, and
//! all its readers were case-insensitive. [`decode`] therefore lower-cases the first letter of
//! every object key before deserialising, so both spellings decode to the same value.

use serde_json::{Map, Value};

use crate::Contract;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{schema}: body is not JSON: {source}")]
    NotJson {
        schema: &'static str,
        source: serde_json::Error,
    },
    #[error("{schema}: does not match the contract: {source}")]
    Shape {
        schema: &'static str,
        source: serde_json::Error,
    },
}

/// Serialise a contract to camelCase JSON.
pub fn encode<T: Contract>(value: &T) -> Vec<u8> {
    // Contracts are plain data (no maps with non-string keys), so serialisation cannot fail.
    serde_json::to_vec(value).unwrap_or_else(|e| panic!("{} must serialise: {e}", T::NAME))
}

/// Deserialise a contract written in camelCase or PascalCase; unknown fields are ignored.
pub fn decode<T: Contract>(bytes: &[u8]) -> Result<T, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|source| DecodeError::NotJson {
        schema: T::SCHEMA,
        source,
    })?;
    serde_json::from_value(camel_case_keys(value)).map_err(|source| DecodeError::Shape {
        schema: T::SCHEMA,
        source,
    })
}

fn camel_case_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (lower_first(k), camel_case_keys(v)))
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_case_keys).collect()),
        other => other,
    }
}

fn lower_first(key: String) -> String {
    let mut chars = key.chars();
    match chars.next() {
        Some(first) if first.is_uppercase() => first.to_lowercase().chain(chars).collect(),
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_first_only_touches_the_first_letter() {
        assert_eq!(lower_first("UploadId".into()), "uploadId");
        assert_eq!(lower_first("uploadId".into()), "uploadId");
        assert_eq!(lower_first("".into()), "");
        assert_eq!(lower_first("X".into()), "x");
    }
}
