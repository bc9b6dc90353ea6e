//! An ONNX model behind one small synchronous trait, and the two backends that implement it:
//! ONNX Runtime (through `ort`, loaded from a shared library at run time) and tract (pure Rust).
//!
//! Invariant: this module knows nothing of HTTP, tokio, traffic or files beyond the one model file it
//! loads. `infer` is synchronous and may take as long as the model takes; the caller decides where it
//! runs.

mod onnxruntime;
pub mod tensor;
mod tract;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use self::onnxruntime::OnnxRuntime;
pub use self::tensor::{DataType, Tensor, TensorData, TensorError};

/// A loaded model: inputs in signature order in, outputs in signature order out.
pub trait Model: Send + Sync {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError>;

    fn backend(&self) -> Backend;
}

/// One input or output as a model declares it; `-1` marks a dimension of any size (the batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Whether a concrete shape fits this spec: same rank, and every fixed dimension equal.
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(&want, &got)| want < 0 || want as usize == got)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// The backend that runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[serde(rename = "ort")]
    OnnxRuntime,
    Tract,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnnxRuntime => "ort",
            Self::Tract => "tract",
        }
    }

    /// The `platform` string of the inference protocol's model metadata (Triton's names).
    pub fn platform(self) -> &'static str {
        match self {
            Self::OnnxRuntime => "onnxruntime_onnx",
            Self::Tract => "tract_onnx",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the configuration asks for: a backend, or `auto` (ONNX Runtime when its library loaded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Ort,
    Tract,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "ort" => Ok(Self::Ort),
            "tract" => Ok(Self::Tract),
            other => Err(format!("unknown backend '{other}': expected auto, ort or tract")),
        }
    }
}

/// Loads models with whichever backends this process has.
pub struct Loader {
    onnxruntime: Result<OnnxRuntime, String>,
    /// Sessions (ONNX Runtime) per model: one per thread that may run it at once.
    concurrency: usize,
}

impl Loader {
    /// `onnxruntime` is ONNX Runtime if its library loaded, or why it did not.
    pub fn new(onnxruntime: Result<OnnxRuntime, String>, concurrency: usize) -> Self {
        Self { onnxruntime, concurrency: concurrency.max(1) }
    }

    /// Loads `path` with the chosen backend and checks it against `signature` (names, types, ranks,
    /// fixed dimensions): a manifest that describes another model is refused here.
    pub fn load(
        &self,
        path: &Path,
        signature: &Signature,
        choice: BackendChoice,
    ) -> Result<Box<dyn Model>, ModelError> {
        match (choice, &self.onnxruntime) {
            (BackendChoice::Ort | BackendChoice::Auto, Ok(runtime)) => {
                Ok(Box::new(runtime.load(path, signature, self.concurrency)?))
            }
            (BackendChoice::Ort, Err(reason)) => Err(ModelError::OnnxRuntimeUnavailable { reason: reason.clone() }),
            (BackendChoice::Auto, Err(reason)) => {
                tract::TractModel::load(path, signature).map(|m| Box::new(m) as _).map_err(
                    // Auto fell back to tract: say that ONNX Runtime would have been tried first, and how to get it.
                    |error| match error {
                        ModelError::Load { backend: Backend::Tract, path, message } => ModelError::Load {
                            backend: Backend::Tract,
                            path,
                            message: format!(
                                "{message}; ONNX Runtime, which runs this model, is not available ({reason}). {}",
                                OnnxRuntime::HOW_TO_GET
                            ),
                        },
                        other => other,
                    },
                )
            }
            (BackendChoice::Tract, _) => Ok(Box::new(tract::TractModel::load(path, signature)?)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{backend} could not load {}: {message}", path.display())]
    Load { backend: Backend, path: PathBuf, message: String },
    #[error("the ONNX Runtime backend was requested but is not available: {reason}. {}", OnnxRuntime::HOW_TO_GET)]
    OnnxRuntimeUnavailable { reason: String },
    #[error("the model file does not match its manifest: {0}")]
    SignatureMismatch(String),
    #[error("{backend} inference failed: {message}")]
    Inference { backend: Backend, message: String },
    #[error("invalid tensor: {0}")]
    Tensor(#[from] TensorError),
}
