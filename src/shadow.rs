//! Shadow scoring: the versions that did not answer a sampled request score the same decoded
//! input off the critical path, and one paired `OutcomeRecord` goes to the outcome log.
//!
//! Invariants:
//! - Never delays or changes the answer: the response is complete before `submit` is called, and
//!   `submit` only queues one job per challenger on a lock-free queue. The request thread shares no
//!   lock with the shadow threads (they run at background priority; a lock held by one of them,
//!   preempted, would stall the request) and never assembles or serialises a record.
//! - Everything after runs on the shadow pool: each challenger's inference, and, in whichever job
//!   finishes last, assembling, counting and serialising the record.
//! - When no challenger can be queued at all, no record is written (there is nothing to pair); the
//!   request still counts, as `shed` per challenger and as an incomplete one in coverage.
//! - Bounded: a job the queue cannot take is `shed`; one that could not start before the deadline
//!   is skipped and, like one that finished after it, recorded as `timeout`. Each is counted.
//! - A challenger's error or panic is recorded in its result and reaches no client.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::compare::Observation;
use crate::executor::InferencePool;
use crate::metrics::ShadowCoverage;
use crate::model::Tensor;
use crate::outcomes::feedback::Feedback;
use crate::outcomes::{
    LogInputs, ModelResult, NamedTensors, OutcomeRecord, OutcomeWriter, Role, Status, inputs_sha256,
};
use crate::registry::{Deployment, ModelVersion};

pub struct Shadow {
    pool: InferencePool,
    deadline: Duration,
    log_inputs: LogInputs,
    sink: Arc<RecordSink>,
}

/// The answered request, handed over after its response is complete.
pub struct ShadowRequest {
    pub deployment: Arc<Deployment>,
    pub request_id: String,
    pub timestamp: SystemTime,
    pub inputs: Arc<Vec<Tensor>>,
    pub answered: Arc<ModelVersion>,
    pub outputs: Vec<Tensor>,
    pub latency: Duration,
}

/// One member's result: outputs and model time, or why there are none.
type Scored = Result<(Vec<Tensor>, Duration), (Status, Option<String>)>;

/// A result's outputs borrowed, for the record.
type ScoredView<'a> = Result<(&'a [Tensor], Duration), (Status, Option<String>)>;

fn view(scored: &Scored) -> ScoredView<'_> {
    match scored {
        Ok((outputs, latency)) => Ok((outputs.as_slice(), *latency)),
        Err((status, error)) => Err((*status, error.clone())),
    }
}

/// One shadowing member and, once it reported, its result (set once, without a lock).
struct Slot {
    version: Arc<ModelVersion>,
    role: Role,
    result: OnceLock<Scored>,
}

/// A record waiting for its challengers; whoever reports last assembles it, on the pool.
struct PendingRecord {
    request: ShadowRequest,
    /// The members that shadow, in deployment order.
    slots: Vec<Slot>,
    /// Reports still due: one per queued job, plus the submitter's (which covers shed slots).
    remaining: AtomicUsize,
    deadline: Instant,
    log_inputs: LogInputs,
    sink: Arc<RecordSink>,
}

impl Shadow {
    /// `models`: the served model names (coverage is counted per model).
    pub fn new(
        pool: InferencePool,
        deadline: Duration,
        log_inputs: LogInputs,
        writer: Arc<OutcomeWriter>,
        feedback: Arc<Feedback>,
        models: &[&str],
    ) -> Self {
        let coverage = models.iter().map(|&m| (m.to_owned(), ShadowCoverage::new(m))).collect();
        Self { pool, deadline, log_inputs, sink: Arc::new(RecordSink { writer, feedback, coverage }) }
    }

    /// Queues one job per member that did not answer, and returns at once.
    pub fn submit(&self, request: ShadowRequest) {
        let slots: Vec<Slot> = request
            .deployment
            .members()
            .filter(|(version, _)| !Arc::ptr_eq(version, &request.answered))
            .map(|(version, role)| Slot { version: Arc::clone(version), role, result: OnceLock::new() })
            .collect();
        if slots.is_empty() {
            return;
        }
        let members = slots.len();
        let pending = Arc::new(PendingRecord {
            remaining: AtomicUsize::new(members + 1),
            slots,
            request,
            deadline: Instant::now() + self.deadline,
            log_inputs: self.log_inputs,
            sink: Arc::clone(&self.sink),
        });
        let mut shed = 0;
        for slot in 0..members {
            let job = Arc::clone(&pending);
            if self.pool.spawn(move || job.score(slot)).is_err() {
                let _ = pending.slots[slot].result.set(Err((Status::Shed, None)));
                shed += 1;
            }
        }
        if shed == members {
            // Nothing could run: count it with atomics and write no record (there is no pair).
            for slot in &pending.slots {
                slot.version.metrics().shadow(Status::Shed.index()).increment(1);
            }
            self.sink.coverage(pending.request.answered.name(), false);
            return;
        }
        // Release the submitter's report. If every queued job already reported, the record is
        // assembled on the pool all the same; if even that cannot be queued, it is dropped (counted).
        if pending.remaining.fetch_sub(1 + shed, Ordering::AcqRel) == 1 + shed {
            let job = Arc::clone(&pending);
            if self.pool.spawn(move || job.finish()).is_err() {
                crate::metrics::outcome_records("dropped", 1);
            }
        }
    }

    /// Runs every queued shadow job (so every pending record is written), then flushes and
    /// closes the outcome log. Call after the server stopped taking requests.
    pub async fn close(self: &Arc<Self>) {
        let shadow = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            shadow.pool.close();
            shadow.sink.writer.close();
        })
        .await;
    }
}

impl PendingRecord {
    /// Runs one member on the shared input (on a shadow thread) and reports its result.
    fn score(&self, slot: usize) {
        let scored = if Instant::now() >= self.deadline {
            // Work that can no longer make its deadline is not worth the CPU.
            Err((Status::Timeout, None))
        } else {
            let start = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| self.slots[slot].version.infer(&self.request.inputs)));
            let latency = start.elapsed();
            match result {
                Ok(Ok(_)) if Instant::now() > self.deadline => Err((
                    Status::Timeout,
                    Some(format!("finished after the deadline, in {:.1} ms", latency.as_secs_f64() * 1e3)),
                )),
                Ok(Ok(outputs)) => Ok((outputs, latency)),
                Ok(Err(error)) => Err((Status::Error, Some(error.to_string()))),
                Err(_panic) => Err((Status::Panic, Some("the model panicked".to_owned()))),
            }
        };
        let _ = self.slots[slot].result.set(scored);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    /// Counts, assembles and writes the record (on a shadow thread).
    fn finish(&self) {
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
        self.sink.coverage(self.request.answered.name(), complete);
        let record = self.assemble();
        self.sink.writer.try_write(&record);
        self.sink.feedback.record(record.model.clone(), Observation::of(&record));
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
            Ok((request.outputs.as_slice(), request.latency)),
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
                let (status, latency_ms, outputs, error) = match scored {
                    Ok((outputs, latency)) => {
                        (Status::Ok, Some(latency), Some(NamedTensors::new(&manifest.outputs, outputs)), None)
                    }
                    Err((status, error)) => (status, None, None, error),
                };
                ModelResult {
                    version: version.version().to_string(),
                    role,
                    sha256: manifest.sha256.clone(),
                    status,
                    latency_ms,
                    outputs,
                    error,
                }
            })
            .collect();
        OutcomeRecord {
            kind: "outcome",
            task: &manifest.task,
            request_id: request.request_id.clone(),
            timestamp: request.timestamp,
            model: answered.name().to_owned(),
            answered_by: answered.version().to_string(),
            inputs,
            inputs_sha256: inputs_sha,
            results,
        }
    }
}

/// Where finished records go (the log and the live comparison), and the per-model coverage counts.
struct RecordSink {
    writer: Arc<OutcomeWriter>,
    feedback: Arc<Feedback>,
    /// Built once at start and never changed: read without a lock.
    coverage: HashMap<String, ShadowCoverage>,
}

impl RecordSink {
    fn coverage(&self, model: &str, complete: bool) {
        if let Some(coverage) = self.coverage.get(model) {
            coverage.record(complete);
        }
    }
}
