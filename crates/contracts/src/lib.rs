//! Wire contracts shared by every service.
//!
//! * [`names`]: topics, exchanges, queues, routing keys and consumer groups.
//! * [`headers`]: the header set every message carries.
//! * [`events`]: the events and commands as serde types.
//! * [`codec`]: encode (camelCase) and tolerant decode (camelCase or the original .NET PascalCase).
//!
//! Each contract has a JSON Schema under `schemas/` (`<x-schema>.schema.json`); the tests check the
//! examples under `examples/` against them and round-trip them through the Rust types.

pub mod codec;
pub mod events;
pub mod headers;
pub mod names;

pub use codec::{DecodeError, decode, encode};
pub use events::*;

/// A message type with a versioned schema id (the `x-schema` header).
pub trait Contract: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// Schema id carried in `x-schema`, e.g. `image.uploaded.v1`.
    const SCHEMA: &'static str;
    /// Human name, e.g. `ImageUploaded`.
    const NAME: &'static str;
}

/// Every contract: name and schema id, in flow order. Used by tests and docs.
pub const ALL_SCHEMAS: &[(&str, &str)] = &[
    (ImageUploaded::NAME, ImageUploaded::SCHEMA),
    (RequestAnalysis::NAME, RequestAnalysis::SCHEMA),
    (AnalysisStarted::NAME, AnalysisStarted::SCHEMA),
    (RecognitionRequested::NAME, RecognitionRequested::SCHEMA),
    (RecognitionCompleted::NAME, RecognitionCompleted::SCHEMA),
    (RecognitionFailed::NAME, RecognitionFailed::SCHEMA),
    (AnalysisCompleted::NAME, AnalysisCompleted::SCHEMA),
    (AnalysisFailed::NAME, AnalysisFailed::SCHEMA),
];
