//! The offline engine (`RECOGNITION_ENGINE=offline`) and the catalog enricher (`+catalog`):
//! the `recognition` crate behind the adapter's engine traits. No cloud: PP-OCRv4 on ONNX
//! Runtime (or tract), Tesseract when the models are absent, the machine catalog in the repo.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use contracts::{AiProvider, MachineAggregate, TextLine};
use recognition::{Catalog, Recognizer};

use crate::Settings;
use crate::engine::{EngineError, Enricher, Enrichment, Image, Recognition, RecognitionEngine};

struct Offline {
    recognizer: Arc<Recognizer>,
    runtime: &'static str,
}

/// The offline engine from the settings (`OCR_MODELS_DIR`, `OCR_RUNTIME`, `ONNXRUNTIME_LIB`,
/// `OCR_THREADS`, `CLASSIFIER_MODEL`/`CLASSIFIER_LABELS`/`CLASSIFIER_INPUT_SIZE`). Fails at start
/// when neither the models nor Tesseract are there.
pub fn offline_engine(settings: &Settings) -> anyhow::Result<Arc<dyn RecognitionEngine>> {
    let runtime: recognition::Runtime = settings.ocr_runtime.parse()?;
    let models_dir = if settings.ocr_models_dir.trim().is_empty() {
        recognition::default_models_dir()
    } else {
        PathBuf::from(&settings.ocr_models_dir)
    };
    let classifier = match (
        settings.classifier_model.trim(),
        settings.classifier_labels.trim(),
    ) {
        ("", _) => None,
        (_, "") => anyhow::bail!("CLASSIFIER_MODEL is set but CLASSIFIER_LABELS is not"),
        (m, l) => Some((
            PathBuf::from(m),
            PathBuf::from(l),
            settings.classifier_input_size,
        )),
    };
    let config = recognition::Config {
        models_dir,
        runtime,
        onnxruntime_lib: (!settings.onnxruntime_lib.trim().is_empty())
            .then(|| PathBuf::from(&settings.onnxruntime_lib)),
        threads: settings.ocr_threads.max(1),
        tesseract_fallback: true,
        classifier,
    };
    let recognizer =
        Recognizer::new(&config).map_err(|e| anyhow::anyhow!("offline engine: {e}"))?;
    tracing::info!(reader = recognizer.reader_name(), runtime = %settings.ocr_runtime, "offline recognition engine ready");
    let runtime = match (recognizer.reader_name(), runtime) {
        ("tesseract", _) => "tesseract",
        (_, recognition::Runtime::Ort) => "ppocr-v4/onnxruntime",
        (_, recognition::Runtime::Tract) => "ppocr-v4/tract",
    };
    Ok(Arc::new(Offline {
        recognizer: Arc::new(recognizer),
        runtime,
    }))
}

#[async_trait]
impl RecognitionEngine for Offline {
    fn provider(&self) -> AiProvider {
        AiProvider {
            name: "offline".into(),
            api_version: Some(self.runtime.into()),
            featureset: vec!["TextDetection".into(), "Catalog".into()],
            ..AiProvider::default()
        }
    }

    async fn recognize(&self, image: Image) -> Result<Recognition, EngineError> {
        let recognizer = self.recognizer.clone();
        let r = tokio::task::spawn_blocking(move || recognizer.recognize(&image.decoded.to_rgb8()))
            .await
            .map_err(|e| EngineError::new(format!("offline engine task: {e}")))?
            .map_err(|e| EngineError::new(e.to_string()))?;
        Ok(Recognition {
            aggregate: r.aggregate,
            text: r.text,
            provider: None,
        })
    }
}

struct CatalogEnricher;

/// The offline analogue of the Gemini enrichment: machine type, operating-weight class, years and
/// common attachments from the catalog in the repo, only where it knows them.
pub fn catalog_enricher() -> Arc<dyn Enricher> {
    Arc::new(CatalogEnricher)
}

#[async_trait]
impl Enricher for CatalogEnricher {
    fn name(&self) -> &str {
        "catalog"
    }

    async fn enrich(
        &self,
        aggregate: &MachineAggregate,
        _text: &[TextLine],
        _image: &Image,
    ) -> Result<Enrichment, EngineError> {
        let mut aggregate = aggregate.clone();
        let changed = recognition::aggregate::enrich(Catalog::get(), &mut aggregate);
        Ok(Enrichment {
            aggregate,
            reasoning_name: changed.then(|| "catalog".into()),
            reasoning_model: changed.then(|| "trackunit-catalog-v1".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn catalog_enricher_fills_weight_class_and_attachments() {
        let agg = MachineAggregate {
            brand: Some("Komatsu".into()),
            model: Some("PC210LC-11".into()),
            confidence: 0.9,
            is_confident: true,
            ..Default::default()
        };
        let img = Image {
            bytes: bytes::Bytes::new(),
            content_type: "image/png",
            decoded: Arc::new(image::DynamicImage::new_rgb8(1, 1)),
        };
        let e = catalog_enricher()
            .enrich(&agg, &[], &img)
            .await
            .expect("enrich");
        assert_eq!(e.aggregate.machine_type.as_deref(), Some("Excavator"));
        assert_eq!(e.aggregate.type_source.as_deref(), Some("catalog"));
        assert_eq!(e.aggregate.weight, Some(21000.0));
        assert_eq!(e.aggregate.year, None, "unknown stays null");
        assert!(e.aggregate.attachment.is_some());
        assert_eq!(e.reasoning_name.as_deref(), Some("catalog"));
        let unknown = MachineAggregate::default();
        let e = catalog_enricher()
            .enrich(&unknown, &[], &img)
            .await
            .expect("enrich");
        assert_eq!(e.aggregate, unknown);
        assert_eq!(e.reasoning_name, None);
    }
}
