//! Events and commands. Writers emit camelCase; readers also accept the original's PascalCase
//! (see [`crate::codec::decode`]), ignore unknown fields, and read `type` as `machineType`.
//!
//! Fields the original .NET payloads lacked are `Option` so its messages still decode; our
//! producers always fill them, and the JSON Schemas (v1) require them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Contract;

/// Ingestion, after a confirmed upload. Kafka `tu.image.uploaded`, key = `objectKey`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageUploaded {
    pub upload_id: Uuid,
    /// `images/yyyy/MM/dd/{uuid}.{ext}`.
    pub object_key: String,
    pub content_type: String,
    pub bytes: i64,
    /// `sha256:<64 hex>`.
    pub checksum: String,
    pub occurred_at: DateTime<Utc>,
    /// Subject (JWT `sub`) of the uploader; absent in the original's messages.
    pub owner: Option<String>,
}

impl Contract for ImageUploaded {
    const SCHEMA: &'static str = "image.uploaded.v1";
    const NAME: &'static str = "ImageUploaded";
}

/// Gateway → orchestrator (`analysis.commands`, key `analysis.request`): analyse an object again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAnalysis {
    pub correlation_id: String,
    pub object_key: String,
    /// Assigned by the gateway so it can answer the mutation with it.
    pub analysis_id: Option<Uuid>,
    pub owner: Option<String>,
    pub requested_at: Option<DateTime<Utc>>,
}

impl Contract for RequestAnalysis {
    const SCHEMA: &'static str = "analysis.request.v1";
    const NAME: &'static str = "RequestAnalysis";
}

/// Orchestrator → `analysis.started` (fanout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStarted {
    pub analysis_id: Option<Uuid>,
    pub upload_id: Option<Uuid>,
    pub object_key: String,
    pub owner: Option<String>,
    pub correlation_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
}

impl Contract for AnalysisStarted {
    const SCHEMA: &'static str = "analysis.started.v1";
    const NAME: &'static str = "AnalysisStarted";
}

/// Orchestrator → `analysis.commands` key `analysis.recognition.request` → bridge → Kafka
/// `tu.recognition.requested`. Carries what the vision adapter needs to verify the download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecognitionRequested {
    pub analysis_id: Uuid,
    pub upload_id: Option<Uuid>,
    pub object_key: String,
    pub owner: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Option<i64>,
    /// `sha256:<64 hex>` of the upload; the adapter checks the downloaded bytes against it.
    pub checksum: Option<String>,
    pub requested_at: DateTime<Utc>,
}

impl Contract for RecognitionRequested {
    const SCHEMA: &'static str = "recognition.requested.v1";
    const NAME: &'static str = "RecognitionRequested";
}

/// Which engine answered (the original's `AIProviderDto`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AiProvider {
    pub name: String,
    pub api_version: Option<String>,
    #[serde(default)]
    pub featureset: Vec<String>,
    pub max_results: Option<i32>,
    pub reasoning_name: Option<String>,
    pub reasoning_model: Option<String>,
}

/// What the machine is (the original's `MachineAggregateDto`). Unknown stays `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineAggregate {
    pub brand: Option<String>,
    /// The original's consumer read this as `type`.
    #[serde(alias = "type")]
    pub machine_type: Option<String>,
    pub model: Option<String>,
    /// Operating weight in kg.
    pub weight: Option<f64>,
    /// Production year or range, e.g. `1997-2003`.
    pub year: Option<String>,
    pub attachment: Option<Vec<String>>,
    #[serde(default)]
    pub confidence: f64,
    #[serde(default)]
    pub is_confident: bool,
    pub type_confidence: Option<f64>,
    pub type_source: Option<String>,
    /// `join(", ", non-empty [brand, machineType, model])`.
    pub name: Option<String>,
}

impl MachineAggregate {
    /// The original's computed `name`.
    pub fn display_name(&self) -> String {
        [&self.brand, &self.machine_type, &self.model]
            .into_iter()
            .filter_map(|v| v.as_deref())
            .filter(|v| !v.trim().is_empty())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One line of text read off the photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TextLine {
    pub text: String,
    pub score: f64,
    /// Four corners (x, y) in image pixels, clockwise from top-left.
    #[serde(rename = "box", default)]
    pub bounding_box: Option<Vec<[f64; 2]>>,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineTimings {
    pub download_ms: Option<f64>,
    pub decode_ms: Option<f64>,
    pub engine_ms: Option<f64>,
    pub total_ms: Option<f64>,
}

/// Vision adapter → Kafka `tu.recognition.completed`. Keeps the original's `{provider, aggregate}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecognitionCompleted {
    pub analysis_id: Option<Uuid>,
    pub upload_id: Option<Uuid>,
    pub object_key: Option<String>,
    pub owner: Option<String>,
    pub provider: AiProvider,
    pub aggregate: MachineAggregate,
    #[serde(default)]
    pub text: Vec<TextLine>,
    pub timings: Option<EngineTimings>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Contract for RecognitionCompleted {
    const SCHEMA: &'static str = "recognition.completed.v1";
    const NAME: &'static str = "RecognitionCompleted";
}

/// Why a recognition or an analysis failed. Codes are stable; clients may switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The image could not be fetched from storage.
    DownloadFailed,
    /// The bytes do not match the checksum given at confirm.
    ChecksumMismatch,
    /// The bytes are not a decodable image of an allowed type.
    NotAnImage,
    /// Over the size or pixel limit.
    TooLarge,
    /// The recognition engine failed.
    EngineError,
    /// No recognition answer within the orchestrator's deadline.
    Timeout,
    /// The object does not exist or does not belong to the caller.
    NotFound,
    /// A code this version does not know (a newer producer).
    #[serde(other)]
    Unknown,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DownloadFailed => "download_failed",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::NotAnImage => "not_an_image",
            Self::TooLarge => "too_large",
            Self::EngineError => "engine_error",
            Self::Timeout => "timeout",
            Self::NotFound => "not_found",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Vision adapter → Kafka `tu.recognition.failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecognitionFailed {
    pub analysis_id: Option<Uuid>,
    pub upload_id: Option<Uuid>,
    pub object_key: String,
    pub owner: Option<String>,
    pub reason: FailureReason,
    /// Human-readable detail; never contains secrets or presigned URLs.
    pub message: String,
    pub failed_at: DateTime<Utc>,
}

impl Contract for RecognitionFailed {
    const SCHEMA: &'static str = "recognition.failed.v1";
    const NAME: &'static str = "RecognitionFailed";
}

/// Orchestrator → `analysis.completed` (fanout). `success` is true only when the engine was
/// confident (`aggregate.isConfident`); the original always sent true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisCompleted {
    pub analysis_id: Option<Uuid>,
    pub upload_id: Option<Uuid>,
    pub object_key: Option<String>,
    pub owner: Option<String>,
    pub correlation_id: Option<String>,
    pub success: bool,
    pub recognition_payload: Option<RecognitionCompleted>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Contract for AnalysisCompleted {
    const SCHEMA: &'static str = "analysis.completed.v1";
    const NAME: &'static str = "AnalysisCompleted";
}

/// Orchestrator → `analysis.failed` (fanout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisFailed {
    pub analysis_id: Uuid,
    pub upload_id: Option<Uuid>,
    pub object_key: String,
    pub owner: Option<String>,
    pub correlation_id: Option<String>,
    pub reason: FailureReason,
    pub message: String,
    pub failed_at: DateTime<Utc>,
}

impl Contract for AnalysisFailed {
    const SCHEMA: &'static str = "analysis.failed.v1";
    const NAME: &'static str = "AnalysisFailed";
}
