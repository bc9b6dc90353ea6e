//! One loaded, validated, warmed-up model version, and where its inference runs.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{BatchCost, BatchSettings, Batcher, Reply, Unrun};
use crate::metrics::VersionMetrics;
use crate::model::{Backend, BackendChoice, Model, ModelError, Tensor};
use crate::repository::{Manifest, VersionId};

/// Wraps each model after it passed validation: how tests inject faults (errors, panics, slowness)
/// into a real model. Not reachable from configuration.
pub type ModelHook = Arc<dyn Fn(&str, &VersionId, Box<dyn Model>) -> Box<dyn Model> + Send + Sync>;

/// How a version is loaded: its backend, and the warm-up that times it.
#[derive(Clone, Copy, Debug)]
pub struct LoadSettings {
    pub backend: BackendChoice,
    pub warmup_runs: usize,
    pub inline_max: Duration,
    /// How requests placed on the inference pool are batched.
    pub batching: BatchSettings,
}

/// Where a request's inference runs (see `executor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Inline,
    Pool,
}

/// One loaded, validated, warmed-up model version.
pub struct ModelVersion {
    pub(super) name: String,
    pub(super) version: VersionId,
    pub(super) manifest: Manifest,
    pub(super) model: Box<dyn Model>,
    /// Median one-row time at warm-up.
    pub(super) one_row: Duration,
    pub(super) inline_max: Duration,
    pub(super) metrics: VersionMetrics,
    /// Where its pool requests wait to run together (`None`: batching off or no batch dimension).
    pub(super) batcher: Option<Batcher>,
    /// Its time per row by batch size, learnt from its calls (starting from `one_row`).
    pub(super) cost: BatchCost,
    /// Its manifest's task as JSON, written into every record it answers as is.
    pub(super) task_json: Box<[u8]>,
}

// === impl ModelVersion ===

impl ModelVersion {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &VersionId {
        &self.version
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's task, serialised once (`serde_json`'s bytes, as the record's `task`).
    pub fn task_json(&self) -> &[u8] {
        &self.task_json
    }

    pub fn backend(&self) -> Backend {
        self.model.backend()
    }

    pub fn metrics(&self) -> &VersionMetrics {
        &self.metrics
    }

    /// Median one-row time measured at warm-up.
    pub fn one_row(&self) -> Duration {
        self.one_row
    }

    /// Inline when `rows` rows should take at most `inline_max` at the warm-up's one-row speed.
    pub fn placement(&self, rows: usize) -> Placement {
        if self.one_row.saturating_mul(rows.max(1) as u32) <= self.inline_max {
            Placement::Inline
        } else {
            Placement::Pool
        }
    }

    /// Runs this version's queued requests in batches until none is queued (on a pool thread).
    pub fn drain(&self) {
        if let Some(batcher) = &self.batcher {
            batcher.drain(|inputs| self.run_guarded(inputs), |rows| self.metrics.batch(rows));
        }
    }

    /// One run whose panic is its result.
    fn run_guarded(&self, inputs: &[Tensor]) -> Reply {
        catch_unwind(AssertUnwindSafe(|| self.infer_learning(inputs).map(|(outputs, _)| outputs)))
            .map_err(|_| Unrun::Panicked)
    }

    /// Its time per row by batch size, as measured so far.
    pub fn cost(&self) -> &BatchCost {
        &self.cost
    }

    /// This version's batcher, when it batches.
    pub fn batcher(&self) -> Option<&Batcher> {
        self.batcher.as_ref()
    }

    /// Runs the model (synchronously) and records its time.
    pub fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        self.infer_timed(inputs).map(|(outputs, _)| outputs)
    }

    /// As [`infer`](Self::infer), with the run's time, which a success also teaches its batch
    /// cost. Off the request path only (batches, the shadow): every request thread writing the
    /// same averages would share their cache line.
    pub fn infer_learning(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Duration), ModelError> {
        let timed = self.infer_timed(inputs);
        if let Ok((_, took)) = &timed {
            self.cost.observe(inputs.first().map_or(1, Tensor::rows), *took);
        }
        timed
    }

    fn infer_timed(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Duration), ModelError> {
        let start = Instant::now();
        let result = self.model.infer(inputs);
        let took = start.elapsed();
        self.metrics.model_time(took);
        result.map(|outputs| (outputs, took))
    }
}

impl fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("backend", &self.backend())
            .field("one_row", &self.one_row)
            .finish()
    }
}
