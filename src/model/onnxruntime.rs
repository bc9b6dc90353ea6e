//! The ONNX Runtime backend, through `ort` with the shared library loaded at run time.
//!
//! `Session::run` takes `&mut self`, so a model holds a small pool of sessions (one per thread that may
//! run it at once) rather than one behind a lock that every request would queue on. Each session runs
//! with one intra-op thread: the models here take microseconds, and ONNX Runtime's own thread pool
//! made the batch p99 jump from 0.2 ms to 4.2 ms when measured.
//!
//! No CPU arena and no memory pattern: ONNX Runtime's allocations go straight to the process
//! allocator (mimalloc, which the executable also gives to shared libraries; see `build.rs`). For
//! these small models the arena's locked bookkeeping cost more than it saved: callgrind counted 5.7k
//! fewer instructions per one-row request without both (67.0k to 61.3k for the whole request).

use std::borrow::Cow;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use parking_lot::Mutex;

use super::{Backend, DataType, Model, ModelError, Signature, Tensor, TensorData, TensorSpec};

/// ONNX Runtime, loaded once per process.
#[derive(Clone)]
pub struct OnnxRuntime {
    environment: ort::environment::Environment,
    library: PathBuf,
}

impl OnnxRuntime {
    pub const HOW_TO_GET: &'static str = "To get ONNX Runtime: rebuild with python3 and pip available (build.rs \
        fetches it from PyPI into target/onnxruntime/), or run scripts/fetch-onnxruntime.sh, or point \
        `onnxruntime_library` / ORT_DYLIB_PATH at libonnxruntime.so (1.24 or newer)";

    /// Loads ONNX Runtime from `explicit`, else `ORT_DYLIB_PATH`, else the copy `build.rs` fetched,
    /// else `lib/` beside the executable (the container's layout). The library can be loaded once
    /// per process, so later calls return the first result.
    pub fn init(explicit: Option<&Path>) -> Result<Self, String> {
        static RUNTIME: OnceLock<Result<OnnxRuntime, String>> = OnceLock::new();
        RUNTIME.get_or_init(|| Self::init_uncached(explicit)).clone()
    }

    fn init_uncached(explicit: Option<&Path>) -> Result<Self, String> {
        let library = Self::find(explicit)?;
        // A library of the wrong version or architecture may panic inside `ort` instead of erroring.
        let built = catch_unwind(|| -> Result<_, String> {
            ort::init_from(&library)
                .map_err(|e| e.to_string())?
                .with_name("gauntlet")
                .build()
                .map_err(|e| e.to_string())
        });
        match built {
            Ok(Ok(environment)) => Ok(Self { environment, library }),
            Ok(Err(e)) => Err(format!("loading {}: {e}", library.display())),
            Err(_) => Err(format!("loading {} panicked (wrong version?)", library.display())),
        }
    }

    fn find(explicit: Option<&Path>) -> Result<PathBuf, String> {
        if let Some(path) = explicit {
            return if path.is_file() {
                Ok(path.to_owned())
            } else {
                Err(format!("onnxruntime_library {} does not exist", path.display()))
            };
        }
        if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("ORT_DYLIB_PATH {} does not exist", path.display()))
            };
        }
        let bundled = PathBuf::from(env!("GAUNTLET_BUILD_ONNXRUNTIME"));
        let beside_executable =
            std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("../lib/libonnxruntime.so")));
        [Some(bundled.clone()), beside_executable]
            .into_iter()
            .flatten()
            .find(|path| path.is_file())
            .ok_or_else(|| format!("no libonnxruntime.so found (looked at {})", bundled.display()))
    }

    pub fn library(&self) -> &Path {
        &self.library
    }

    pub(super) fn load(
        &self,
        path: &Path,
        signature: &Signature,
        sessions: usize,
    ) -> Result<OnnxRuntimeModel, ModelError> {
        let load_error =
            |message: String| ModelError::Load { backend: Backend::OnnxRuntime, path: path.to_owned(), message };
        let sessions = (0..sessions)
            .map(|_| {
                let builder = || -> ort::Result<_> {
                    Ok(Session::builder(&self.environment)?
                        .with_optimization_level(GraphOptimizationLevel::Level3)?
                        .with_intra_threads(1)?
                        .with_inter_threads(1)?
                        .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])?
                        .with_memory_pattern(false)?)
                };
                builder()
                    .map_err(|e| load_error(e.to_string()))?
                    .commit_from_file(path)
                    .map(Mutex::new)
                    .map_err(|e| load_error(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_signature(&sessions[0].lock(), signature)?;
        Ok(OnnxRuntimeModel {
            sessions,
            next: AtomicUsize::new(0),
            inputs: signature.inputs.iter().map(|s| s.name.clone()).collect(),
            outputs: signature.outputs.clone(),
        })
    }
}

pub struct OnnxRuntimeModel {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    inputs: Vec<String>,
    outputs: Vec<TensorSpec>,
}

impl OnnxRuntimeModel {
    /// A free session if there is one, else waits for the next in turn.
    fn session(&self) -> parking_lot::MutexGuard<'_, Session> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        (0..n)
            .find_map(|i| self.sessions[(start + i) % n].try_lock())
            .unwrap_or_else(|| self.sessions[start % n].lock())
    }
}

impl Model for OnnxRuntimeModel {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let error = |e: ort::Error| ModelError::Inference { backend: Backend::OnnxRuntime, message: e.to_string() };
        let values = inputs
            .iter()
            .zip(&self.inputs)
            .map(|(tensor, name)| Ok((Cow::Borrowed(name.as_str()), tensor_ref(tensor)?)))
            .collect::<Result<Vec<(Cow<'_, str>, SessionInputValue<'_>)>, ort::Error>>()
            .map_err(error)?;
        let mut session = self.session();
        let outputs = session.run(values).map_err(error)?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(spec.name.as_str()).ok_or_else(|| ModelError::Inference {
                    backend: Backend::OnnxRuntime,
                    message: format!("output '{}' missing", spec.name),
                })?;
                to_tensor(value, spec.datatype).map_err(error)
            })
            .collect()
    }

    fn backend(&self) -> Backend {
        Backend::OnnxRuntime
    }
}

fn tensor_ref(tensor: &Tensor) -> Result<SessionInputValue<'_>, ort::Error> {
    let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
    Ok(match tensor.data() {
        TensorData::Fp32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Fp64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Bool(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
    })
}

fn to_tensor(value: &DynValue, datatype: DataType) -> Result<Tensor, ort::Error> {
    fn extract<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &DynValue,
    ) -> Result<(Vec<usize>, Vec<T>), ort::Error> {
        let (shape, data) = value.try_extract_tensor::<T>()?;
        Ok((shape.iter().map(|&d| d.max(0) as usize).collect(), data.to_vec()))
    }
    let (shape, data) = match datatype {
        DataType::Fp32 => extract::<f32>(value).map(|(s, d)| (s, TensorData::Fp32(d)))?,
        DataType::Fp64 => extract::<f64>(value).map(|(s, d)| (s, TensorData::Fp64(d)))?,
        DataType::Int64 => extract::<i64>(value).map(|(s, d)| (s, TensorData::Int64(d)))?,
        DataType::Int32 => extract::<i32>(value).map(|(s, d)| (s, TensorData::Int32(d)))?,
        DataType::Bool => extract::<bool>(value).map(|(s, d)| (s, TensorData::Bool(d)))?,
    };
    Tensor::new(shape, data).map_err(|e| ort::Error::new(e.to_string()))
}

fn datatype_of(element: TensorElementType) -> Option<DataType> {
    match element {
        TensorElementType::Float32 => Some(DataType::Fp32),
        TensorElementType::Float64 => Some(DataType::Fp64),
        TensorElementType::Int64 => Some(DataType::Int64),
        TensorElementType::Int32 => Some(DataType::Int32),
        TensorElementType::Bool => Some(DataType::Bool),
        _ => None,
    }
}

/// The session's declared inputs and outputs must be the manifest's: same names, types and ranks,
/// and the same size wherever both fix one.
fn check_signature(session: &Session, signature: &Signature) -> Result<(), ModelError> {
    fn check(kind: &str, declared: &[ort::value::Outlet], specs: &[TensorSpec]) -> Result<(), ModelError> {
        for spec in specs {
            let outlet = declared.iter().find(|o| o.name() == spec.name).ok_or_else(|| {
                let names: Vec<_> = declared.iter().map(|o| o.name()).collect();
                ModelError::SignatureMismatch(format!("the model has no {kind} '{}' (it has {names:?})", spec.name))
            })?;
            let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(ModelError::SignatureMismatch(format!("{kind} '{}' is not a tensor", spec.name)));
            };
            if datatype_of(*ty) != Some(spec.datatype) {
                return Err(ModelError::SignatureMismatch(format!(
                    "{kind} '{}' is {ty:?} in the model but {} in the manifest",
                    spec.name, spec.datatype
                )));
            }
            let compatible = shape.len() == spec.shape.len()
                && shape
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&model, &manifest)| model < 0 || manifest < 0 || model == manifest);
            if !compatible {
                return Err(ModelError::SignatureMismatch(format!(
                    "{kind} '{}' has shape {:?} in the model but {:?} in the manifest",
                    spec.name,
                    &shape[..],
                    spec.shape
                )));
            }
        }
        if kind == "input" && declared.len() != specs.len() {
            return Err(ModelError::SignatureMismatch(format!(
                "the model has {} inputs but the manifest lists {}",
                declared.len(),
                specs.len()
            )));
        }
        Ok(())
    }
    check("input", session.inputs(), &signature.inputs)?;
    check("output", session.outputs(), &signature.outputs)
}
