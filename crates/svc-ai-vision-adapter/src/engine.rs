//! The recognition-engine slot. The pipeline hands an engine a downloaded, verified and decoded
//! image; the engine says what machine it shows. Engines never invent: what they do not know
//! stays `None` with a low confidence.
//!
//! `RECOGNITION_ENGINE` names a chain: a recogniser, then any number of enrichers, joined by `+`
//! (`google+gemini`, `offline+catalog`). The recogniser reads the image; each enricher gets the
//! aggregate so far, the text read and the image, and returns a better aggregate. An enricher
//! that fails leaves the aggregate as it was (the original's behaviour for Gemini). The chain is
//! reported in `provider.name`.

use std::sync::Arc;

use async_trait::async_trait;
use contracts::{AiProvider, FailureReason, MachineAggregate, TextLine};

use crate::Settings;

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
    /// The provider as it answered this time (e.g. with `reasoningName` when an enricher
    /// succeeded); `None` = the engine's [`RecognitionEngine::provider`].
    pub provider: Option<AiProvider>,
}

/// Why an engine could not answer, with the failure reason the adapter publishes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    /// `engine_error` for the engine's own trouble (unreachable, misconfigured, retries
    /// exhausted); `not_an_image` / `too_large` when the engine refuses this image.
    pub reason: FailureReason,
    pub message: String,
    /// The engine may answer if asked again later (a 429/5xx/timeout after our retries).
    pub transient: bool,
}

impl EngineError {
    /// The engine failed (reason `engine_error`, not worth repeating at once).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            reason: FailureReason::EngineError,
            message: message.into(),
            transient: false,
        }
    }

    /// The engine is unavailable for now (rate limited, 5xx, timeout) after its retries.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            transient: true,
            ..Self::new(message)
        }
    }

    /// The engine refuses this image (the caller's fault): `NotAnImage` or `TooLarge`.
    pub fn rejected(reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            transient: false,
        }
    }
}

impl From<String> for EngineError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for EngineError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

#[async_trait]
pub trait RecognitionEngine: Send + Sync + 'static {
    /// Which engine answers (goes into `RecognitionCompleted.provider` unless the recognition
    /// carries its own).
    fn provider(&self) -> AiProvider;

    /// Recognise the machine. CPU-heavy engines run their work on a blocking thread.
    async fn recognize(&self, image: Image) -> Result<Recognition, EngineError>;
}

/// What an enricher made of a recognition.
#[derive(Debug, Clone, Default)]
pub struct Enrichment {
    /// Replaces the aggregate so far.
    pub aggregate: MachineAggregate,
    /// Reported as `provider.reasoningName` / `reasoningModel` (e.g. `Gemini`, the model).
    pub reasoning_name: Option<String>,
    pub reasoning_model: Option<String>,
}

/// Improves an aggregate after recognition (Gemini reasoning, the offline machine catalog).
#[async_trait]
pub trait Enricher: Send + Sync + 'static {
    /// Its name in `RECOGNITION_ENGINE` (`gemini`, `catalog`).
    fn name(&self) -> &str;

    /// Given the aggregate so far, the text read and the image, a better aggregate. An error
    /// keeps the aggregate as it was.
    async fn enrich(
        &self,
        aggregate: &MachineAggregate,
        text: &[TextLine],
        image: &Image,
    ) -> Result<Enrichment, EngineError>;
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

/// A recogniser followed by enrichers, reported as `name` (e.g. `google+gemini`).
pub struct Chain {
    name: String,
    recognizer: Arc<dyn RecognitionEngine>,
    enrichers: Vec<Arc<dyn Enricher>>,
}

impl Chain {
    pub fn new(
        name: impl Into<String>,
        recognizer: Arc<dyn RecognitionEngine>,
        enrichers: Vec<Arc<dyn Enricher>>,
    ) -> Self {
        Self {
            name: name.into(),
            recognizer,
            enrichers,
        }
    }
}

#[async_trait]
impl RecognitionEngine for Chain {
    fn provider(&self) -> AiProvider {
        AiProvider {
            name: self.name.clone(),
            ..self.recognizer.provider()
        }
    }

    async fn recognize(&self, image: Image) -> Result<Recognition, EngineError> {
        let mut recognition = self.recognizer.recognize(image.clone()).await?;
        let mut provider = recognition
            .provider
            .take()
            .unwrap_or_else(|| self.recognizer.provider());
        for enricher in &self.enrichers {
            match enricher
                .enrich(&recognition.aggregate, &recognition.text, &image)
                .await
            {
                Ok(enrichment) => {
                    recognition.aggregate = enrichment.aggregate;
                    if enrichment.reasoning_name.is_some() {
                        provider.reasoning_name = enrichment.reasoning_name;
                        provider.reasoning_model = enrichment.reasoning_model;
                    }
                }
                Err(e) => {
                    metrics::counter!("vision_enrichment_failures_total", "enricher" => enricher.name().to_owned())
                        .increment(1);
                    tracing::warn!(enricher = enricher.name(), error = %e, "enrichment failed; keeping the aggregate");
                }
            }
        }
        provider.name = self.name.clone();
        recognition.provider = Some(provider);
        Ok(recognition)
    }
}

/// Recognisers `RECOGNITION_ENGINE` may start with.
pub const RECOGNIZERS: &[&str] = &["none", "offline", "google"];
/// Enrichers that may follow it.
pub const ENRICHERS: &[&str] = &["gemini", "catalog"];

/// `RECOGNITION_ENGINE` parsed: the recogniser and the enrichers, in order, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub recognizer: String,
    pub enrichers: Vec<String>,
}

impl ChainSpec {
    /// The name reported in `provider.name` (`google+gemini`).
    pub fn name(&self) -> String {
        std::iter::once(self.recognizer.as_str())
            .chain(self.enrichers.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// Parse `RECOGNITION_ENGINE`: `<recogniser>[+<enricher>...]`; empty means `none`.
pub fn parse_chain(spec: &str) -> anyhow::Result<ChainSpec> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(ChainSpec {
            recognizer: "none".into(),
            enrichers: vec![],
        });
    }
    let mut parts = spec.split('+').map(|p| p.trim().to_ascii_lowercase());
    let known = format!(
        "recognisers: {}; enrichers: {}; e.g. `google+gemini`",
        RECOGNIZERS.join(", "),
        ENRICHERS.join(", ")
    );
    let recognizer = parts.next().unwrap_or_default();
    if recognizer.is_empty() {
        anyhow::bail!("RECOGNITION_ENGINE `{spec}`: the recogniser is missing ({known})");
    }
    if ENRICHERS.contains(&recognizer.as_str()) {
        anyhow::bail!(
            "RECOGNITION_ENGINE `{spec}`: `{recognizer}` enriches a recognition and cannot come first ({known})"
        );
    }
    if !RECOGNIZERS.contains(&recognizer.as_str()) {
        anyhow::bail!("RECOGNITION_ENGINE `{spec}`: unknown recogniser `{recognizer}` ({known})");
    }
    let mut enrichers: Vec<String> = Vec::new();
    for part in parts {
        if part.is_empty() {
            anyhow::bail!("RECOGNITION_ENGINE `{spec}`: an empty element between `+` ({known})");
        }
        if RECOGNIZERS.contains(&part.as_str()) {
            anyhow::bail!(
                "RECOGNITION_ENGINE `{spec}`: `{part}` is a recogniser; only the first element may be one ({known})"
            );
        }
        if !ENRICHERS.contains(&part.as_str()) {
            anyhow::bail!("RECOGNITION_ENGINE `{spec}`: unknown enricher `{part}` ({known})");
        }
        if enrichers.contains(&part) {
            anyhow::bail!("RECOGNITION_ENGINE `{spec}`: `{part}` appears twice");
        }
        enrichers.push(part);
    }
    Ok(ChainSpec {
        recognizer,
        enrichers,
    })
}

/// The engine `settings.recognition_engine` names, built from `settings`.
pub fn by_name(settings: &Settings) -> anyhow::Result<Arc<dyn RecognitionEngine>> {
    let spec = parse_chain(&settings.recognition_engine)?;
    let recognizer = recognizer(&spec.recognizer, settings)?;
    if spec.enrichers.is_empty() {
        return Ok(recognizer);
    }
    let enrichers = spec
        .enrichers
        .iter()
        .map(|name| enricher(name, settings))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(Chain::new(spec.name(), recognizer, enrichers)))
}

fn recognizer(name: &str, settings: &Settings) -> anyhow::Result<Arc<dyn RecognitionEngine>> {
    match name {
        "none" => Ok(Arc::new(NoEngine)),
        "offline" => crate::offline::offline_engine(settings),
        "google" => crate::cloud::google::engine(settings),
        other => anyhow::bail!("RECOGNITION_ENGINE: unknown recogniser `{other}`"),
    }
}

fn enricher(name: &str, settings: &Settings) -> anyhow::Result<Arc<dyn Enricher>> {
    match name {
        "catalog" => Ok(crate::offline::catalog_enricher()),
        "gemini" => crate::cloud::gemini::enricher(settings),
        other => anyhow::bail!("RECOGNITION_ENGINE: unknown enricher `{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_parse_and_report_their_name() {
        let spec = parse_chain(" Google + Gemini ").expect("parses");
        assert_eq!(spec.recognizer, "google");
        assert_eq!(spec.enrichers, vec!["gemini"]);
        assert_eq!(spec.name(), "google+gemini");
        assert_eq!(parse_chain("").expect("empty").name(), "none");
        assert_eq!(
            parse_chain("offline+catalog+gemini")
                .expect("parses")
                .name(),
            "offline+catalog+gemini"
        );
    }

    #[test]
    fn bad_chains_are_refused_with_a_clear_message() {
        let err = |s: &str| parse_chain(s).expect_err(s).to_string();
        assert!(err("tesseract").contains("unknown recogniser `tesseract`"));
        assert!(err("google+magic").contains("unknown enricher `magic`"));
        assert!(err("gemini").contains("cannot come first"));
        assert!(err("google+offline").contains("only the first element"));
        assert!(err("google++gemini").contains("empty element"));
        assert!(err("+gemini").contains("recogniser is missing"));
        assert!(err("google+gemini+gemini").contains("appears twice"));
        assert!(err("foo").contains("known"));
    }
}
