//! The machine-type image classifier slot: an ONNX file supplied by configuration (input
//! `[1,3,S,S]` RGB in [0,1], output class probabilities) and a labels file (one machine type a
//! line, in output order). None is shipped: no registry reachable here has a model that tells an
//! excavator from a bulldozer by its looks; the tests build a tiny one themselves.

use std::path::Path;

use image::RgbImage;

use crate::Error;
use crate::runtime::{self, Model, Runtime};

pub struct Classifier {
    model: Box<dyn Model>,
    labels: Vec<String>,
    size: u32,
}

impl Classifier {
    /// `size` = the square input side the model expects (e.g. 224).
    pub fn load(
        model: &Path,
        labels: &Path,
        size: u32,
        runtime: Runtime,
        onnxruntime_lib: Option<&Path>,
    ) -> Result<Self, Error> {
        let text =
            std::fs::read_to_string(labels).map_err(|e| Error::Io(labels.to_path_buf(), e))?;
        let labels: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if labels.is_empty() {
            return Err(Error::Config(format!("{}: no labels", model.display())));
        }
        Ok(Self {
            model: runtime::load(runtime, model, 1, onnxruntime_lib)?,
            labels,
            size: size.max(1),
        })
    }

    /// The most probable label and its probability.
    pub fn classify(&self, img: &RgbImage) -> Result<(String, f32), Error> {
        let s = self.size;
        let resized = image::imageops::resize(img, s, s, image::imageops::FilterType::Triangle);
        let plane = (s * s) as usize;
        let mut data = vec![0f32; 3 * plane];
        for (x, y, p) in resized.enumerate_pixels() {
            let i = (y * s + x) as usize;
            for c in 0..3 {
                data[c * plane + i] = p.0[c] as f32 / 255.0;
            }
        }
        let (_, out) = self.model.run([1, 3, s as usize, s as usize], data)?;
        let (best, p) = out
            .iter()
            .take(self.labels.len())
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        let label = self
            .labels
            .get(best)
            .cloned()
            .ok_or_else(|| Error::Runtime("classifier gave no output".into()))?;
        Ok((label, p))
    }
}
