//! ONNX inference behind one small trait: one float input, first float output.
//! `ort` (ONNX Runtime, loaded from `libonnxruntime.so` at run time) or `tract` (pure Rust).

use std::path::{Path, PathBuf};

use crate::Error;

/// Which inference runtime runs the ONNX models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Ort,
    Tract,
}

impl std::str::FromStr for Runtime {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ort" | "onnxruntime" => Ok(Runtime::Ort),
            "tract" => Ok(Runtime::Tract),
            other => Err(Error::Config(format!(
                "unknown OCR runtime `{other}` (ort or tract)"
            ))),
        }
    }
}

/// A loaded model: NCHW float input in, (shape, data) of the first output out.
pub trait Model: Send + Sync {
    fn run(&self, shape: [usize; 4], data: Vec<f32>) -> Result<(Vec<usize>, Vec<f32>), Error>;
}

/// Load a model file with a runtime. `threads` = intra-op threads (ort).
pub fn load(
    runtime: Runtime,
    path: &Path,
    threads: usize,
    onnxruntime_lib: Option<&Path>,
) -> Result<Box<dyn Model>, Error> {
    if !path.is_file() {
        return Err(Error::ModelMissing(path.to_path_buf()));
    }
    match runtime {
        Runtime::Ort => ort_model(path, threads, onnxruntime_lib),
        Runtime::Tract => tract_model(path),
    }
}

/// Where `libonnxruntime.so` is looked for: the given path, `ORT_DYLIB_PATH`, the models dir.
pub fn onnxruntime_lib_path(explicit: Option<&Path>, models_dir: &Path) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| models_dir.join("libonnxruntime.so"))
}

#[cfg(feature = "ort")]
fn ort_model(path: &Path, threads: usize, lib: Option<&Path>) -> Result<Box<dyn Model>, Error> {
    use std::sync::OnceLock;
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    let lib = lib
        .map(Path::to_path_buf)
        .or_else(|| path.parent().map(|d| onnxruntime_lib_path(None, d)))
        .ok_or_else(|| Error::Config("no libonnxruntime.so path".into()))?;
    // One environment for the life of the process; the library is loaded once.
    let env = ENV
        .get_or_init(|| {
            if !lib.is_file() {
                return Err(format!(
                    "{} not found (run scripts/fetch-models.sh)",
                    lib.display()
                ));
            }
            ort::init_from(&lib)
                .map_err(|e| format!("loading {}: {e}", lib.display()))?
                .with_name("recognition")
                .build()
                .map_err(|e| format!("onnxruntime environment: {e}"))
        })
        .as_ref()
        .map_err(|e| Error::Runtime(e.clone()))?;
    let rt = |e: ort::Error| Error::Runtime(format!("{}: {e}", path.display()));
    let session = ort::session::Session::builder(env)
        .map_err(rt)?
        .with_intra_threads(threads.max(1))
        .map_err(|e| rt(e.into()))?
        .with_inter_threads(1)
        .map_err(|e| rt(e.into()))?
        .commit_from_file(path)
        .map_err(rt)?;
    Ok(Box::new(OrtModel(std::sync::Mutex::new(session))))
}

#[cfg(feature = "ort")]
struct OrtModel(std::sync::Mutex<ort::session::Session>);

#[cfg(feature = "ort")]
impl Model for OrtModel {
    fn run(&self, shape: [usize; 4], data: Vec<f32>) -> Result<(Vec<usize>, Vec<f32>), Error> {
        let rt = |e: ort::Error| Error::Runtime(e.to_string());
        let input = ort::value::Tensor::from_array((shape, data)).map_err(rt)?;
        let mut session = self
            .0
            .lock()
            .map_err(|_| Error::Runtime("session lock poisoned".into()))?;
        let outputs = session.run(ort::inputs![input]).map_err(rt)?;
        let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(rt)?;
        Ok((
            shape.iter().map(|d| (*d).max(0) as usize).collect(),
            data.to_vec(),
        ))
    }
}

#[cfg(not(feature = "ort"))]
fn ort_model(_: &Path, _: usize, _: Option<&Path>) -> Result<Box<dyn Model>, Error> {
    Err(Error::Config(
        "this build has no ort (enable the `ort` feature)".into(),
    ))
}

#[cfg(feature = "tract")]
fn tract_model(path: &Path) -> Result<Box<dyn Model>, Error> {
    use tract_onnx::prelude::*;
    let rt = |e: TractError| Error::Runtime(format!("{}: {e:#}", path.display()));
    let mut bytes = std::fs::read(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
    // Paddle2ONNX names dynamic dims `p2o.DynamicDimension.N`, which tract's symbol parser does
    // not take; rename them in place (same length, so the protobuf stays valid).
    let (from, to) = (b"p2o.DynamicDimension.", b"p2o_DynamicDimension_");
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + pos..i + pos + to.len()].copy_from_slice(to);
        i += pos + to.len();
    }
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(rt)?;
    // Models tract can type with symbolic dims run as one plan; the others (the DB detector)
    // get a plan per concrete input shape, built on first use.
    let symbolic = model
        .clone()
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .ok();
    Ok(Box::new(TractModel {
        model,
        symbolic,
        plans: Default::default(),
    }))
}

#[cfg(feature = "tract")]
type Plan = std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>;

#[cfg(feature = "tract")]
struct TractModel {
    model: tract_onnx::prelude::InferenceModel,
    symbolic: Option<Plan>,
    plans: std::sync::Mutex<std::collections::HashMap<[usize; 4], Plan>>,
}

#[cfg(feature = "tract")]
impl TractModel {
    fn plan(&self, shape: [usize; 4]) -> Result<Plan, Error> {
        use tract_onnx::prelude::*;
        if let Some(p) = &self.symbolic {
            return Ok(p.clone());
        }
        let rt = |e: TractError| Error::Runtime(format!("{e:#}"));
        let poisoned = || Error::Runtime("plan cache poisoned".into());
        if let Some(p) = self.plans.lock().map_err(|_| poisoned())?.get(&shape) {
            return Ok(p.clone());
        }
        let plan = self
            .model
            .clone()
            .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(rt)?;
        self.plans
            .lock()
            .map_err(|_| poisoned())?
            .insert(shape, plan.clone());
        Ok(plan)
    }
}

#[cfg(feature = "tract")]
impl Model for TractModel {
    fn run(&self, shape: [usize; 4], data: Vec<f32>) -> Result<(Vec<usize>, Vec<f32>), Error> {
        use tract_onnx::prelude::*;
        let rt = |e: TractError| Error::Runtime(format!("{e:#}"));
        let input = Tensor::from_shape(&shape, &data).map_err(rt)?;
        let out = self.plan(shape)?.run(tvec!(input.into())).map_err(rt)?;
        let t = out
            .first()
            .ok_or_else(|| Error::Runtime("model has no output".into()))?;
        let view = t.to_plain_array_view::<f32>().map_err(rt)?;
        Ok((t.shape().to_vec(), view.iter().copied().collect()))
    }
}

#[cfg(not(feature = "tract"))]
fn tract_model(_: &Path) -> Result<Box<dyn Model>, Error> {
    Err(Error::Config(
        "this build has no tract (enable the `tract` feature)".into(),
    ))
}
