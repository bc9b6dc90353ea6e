//! Shadow scoring: the versions that did not answer a sampled request score the same decoded
//! input off the critical path, and one paired `OutcomeRecord` goes to the outcome log.
//!
//! Invariants:
//! - Never delays or changes the answer: the response is complete before `submit` is called, and
//!   `submit` only queues (no waiting, no locks shared with the request path).
//! - Bounded: shadow jobs run on their own pool (low OS priority, bounded queue). A job the queue
//!   cannot take is `shed`; one not finished by the deadline is `timeout` (and skipped if it had
//!   not started by then). Each is counted per version.
//! - A challenger's error or panic is recorded in its result and reaches no client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::executor::{InferencePool, PoolError};
use crate::model::{ModelError, Tensor};
use crate::outcomes::{
    LogInputs, ModelResult, NamedTensors, OutcomeRecord, OutcomeWriter, Role, Status, inputs_sha256,
};
use crate::registry::{Deployment, ModelVersion};

pub struct Shadow {
    pool: InferencePool,
    deadline: Duration,
    log_inputs: LogInputs,
    tasks: TaskTracker,
    sink: Arc<RecordSink>,
}

/// Where finished records go: the outcome log, and the counters of what they hold.
struct RecordSink {
    writer: OutcomeWriter,
    /// Per model: (records, records in which every version finished), for the coverage gauge.
    coverage: Mutex<HashMap<String, (u64, u64)>>,
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

type JobResult = (Result<Vec<Tensor>, ModelError>, Duration);

/// A shadow job's state while the record waits for it.
enum Pending {
    Running(oneshot::Receiver<std::thread::Result<Option<JobResult>>>),
    Shed,
}

impl Shadow {
    pub fn new(pool: InferencePool, deadline: Duration, log_inputs: LogInputs, writer: OutcomeWriter) -> Self {
        let sink = Arc::new(RecordSink { writer, coverage: Mutex::default() });
        Self { pool, deadline, log_inputs, tasks: TaskTracker::new(), sink }
    }

    /// Queues every other member of the deployment on `request`'s input and returns at once; a task
    /// collects their results (up to the deadline) and writes the record.
    pub fn submit(&self, request: ShadowRequest) {
        let deadline = Instant::now() + self.deadline;
        let others: Vec<(Arc<ModelVersion>, Role, Pending)> = request
            .deployment
            .members()
            .filter(|(version, _)| !Arc::ptr_eq(version, &request.answered))
            .map(|(version, role)| {
                let job_version = Arc::clone(version);
                let inputs = Arc::clone(&request.inputs);
                let submitted = self.pool.submit(move || {
                    // Work that could no longer make its deadline is not worth the CPU.
                    if Instant::now() >= deadline {
                        return None;
                    }
                    let start = Instant::now();
                    let result = job_version.infer(&inputs);
                    Some((result, start.elapsed()))
                });
                let pending = match submitted {
                    Ok(receiver) => Pending::Running(receiver),
                    Err(PoolError::Full | PoolError::Stopped | PoolError::Panicked) => Pending::Shed,
                };
                (Arc::clone(version), role, pending)
            })
            .collect();
        if others.is_empty() {
            return;
        }
        let context = RecordContext { log_inputs: self.log_inputs };
        let sink = Arc::clone(&self.sink);
        self.tasks.spawn(async move {
            let mut results = Vec::with_capacity(others.len() + 1);
            for (version, role, pending) in others {
                let status = match pending {
                    Pending::Shed => Err((Status::Shed, None)),
                    Pending::Running(receiver) => match tokio::time::timeout_at(deadline.into(), receiver).await {
                        Ok(Ok(Ok(Some((Ok(outputs), latency))))) => Ok((outputs, latency)),
                        Ok(Ok(Ok(Some((Err(error), _))))) => Err((Status::Error, Some(error.to_string()))),
                        Ok(Ok(Ok(None))) | Err(_) => Err((Status::Timeout, None)),
                        Ok(Ok(Err(_panic))) => Err((Status::Panic, Some("the model panicked".to_owned()))),
                        Ok(Err(_closed)) => Err((Status::Shed, None)),
                    },
                };
                results.push((version, role, status));
            }
            sink.write(context.record(request, results));
        });
    }

    /// Waits for every shadow task, then flushes and closes the outcome log.
    pub async fn close(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        let sink = Arc::clone(&self.sink);
        let _ = tokio::task::spawn_blocking(move || sink.writer.close()).await;
    }
}

impl RecordSink {
    fn write(&self, record: OutcomeRecord) {
        let complete = record.results.iter().all(|r| r.status == Status::Ok);
        for result in &record.results {
            if result.version != record.answered_by {
                crate::metrics::shadow_result(&record.model, &result.version, result.status.label());
            }
        }
        {
            let mut coverage = self.coverage.lock();
            let entry = coverage.entry(record.model.clone()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(complete);
            crate::metrics::shadow_coverage(&record.model, complete, entry.1 as f64 / entry.0 as f64);
        }
        self.writer.try_write(record);
    }
}

#[derive(Clone, Copy)]
struct RecordContext {
    log_inputs: LogInputs,
}

type Scored = (Arc<ModelVersion>, Role, Result<(Vec<Tensor>, Duration), (Status, Option<String>)>);

impl RecordContext {
    fn record(self, request: ShadowRequest, others: Vec<Scored>) -> OutcomeRecord {
        let ShadowRequest { deployment, request_id, timestamp, inputs, answered, outputs, latency } = request;
        let answered_role = deployment.role_of(&answered);
        let mut scored = others;
        scored.push((Arc::clone(&answered), answered_role, Ok((outputs, latency))));
        // Champion first, then challengers in configured order: the same column order in every record.
        scored.sort_by_key(|(version, _, _)| deployment.member_index(version));
        let signature = answered.manifest();
        let (logged_inputs, hashed) = match self.log_inputs {
            LogInputs::Full => (Some(NamedTensors::new(&signature.inputs, &inputs)), None),
            LogInputs::Hash => (None, Some(inputs_sha256(&inputs))),
            LogInputs::None => (None, None),
        };
        let results = scored
            .into_iter()
            .map(|(version, role, outcome)| {
                let manifest = version.manifest();
                let (status, latency_ms, outputs, error) = match outcome {
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
            request_id,
            timestamp,
            model: answered.name().to_owned(),
            answered_by: answered.version().to_string(),
            inputs: logged_inputs,
            inputs_sha256: hashed,
            results,
        }
    }
}
