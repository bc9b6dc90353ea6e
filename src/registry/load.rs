//! The one path from disk to a servable version: read and verify from the repository → load with
//! its backend (signature checked) → validate on the manifest's reference rows → warm up (and time).
//! A failed step names itself; nothing else is touched.

use std::time::{Duration, Instant};

use super::batch::{BatchCost, Batcher};
use super::version::{LoadSettings, ModelVersion};
use crate::metrics::VersionMetrics;
use crate::model::{DataType, Loader, Model, ModelError, Tensor, TensorData};
use crate::repository::{Manifest, Repository, RepositoryError, Tolerance, VersionId};

/// The one path from disk to a servable version.
pub fn load_version(
    repository: &Repository,
    loader: &Loader,
    name: &str,
    version: &VersionId,
    settings: LoadSettings,
) -> Result<ModelVersion, LoadError> {
    let fail = |step: LoadStep, message: String| {
        crate::metrics::load_failed(name, step.label());
        LoadError { model: name.to_owned(), version: version.clone(), step, message }
    };
    let entry = repository.version(name, version).map_err(|e| match e {
        RepositoryError::Store { .. } => fail(LoadStep::Fetch, e.to_string()),
        _ => fail(LoadStep::Repository, e.to_string()),
    })?;
    let manifest = entry.manifest;
    let model = loader
        .load(&entry.model_path, &manifest.signature(), settings.backend)
        .map_err(|e| fail(LoadStep::Backend, e.to_string()))?;
    let reference =
        manifest.reference.input_tensors(&manifest.inputs).map_err(|e| fail(LoadStep::Validation, e.to_string()))?;
    validate(model.as_ref(), &manifest, &reference).map_err(|message| fail(LoadStep::Validation, message))?;
    let one_row =
        warm_up(model.as_ref(), &reference, settings.warmup_runs).map_err(|e| fail(LoadStep::WarmUp, e.to_string()))?;
    let metrics = VersionMetrics::new(name, version.as_str(), model.backend().as_str());
    let batcher = Batcher::for_version(settings.batching, &manifest);
    let task_json = serde_json::to_vec(&manifest.task).expect("a task always serialises").into_boxed_slice();
    Ok(ModelVersion {
        task_json,
        batcher,
        cost: BatchCost::new(one_row),
        name: name.to_owned(),
        version: version.clone(),
        manifest,
        model,
        one_row,
        inline_max: settings.inline_max,
        metrics,
    })
}

/// A challenger scores the champion's decoded input and its outputs are compared with the
/// champion's: both signatures must be the same.
pub(super) fn compatible(champion: &Manifest, challenger: &Manifest) -> Result<(), String> {
    if champion.inputs != challenger.inputs {
        return Err(format!("inputs {:?} differ from the champion's {:?}", challenger.inputs, champion.inputs));
    }
    if champion.outputs != challenger.outputs {
        return Err(format!("outputs {:?} differ from the champion's {:?}", challenger.outputs, champion.outputs));
    }
    Ok(())
}

/// Runs the reference rows and compares every output with the manifest's: integer outputs (class
/// labels) exactly, floating ones within the manifest's tolerance.
pub fn validate(model: &dyn Model, manifest: &Manifest, reference: &[Tensor]) -> Result<(), String> {
    let expected = manifest.reference.output_tensors(&manifest.outputs).map_err(|e| e.to_string())?;
    let actual = model.infer(reference).map_err(|e| format!("the reference rows fail: {e}"))?;
    let tolerance = manifest.reference.tolerance;
    for ((spec, want), got) in manifest.outputs.iter().zip(&expected).zip(&actual) {
        compare_output(&spec.name, want, got, tolerance)?;
    }
    Ok(())
}

fn compare_output(name: &str, want: &Tensor, got: &Tensor, tolerance: Tolerance) -> Result<(), String> {
    // A [n] label vector and an [n, 1] column are the same values; compare element counts and rows.
    if want.data().len() != got.data().len() || want.shape().first() != got.shape().first() {
        return Err(format!("output '{name}' has shape {:?}, the manifest expects {:?}", got.shape(), want.shape()));
    }
    let exact = matches!(want.datatype(), DataType::Int64 | DataType::Int32 | DataType::Bool);
    let per_row = want.data().len() / want.shape().first().copied().unwrap_or(1).max(1);
    let (w, g) = (want.data().to_f64(), got.data().to_f64());
    let mismatches: Vec<usize> = (0..w.len())
        .filter(|&i| if exact { w[i] != g[i] } else { !tolerance.accepts(w[i], g[i]) || g[i].is_nan() })
        .collect();
    if let Some(&first) = mismatches.first() {
        return Err(format!(
            "output '{name}' differs from the manifest on {} of {} values; first at row {}: expected {}, got {}{}",
            mismatches.len(),
            w.len(),
            first / per_row.max(1),
            w[first],
            g[first],
            if exact { " (labels must match exactly)".to_owned() } else { format!(" (tolerance {tolerance:?})") }
        ));
    }
    if let TensorData::Fp32(_) | TensorData::Fp64(_) = got.data()
        && got.data().first_non_finite().is_some()
    {
        return Err(format!("output '{name}' contains NaN or infinity"));
    }
    Ok(())
}

/// Runs the first reference row `runs` times; returns the median time.
fn warm_up(model: &dyn Model, reference: &[Tensor], runs: usize) -> Result<Duration, ModelError> {
    let one_row: Vec<Tensor> = reference.iter().map(first_row).collect::<Result<_, _>>()?;
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        model.infer(&one_row)?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn first_row(tensor: &Tensor) -> Result<Tensor, ModelError> {
    let rows = tensor.shape().first().copied().unwrap_or(1).max(1);
    let per_row = tensor.data().len() / rows;
    let data = match tensor.data() {
        TensorData::Fp32(v) => TensorData::Fp32(v[..per_row].to_vec()),
        TensorData::Fp64(v) => TensorData::Fp64(v[..per_row].to_vec()),
        TensorData::Int64(v) => TensorData::Int64(v[..per_row].to_vec()),
        TensorData::Int32(v) => TensorData::Int32(v[..per_row].to_vec()),
        TensorData::Bool(v) => TensorData::Bool(v[..per_row].to_vec()),
    };
    let mut shape = tensor.shape().to_vec();
    if let Some(first) = shape.first_mut() {
        *first = 1;
    }
    Ok(Tensor::new(shape, data)?)
}

/// The step of `load_version` that refused a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadStep {
    /// The model store (object storage) could not be read: the version may well be fine.
    Fetch,
    /// Manifest missing or invalid, model file missing or corrupt (sha256).
    Repository,
    /// The backend cannot load the file, or its signature is not the manifest's.
    Backend,
    /// Its inputs or outputs differ from the deployment's.
    Signature,
    /// The reference rows give other outputs than the manifest's.
    Validation,
    WarmUp,
}

impl LoadStep {
    pub fn label(self) -> &'static str {
        match self {
            Self::Fetch => "fetch",
            Self::Repository => "repository",
            Self::Backend => "backend",
            Self::Signature => "signature",
            Self::Validation => "validation",
            Self::WarmUp => "warm_up",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{model}/{version} refused at {}: {message}", step.label())]
pub struct LoadError {
    pub model: String,
    pub version: VersionId,
    pub step: LoadStep,
    pub message: String,
}
