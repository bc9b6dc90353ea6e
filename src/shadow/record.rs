//! One shadowed request while its members score it: their results as they report, and, from
//! whichever reports last, the paired `OutcomeRecord`, its JSON line and its `Observation`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::ShadowRequest;
use crate::compare::Observation;
use crate::join::LabelJoin;
use crate::metrics::ShadowCoverage;
use crate::model::Tensor;
use crate::outcomes::{LogInputs, ModelResult, NamedTensors, OutcomeRecord, inputs_sha256};
use crate::registry::ModelVersion;
use crate::registry::{Role, Status};

/// One member's result: outputs, model time and the requests in its batch, or why there are none.
pub(super) type Scored = Result<(Outputs, Duration, usize), (Status, Option<String>)>;

/// A member's outputs: those of its run, and which of their rows are this request's when the run
/// was a batch's (its requests share them: cutting them apart cost 10 allocations a record).
pub(super) type Outputs = (Arc<Vec<Tensor>>, Option<Range<usize>>);

/// A result's outputs borrowed, for the record.
type ScoredView<'a> = Result<(&'a [Tensor], Option<Range<usize>>, Duration, usize), (Status, Option<String>)>;

fn view(scored: &Scored) -> ScoredView<'_> {
    match scored {
        Ok(((outputs, rows), latency, batch)) => Ok((outputs.as_slice(), rows.clone(), *latency, *batch)),
        Err((status, error)) => Err((*status, error.clone())),
    }
}

/// What a shadow thread does: score one member of a record, or (rarely) assemble a record whose
/// members all reported before its submitter did.
pub(super) enum Job {
    Score(Arc<PendingRecord>, usize),
    Finish(Arc<PendingRecord>),
}

/// One shadowing member and, once it reported, its result (set once, without a lock).
pub(super) struct Slot {
    pub(super) version: Arc<ModelVersion>,
    pub(super) role: Role,
    pub(super) result: OnceLock<Scored>,
}

/// A record waiting for its challengers; whoever reports last assembles it, on the pool.
pub(super) struct PendingRecord {
    pub(super) request: ShadowRequest,
    /// The members that shadow, in deployment order.
    pub(super) slots: Vec<Slot>,
    /// Reports still due: one per queued job, plus the submitter's (which covers shed slots).
    pub(super) remaining: AtomicUsize,
    pub(super) deadline: Instant,
    pub(super) log_inputs: LogInputs,
    pub(super) outlets: Arc<Outlets>,
    /// What it holds of `Outlets::max_held_bytes`, given back when it is dropped.
    pub(super) held_bytes: usize,
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        self.outlets.held_bytes.fetch_sub(self.held_bytes, Ordering::Relaxed);
    }
}

impl PendingRecord {
    /// The request's rows: what scoring it costs, and what it adds to a batch.
    pub(super) fn rows(&self) -> usize {
        self.request.inputs.first().map_or(1, Tensor::rows)
    }

    /// A result that came after the deadline counts as a timeout.
    pub(super) fn within_deadline(&self, scored: Scored) -> Scored {
        match scored {
            Ok((_, latency, _)) if Instant::now() > self.deadline => Err((
                Status::Timeout,
                Some(format!("finished after the deadline, in {:.1} ms", latency.as_secs_f64() * 1e3)),
            )),
            other => other,
        }
    }

    /// Sets a member's result; whoever reports last writes the record.
    pub(super) fn report(&self, slot: usize, scored: Scored) {
        let _ = self.slots[slot].result.set(scored);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    /// Counts, assembles and writes the record (on a shadow thread).
    pub(super) fn finish(&self) {
        let mut complete = true;
        for slot in &self.slots {
            let status = match slot.result.get() {
                Some(Ok(_)) => Status::Ok,
                Some(Err((status, _))) => *status,
                None => Status::Shed,
            };
            complete &= status == Status::Ok;
            slot.version.metrics().shadow(status.index()).increment(1);
        }
        self.outlets.coverage(self.request.answered.name(), complete);
        let record = self.assemble();
        self.outlets.join.record(record.model.to_owned(), Observation::of(&record), record.to_json_line());
    }

    /// The record, borrowing every tensor from the request and the slots.
    fn assemble(&self) -> OutcomeRecord<'_> {
        let request = &self.request;
        let answered = &request.answered;
        let mut scored: Vec<(&Arc<ModelVersion>, Role, ScoredView<'_>)> = self
            .slots
            .iter()
            .map(|slot| (&slot.version, slot.role, slot.result.get().map_or(Err((Status::Shed, None)), view)))
            .collect();
        scored.push((
            answered,
            request.deployment.role_of(answered),
            Ok((request.outputs.as_slice(), None, request.latency, 1)),
        ));
        // Champion first, then challengers in configured order: the same order in every record.
        scored.sort_by_key(|(version, _, _)| request.deployment.member_index(version));
        let manifest = answered.manifest();
        let (inputs, inputs_sha) = match self.log_inputs {
            LogInputs::Full => (Some(NamedTensors::new(&manifest.inputs, &request.inputs)), None),
            LogInputs::Hash => (None, Some(inputs_sha256(&request.inputs))),
            LogInputs::None => (None, None),
        };
        let results = scored
            .into_iter()
            .map(|(version, role, scored)| {
                let manifest = version.manifest();
                let (status, latency_ms, batch, outputs, error) = match scored {
                    Ok((outputs, rows, latency, batch)) => (
                        Status::Ok,
                        Some(latency),
                        (batch > 1).then_some(batch),
                        Some(NamedTensors::new(&manifest.outputs, outputs).in_rows(rows)),
                        None,
                    ),
                    Err((status, error)) => (status, None, None, None, error),
                };
                ModelResult {
                    version: version.version().as_str(),
                    role,
                    sha256: &manifest.sha256,
                    status,
                    latency_ms,
                    batch,
                    outputs,
                    error,
                }
            })
            .collect();
        OutcomeRecord {
            kind: "outcome",
            task: &manifest.task,
            task_json: Some(answered.task_json()),
            request_id: &request.request_id,
            timestamp: request.timestamp,
            model: answered.name(),
            answered_by: answered.version().as_str(),
            inputs,
            inputs_sha256: inputs_sha,
            slice: request.slice.as_deref(),
            results,
        }
    }
}

/// Where finished records go (the outcome log and the live join), the per-model coverage counts,
/// and the bytes pending records hold.
pub(super) struct Outlets {
    pub(super) join: Arc<LabelJoin>,
    /// Built once at start and never changed: read without a lock.
    pub(super) coverage: HashMap<String, ShadowCoverage>,
    /// The tensor bytes pending records hold (their request's inputs and answer), and the most
    /// they may (`shadow_queue_bytes`).
    pub(super) held_bytes: AtomicUsize,
    pub(super) max_held_bytes: usize,
}

impl Outlets {
    /// Takes `bytes` of the bound for a new pending record; `false` (nothing taken) if they do
    /// not fit.
    pub(super) fn hold(&self, bytes: usize) -> bool {
        let before = self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.max_held_bytes {
            self.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }
    pub(super) fn coverage(&self, model: &str, complete: bool) {
        if let Some(coverage) = self.coverage.get(model) {
            coverage.record(complete);
        }
    }
}
