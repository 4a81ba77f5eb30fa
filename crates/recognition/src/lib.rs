//! Offline machine recognition: image → text lines (PP-OCRv4 on `ort` or `tract`, Tesseract as
//! the fallback) → machine catalog → [`contracts::MachineAggregate`] + [`contracts::TextLine`]s.
//!
//! - [`ocr`]: DB detection, rotated boxes, perspective crops, direction classifier, CTC decoding.
//! - [`catalog`]: brands, types, model-code patterns (`data/*.csv`, with sources).
//! - [`aggregate`]: the heuristics (never invent) and the catalog enrichment.
//! - [`classifier`]: the optional machine-type image classifier slot (an ONNX file + labels).
//! - [`testset`]: the generated test images with ground truth (also `trackunit sample`).

pub mod aggregate;
pub mod catalog;
pub mod classifier;
pub mod ocr;
pub mod onnx_proto;
pub mod runtime;
pub mod tesseract;
pub mod testset;

use std::path::{Path, PathBuf};

use contracts::{MachineAggregate, TextLine};
use image::RgbImage;

pub use catalog::Catalog;
pub use runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file {0} is missing (run scripts/fetch-models.sh)")]
    ModelMissing(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("inference: {0}")]
    Runtime(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("test set: {0}")]
    TestSet(String),
}

/// Where models live unless configured: `$TRACKUNIT_MODELS_DIR`, else
/// `~/.local/share/trackunit/models` (what `scripts/fetch-models.sh` fills).
pub fn default_models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRACKUNIT_MODELS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/trackunit/models")
}

/// How to build a [`Recognizer`].
#[derive(Debug, Clone)]
pub struct Config {
    pub models_dir: PathBuf,
    pub runtime: Runtime,
    /// `libonnxruntime.so` for `ort` (default: `ORT_DYLIB_PATH`, else in `models_dir`).
    pub onnxruntime_lib: Option<PathBuf>,
    /// Intra-op threads per model run.
    pub threads: usize,
    /// Use Tesseract when the ONNX models are absent (else that is an error).
    pub tesseract_fallback: bool,
    /// Optional machine-type classifier: ONNX file, labels file, square input side.
    pub classifier: Option<(PathBuf, PathBuf, u32)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            models_dir: default_models_dir(),
            runtime: Runtime::Ort,
            onnxruntime_lib: None,
            threads: 1,
            tesseract_fallback: true,
            classifier: None,
        }
    }
}

enum Reader {
    PpOcr(Box<ocr::PpOcr>),
    Tesseract,
}

/// What the engine found.
#[derive(Debug, Clone, Default)]
pub struct Recognition {
    pub aggregate: MachineAggregate,
    pub text: Vec<TextLine>,
    pub evidence: aggregate::Evidence,
}

/// The offline engine: read text, match the catalog, build the aggregate.
pub struct Recognizer {
    reader: Reader,
    classifier: Option<classifier::Classifier>,
}

impl Recognizer {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let reader = match ocr::PpOcr::load(
            &config.models_dir,
            config.runtime,
            config.threads,
            config.onnxruntime_lib.as_deref(),
        ) {
            Ok(p) => Reader::PpOcr(Box::new(p)),
            Err(Error::ModelMissing(path))
                if config.tesseract_fallback && tesseract::available() =>
            {
                let _ = path;
                Reader::Tesseract
            }
            Err(e) => return Err(e),
        };
        let classifier = match &config.classifier {
            Some((model, labels, size)) => Some(classifier::Classifier::load(
                model,
                labels,
                *size,
                config.runtime,
                config.onnxruntime_lib.as_deref(),
            )?),
            None => None,
        };
        Ok(Self { reader, classifier })
    }

    /// `ppocr-v4` or `tesseract`.
    pub fn reader_name(&self) -> &'static str {
        match self.reader {
            Reader::PpOcr(_) => "ppocr-v4",
            Reader::Tesseract => "tesseract",
        }
    }

    /// Read the text lines only.
    pub fn read_text(&self, img: &RgbImage) -> Result<Vec<ocr::Line>, Error> {
        match &self.reader {
            Reader::PpOcr(p) => p.read(img),
            Reader::Tesseract => tesseract::read(img),
        }
    }

    pub fn recognize(&self, img: &RgbImage) -> Result<Recognition, Error> {
        let lines = self.read_text(img)?;
        let classified = match &self.classifier {
            Some(c) => Some(c.classify(img)?),
            None => None,
        };
        let (aggregate, evidence) = aggregate::aggregate(Catalog::get(), &lines, classified);
        let text = lines
            .into_iter()
            .map(|l| TextLine {
                text: l.text,
                score: (f64::from(l.score) * 1000.0).round() / 1000.0,
                bounding_box: Some(
                    l.corners
                        .iter()
                        .map(|c| [f64::from(c[0]), f64::from(c[1])])
                        .collect(),
                ),
            })
            .collect();
        Ok(Recognition {
            aggregate,
            text,
            evidence,
        })
    }
}

/// Whether the PP-OCR model files are present in `dir`.
pub fn models_present(dir: &Path) -> bool {
    [ocr::DET_MODEL, ocr::REC_MODEL, ocr::CLS_MODEL]
        .iter()
        .all(|f| dir.join(f).is_file())
}
