//! Names of topics, exchanges, queues, routing keys and consumer groups, as the seeds name them.
//!
//! Kafka topic names are configurable ([`Topics`]) because the original deployment used
//! `tu.images.uploaded` (plural) where the documents say `tu.image.uploaded`.

/// Kafka topics (defaults).
pub mod topics {
    /// Ingestion → everyone: an upload was confirmed. Key: objectKey.
    pub const IMAGE_UPLOADED: &str = "tu.image.uploaded";
    /// The topic name the original .NET deployment actually used.
    pub const ORIGINAL_IMAGE_UPLOADED: &str = "tu.images.uploaded";
    /// Bridge (from the orchestrator's command) → vision adapter. Key: objectKey.
    pub const RECOGNITION_REQUESTED: &str = "tu.recognition.requested";
    /// Vision adapter → bridge → orchestrator. Key: objectKey.
    pub const RECOGNITION_COMPLETED: &str = "tu.recognition.completed";
    /// Vision adapter → bridge → orchestrator. Key: objectKey.
    pub const RECOGNITION_FAILED: &str = "tu.recognition.failed";
}

/// RabbitMQ exchanges.
pub mod exchanges {
    /// Fanout, fed by the bridge from Kafka `tu.image.uploaded`.
    pub const IMAGE_UPLOADED: &str = "tu.image.uploaded";
    /// Fanout, fed by the bridge from Kafka `tu.recognition.completed`.
    pub const RECOGNITION_COMPLETED: &str = "tu.recognition.completed";
    /// Fanout, fed by the bridge from Kafka `tu.recognition.failed`.
    pub const RECOGNITION_FAILED: &str = "tu.recognition.failed";
    /// Fanout, published by the orchestrator.
    pub const ANALYSIS_STARTED: &str = "analysis.started";
    /// Fanout, published by the orchestrator.
    pub const ANALYSIS_COMPLETED: &str = "analysis.completed";
    /// Fanout, published by the orchestrator.
    pub const ANALYSIS_FAILED: &str = "analysis.failed";
    /// Direct exchange for commands (`analysis.request`, `analysis.recognition.request`).
    pub const ANALYSIS_COMMANDS: &str = "analysis.commands";
    /// Direct dead-letter exchange; routing key = the source queue's name.
    pub const DEAD_LETTER: &str = "tu.dlx";
}

/// RabbitMQ queues.
pub mod queues {
    pub const ORCHESTRATOR_IMAGE_UPLOADED: &str = "orchestrator.image-uploaded";
    pub const ORCHESTRATOR_RECOGNITION_COMPLETED: &str = "orchestrator.recognition-completed";
    pub const ORCHESTRATOR_RECOGNITION_FAILED: &str = "orchestrator.recognition-failed";
    pub const ORCHESTRATOR_ANALYSIS_COMMANDS: &str = "orchestrator.analysis.commands";
    pub const BRIDGE_RECOGNITION_REQUESTS: &str = "bridge.recognition-requests";
    /// Prefix of the per-replica gateway queue (`graph-gateway.events.<replica>`): exclusive,
    /// auto-delete, bound to the three `analysis.*` fanouts, so every replica sees every event.
    pub const GATEWAY_EVENTS_PREFIX: &str = "graph-gateway.events";

    /// Name of the dead-letter queue of `queue`.
    pub fn dead_letter(queue: &str) -> String {
        format!("{queue}.dlq")
    }
}

/// Routing keys on the direct exchange `analysis.commands`.
pub mod routing_keys {
    /// Gateway → orchestrator: analyse an existing object again (`RequestAnalysis`).
    pub const REQUEST_ANALYSIS: &str = "analysis.request";
    /// Orchestrator → bridge → Kafka `tu.recognition.requested` (`RecognitionRequested`).
    pub const RECOGNITION_REQUEST: &str = "analysis.recognition.request";
}

/// Kafka consumer groups.
pub mod groups {
    pub const VISION_ADAPTER: &str = "svc-ai-vision-adapter";
    pub const MESSAGING_BRIDGE: &str = "svc-messaging-bridge";
}

/// Service names: binaries, `x-producer`, OpenTelemetry `service.name`.
pub mod services {
    pub const GRAPH_GATEWAY: &str = "graph-gateway";
    pub const INGESTION: &str = "tu-ingestion-service";
    pub const MEDIA_ACCESS: &str = "tu-media-access-service";
    pub const VISION_ADAPTER: &str = "svc-ai-vision-adapter";
    pub const MESSAGING_BRIDGE: &str = "svc-messaging-bridge";
    pub const ORCHESTRATOR: &str = "svc-analysis-orchestrator";
    pub const CLIENT: &str = "trackunit";
    /// All six services, in the order `trackunit up` starts them.
    pub const ALL: &[&str] = &[
        MEDIA_ACCESS,
        INGESTION,
        MESSAGING_BRIDGE,
        ORCHESTRATOR,
        VISION_ADAPTER,
        GRAPH_GATEWAY,
    ];
}

/// Kafka topic names, overridable per deployment (env `TOPIC_IMAGE_UPLOADED`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Topics {
    pub topic_image_uploaded: String,
    pub topic_recognition_requested: String,
    pub topic_recognition_completed: String,
    pub topic_recognition_failed: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            topic_image_uploaded: topics::IMAGE_UPLOADED.into(),
            topic_recognition_requested: topics::RECOGNITION_REQUESTED.into(),
            topic_recognition_completed: topics::RECOGNITION_COMPLETED.into(),
            topic_recognition_failed: topics::RECOGNITION_FAILED.into(),
        }
    }
}

impl Topics {
    /// All four topics, for creating them at start.
    pub fn all(&self) -> [&str; 4] {
        [
            &self.topic_image_uploaded,
            &self.topic_recognition_requested,
            &self.topic_recognition_completed,
            &self.topic_recognition_failed,
        ]
    }
}
