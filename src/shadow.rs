//! Shadow scoring: the versions that did not answer a sampled request score the same decoded
//! input off the critical path, and one paired `OutcomeRecord` goes to the outcome log.
//!
//! Invariants:
//! - Never delays or changes the answer: the response is complete before `submit` is called, and
//!   `submit` only queues one job per challenger (`try_send`, no waiting, no task, no lock shared
//!   with the request path).
//! - Everything after runs on the shadow pool at background OS priority: each challenger's
//!   inference, and, in whichever job finishes last, assembling and serialising the record.
//! - Bounded: a job the queue cannot take is `shed`; one that could not start before the deadline
//!   is skipped and, like one that finished after it, recorded as `timeout`. Each is counted.
//! - A challenger's error or panic is recorded in its result and reaches no client.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::executor::InferencePool;
use crate::model::Tensor;
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

/// One shadowing member and, once it reported, its result.
struct Slot {
    version: Arc<ModelVersion>,
    role: Role,
    result: Option<Scored>,
}

/// A record waiting for its challengers; the last to report assembles it.
struct PendingRecord {
    request: ShadowRequest,
    /// The members that shadow, in deployment order, and their results as they arrive.
    slots: Mutex<Vec<Slot>>,
    remaining: AtomicUsize,
    deadline: Instant,
    log_inputs: LogInputs,
    sink: Arc<RecordSink>,
}

impl Shadow {
    pub fn new(pool: InferencePool, deadline: Duration, log_inputs: LogInputs, writer: OutcomeWriter) -> Self {
        Self { pool, deadline, log_inputs, sink: Arc::new(RecordSink { writer, coverage: Mutex::default() }) }
    }

    /// Queues one job per member that did not answer, and returns at once.
    pub fn submit(&self, request: ShadowRequest) {
        let slots: Vec<_> = request
            .deployment
            .members()
            .filter(|(version, _)| !Arc::ptr_eq(version, &request.answered))
            .map(|(version, role)| Slot { version: Arc::clone(version), role, result: None })
            .collect();
        if slots.is_empty() {
            return;
        }
        let versions: Vec<Arc<ModelVersion>> = slots.iter().map(|slot| Arc::clone(&slot.version)).collect();
        let pending = Arc::new(PendingRecord {
            remaining: AtomicUsize::new(slots.len()),
            slots: Mutex::new(slots),
            request,
            deadline: Instant::now() + self.deadline,
            log_inputs: self.log_inputs,
            sink: Arc::clone(&self.sink),
        });
        for (slot, version) in versions.into_iter().enumerate() {
            let job = Arc::clone(&pending);
            if self.pool.spawn(move || job.score(slot, &version)).is_err() {
                pending.report(slot, Err((Status::Shed, None)));
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
    fn score(self: &Arc<Self>, slot: usize, version: &ModelVersion) {
        // Work that can no longer make its deadline is not worth the CPU.
        if Instant::now() >= self.deadline {
            return self.report(slot, Err((Status::Timeout, None)));
        }
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| version.infer(&self.request.inputs)));
        let latency = start.elapsed();
        let scored = match result {
            Ok(Ok(_)) if Instant::now() > self.deadline => Err((
                Status::Timeout,
                Some(format!("finished after the deadline, in {:.1} ms", latency.as_secs_f64() * 1e3)),
            )),
            Ok(Ok(outputs)) => Ok((outputs, latency)),
            Ok(Err(error)) => Err((Status::Error, Some(error.to_string()))),
            Err(_panic) => Err((Status::Panic, Some("the model panicked".to_owned()))),
        };
        self.report(slot, scored);
    }

    fn report(self: &Arc<Self>, slot: usize, scored: Scored) {
        self.slots.lock()[slot].result = Some(scored);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sink.write(self.assemble());
        }
    }

    fn assemble(&self) -> OutcomeRecord {
        let request = &self.request;
        let answered = &request.answered;
        let mut scored: Vec<(Arc<ModelVersion>, Role, Scored)> = std::mem::take(&mut *self.slots.lock())
            .into_iter()
            .map(|slot| (slot.version, slot.role, slot.result.unwrap_or(Err((Status::Shed, None)))))
            .collect();
        scored.push((
            Arc::clone(answered),
            request.deployment.role_of(answered),
            Ok((request.outputs.clone(), request.latency)),
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
                        (Status::Ok, Some(latency), Some(NamedTensors::new(&manifest.outputs, &outputs)), None)
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

/// Where finished records go: counted, serialised, and handed to the outcome log.
struct RecordSink {
    writer: OutcomeWriter,
    /// Per model: (records, records in which every version finished), for the coverage gauge.
    coverage: Mutex<HashMap<String, (u64, u64)>>,
}

impl RecordSink {
    fn write(&self, record: OutcomeRecord) {
        let complete = record.results.iter().all(|r| r.status == Status::Ok);
        for result in record.results.iter().filter(|r| r.version != record.answered_by) {
            crate::metrics::shadow_result(&record.model, &result.version, result.status.label());
        }
        {
            let mut coverage = self.coverage.lock();
            let entry = coverage.entry(record.model.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(complete);
            crate::metrics::shadow_coverage(&record.model, complete, entry.1 as f64 / entry.0 as f64);
        }
        self.writer.try_write(&record);
    }
}
