//! The recognition-engine slot. The pipeline hands an engine a downloaded, verified and decoded
//! image; the engine says what machine it shows. Engines never invent: what they do not know
//! stays `None` with a low confidence.

use std::sync::Arc;

use async_trait::async_trait;
use contracts::{AiProvider, MachineAggregate, TextLine};

/// An image that passed the pipeline's checks (size, checksum, type, pixel limit).
#[derive(Clone)]
pub struct Image {
    /// The bytes as stored.
    pub bytes: bytes::Bytes,
    /// `image/jpeg`, `image/png` or `image/webp` (sniffed from the bytes).
    pub content_type: &'static str,
    pub decoded: Arc<image::DynamicImage>,
}

/// What an engine found.
#[derive(Debug, Clone, Default)]
pub struct Recognition {
    pub aggregate: MachineAggregate,
    pub text: Vec<TextLine>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

#[async_trait]
pub trait RecognitionEngine: Send + Sync + 'static {
    /// Which engine answered (goes into `RecognitionCompleted.provider`).
    fn provider(&self) -> AiProvider;

    /// Recognise the machine. CPU-heavy engines run their work on a blocking thread.
    async fn recognize(&self, image: Image) -> Result<Recognition, EngineError>;
}

/// No recognition at all: answers at once that nothing is known (every field `None`,
/// confidence 0, so the analysis completes with `success: false`). It never makes anything up;
/// it measures the platform's own overhead and keeps the flow usable where no engine is set up.
pub struct NoEngine;

#[async_trait]
impl RecognitionEngine for NoEngine {
    fn provider(&self) -> AiProvider {
        AiProvider {
            name: "none".into(),
            ..AiProvider::default()
        }
    }

    async fn recognize(&self, _image: Image) -> Result<Recognition, EngineError> {
        Ok(Recognition::default())
    }
}

/// Engine by name (`RECOGNITION_ENGINE`).
pub fn by_name(name: &str) -> anyhow::Result<Arc<dyn RecognitionEngine>> {
    match name.trim() {
        "" | "none" => Ok(Arc::new(NoEngine)),
        other => anyhow::bail!(
            "RECOGNITION_ENGINE `{other}` is not available in this build (known: none)"
        ),
    }
}
