//! A message: opaque payload plus string headers, the same on Kafka, AMQP and in-process.

use std::collections::BTreeMap;

use bytes::Bytes;
use contracts::{Contract, headers};
use uuid::Uuid;

/// String headers. Kafka record headers and AMQP header tables both map onto this.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn message_id(&self) -> Option<&str> {
        self.get(headers::MESSAGE_ID)
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.get(headers::CORRELATION_ID)
    }

    pub fn schema(&self) -> Option<&str> {
        self.get(headers::SCHEMA)
    }

    pub fn producer(&self) -> Option<&str> {
        self.get(headers::PRODUCER)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl opentelemetry::propagation::Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.insert(key, value);
    }
}

impl opentelemetry::propagation::Extractor for Headers {
    fn get(&self, key: &str) -> Option<&str> {
        Headers::get(self, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Payload and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Headers,
    pub payload: Bytes,
}

impl Message {
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// A contract as a message with the full header set: a fresh `x-message-id`, the given
    /// correlation id, `x-schema`, `x-producer`, and the current trace context.
    pub fn from_contract<T: Contract>(value: &T, producer: &str, correlation_id: &str) -> Self {
        let mut message = Self::new(contracts::encode(value))
            .with_header(headers::MESSAGE_ID, Uuid::now_v7().to_string())
            .with_header(headers::CORRELATION_ID, correlation_id)
            .with_header(headers::SCHEMA, T::SCHEMA)
            .with_header(headers::PRODUCER, producer);
        crate::trace::inject_current(&mut message.headers);
        message
    }

    /// The id consumers dedupe by: `x-message-id`, or for a message without one (the original
    /// .NET producers sent none) a UUID derived from the payload, the same on every redelivery.
    pub fn dedupe_id(&self) -> String {
        match self.headers.message_id() {
            Some(id) if !id.trim().is_empty() => id.to_owned(),
            _ => Uuid::new_v5(&Uuid::NAMESPACE_OID, &self.payload).to_string(),
        }
    }

    /// Decode the payload as `T`, checking `x-schema` when present.
    pub fn decode<T: Contract>(&self) -> Result<T, DecodeFailure> {
        if let Some(schema) = self.headers.schema()
            && schema != T::SCHEMA
            && !compatible_schema(schema, T::SCHEMA)
        {
            return Err(DecodeFailure::WrongSchema {
                expected: T::SCHEMA,
                found: schema.to_owned(),
            });
        }
        contracts::decode(&self.payload).map_err(DecodeFailure::Body)
    }
}

/// The original's v0 schema ids (`images.uploaded.v0`, `recognition.completed.v0`) are readable
/// as our v1: same family, v1 is additive.
fn compatible_schema(found: &str, expected: &str) -> bool {
    let family = |s: &str| {
        s.rsplit_once('.')
            .map(|(f, _)| f.replace("images.", "image."))
            .unwrap_or_default()
    };
    found.ends_with(".v0") && family(found) == family(expected)
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    #[error("x-schema is `{found}`, expected `{expected}`")]
    WrongSchema {
        expected: &'static str,
        found: String,
    },
    #[error(transparent)]
    Body(contracts::DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_v0_schema_ids_are_accepted() {
        assert!(compatible_schema("images.uploaded.v0", "image.uploaded.v1"));
        assert!(compatible_schema(
            "recognition.completed.v0",
            "recognition.completed.v1"
        ));
        assert!(!compatible_schema(
            "recognition.completed.v0",
            "image.uploaded.v1"
        ));
        assert!(!compatible_schema("image.uploaded.v2", "image.uploaded.v1"));
    }

    #[test]
    fn dedupe_id_is_the_message_id_or_stable_per_payload() {
        let with_id = Message::new("{}").with_header(headers::MESSAGE_ID, "m-1");
        assert_eq!(with_id.dedupe_id(), "m-1");
        let a = Message::new(r#"{"a":1}"#);
        assert_eq!(a.dedupe_id(), Message::new(r#"{"a":1}"#).dedupe_id());
        assert_ne!(a.dedupe_id(), Message::new(r#"{"a":2}"#).dedupe_id());
    }

    #[test]
    fn wrong_schema_is_refused() {
        let started = contracts::AnalysisStarted {
            analysis_id: None,
            upload_id: None,
            object_key: "k".into(),
            owner: None,
            correlation_id: None,
            started_at: None,
        };
        let msg = Message::from_contract(&started, "test", "c-1");
        assert_eq!(msg.headers.schema(), Some("analysis.started.v1"));
        assert_eq!(msg.headers.correlation_id(), Some("c-1"));
        assert!(msg.headers.message_id().is_some());
        assert!(msg.decode::<contracts::AnalysisStarted>().is_ok());
        let err = msg
            .decode::<contracts::AnalysisFailed>()
            .expect_err("wrong schema");
        assert!(
            err.to_string().contains("expected `analysis.failed.v1`"),
            "{err}"
        );
    }
}
