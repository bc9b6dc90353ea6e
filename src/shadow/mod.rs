//! Shadow scoring: the versions that did not answer a sampled request score the same decoded
//! input off the critical path, and one paired `OutcomeRecord` goes to the outcome log.
//!
//! The parts: `thread` (a shadow thread, on the background `Worker`), `pacer` (its CPU budget),
//! `score` (the one place a challenger runs: one version's queued jobs as one run, or one at a time), `record` (a request while its members
//! report, and the record it becomes).
//!
//! Invariants:
//! - Never delays or changes the answer: the response is complete before `submit` is called, and
//!   `submit` only queues one job per challenger on a lock-free queue. The request thread shares no
//!   lock with the shadow threads (they run at background priority; a lock held by one of them,
//!   preempted, would stall the request) and never assembles or serialises a record.
//! - Everything after runs on the shadow pool: each challenger's inference, and, in whichever job
//!   finishes last, assembling, counting and serialising the record.
//! - Batched: a shadow thread takes up to `LOOK` queued jobs at once and holds each version's until
//!   they make `MAX_BATCH` rows or the oldest has waited `shadow_max_wait_ms` (so a quiet gateway
//!   pays a model's fixed cost per run once for several records; the rest of the deadline is the
//!   time to run). It scores them in runs of up to `MAX_BATCH` rows (stacked), sized by the version's measured time
//!   per row at each batch size and the oldest job's deadline, so under load a challenger pays its
//!   per-run overhead (a heavy model: reading its weights) once per batch, not once per request.
//!   Under pressure the oldest jobs that could only run in a small batch are timeouts, so that
//!   newer ones run in a full one (`score::plan`). A batch that fails or panics is scored again
//!   one request at a time, so each result is its own. A batched result's latency is the batch's.
//! - When no challenger can be queued at all, no record is written (there is nothing to pair); the
//!   request still counts, as `shed` per challenger and as an incomplete one in coverage.
//! - Bounded: a job the queue cannot take is `shed`, and so is a request whose tensors would take
//!   the records pending beyond `shadow_queue_bytes`; one that could not start before the deadline
//!   is skipped and, like one that finished after it, recorded as `timeout`. Each is counted.
//! - Paced: the threads together use at most `shadow_cpu_budget` cores of CPU time (`Pacer`);
//!   what that leaves undone is shed or times out, as above. While the budget binds, the queue is
//!   kept to `PACED_QUEUE` jobs, so that those it takes are fresh enough to run in full batches.
//! - A challenger's error or panic is recorded in its result and reaches no client.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use self::pacer::Pacer;
use self::record::{Job, Outlets, PendingRecord, Slot};
use self::thread::{LOOK, POLL, ShadowThread, idle_poll_max};
use crate::background::{self, Priority, Worker};
use crate::join::LabelJoin;
use crate::metrics::ShadowCoverage;
use crate::model::Tensor;
use crate::outcomes::LogInputs;
use crate::registry::{Deployment, ModelVersion};
use crate::registry::{Role, Status};

mod pacer;
mod record;
mod score;
mod thread;

/// The jobs a paced shadow keeps queued at most (`shadow_queue` when smaller). While the budget
/// binds, the threads serve jobs at the budget's rate, oldest first, so a job waits the queue's
/// length over that rate: a long queue only ages every job to its deadline, and the few that still
/// run do so in small batches, at a small batch's cost a row. Measured at 10k req/s with the default
/// budget: 31-34% of records complete with 8192 queued, 68-79% with 1024. When the threads are
/// not held back by the budget (only by the scheduler, on busy cores), the whole `shadow_queue`
/// absorbs the gaps.
const PACED_QUEUE: usize = 1024;

pub struct Shadow {
    /// Background-priority threads polling one bounded, lock-free queue of jobs.
    pool: Worker<Job>,
    /// Set by the threads while their budget makes them rest: the queue is then `PACED_QUEUE` long.
    paced: Arc<AtomicBool>,
    deadline: Duration,
    log_inputs: LogInputs,
    outlets: Arc<Outlets>,
}

/// The shadow pool's bounds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ShadowSettings {
    /// Threads, each at background priority.
    pub threads: usize,
    /// Jobs waiting at most; beyond it they are shed.
    pub queue: usize,
    /// Bytes of tensors (inputs and answers) that pending records may hold together; a request
    /// that would pass it is shed.
    pub queue_bytes: usize,
    /// After this long a member's result is a timeout.
    pub deadline: Duration,
    /// How long a job may be held for others of its version to be scored with it (less than `deadline`).
    pub max_wait: Duration,
    /// Cores the threads may use together, at most (paced on their own CPU time).
    pub cpu_budget: f64,
}

/// The answered request, handed over after its response is complete.
pub struct ShadowRequest {
    pub deployment: Arc<Deployment>,
    pub request_id: String,
    pub timestamp: SystemTime,
    pub inputs: Arc<Vec<Tensor>>,
    pub answered: Arc<ModelVersion>,
    pub outputs: Arc<Vec<Tensor>>,
    pub latency: Duration,
    /// The request's slice (`[models.<name>.slices]`), if its model's records are sliced.
    pub slice: Option<String>,
}

impl Shadow {
    /// `models`: the served model names (coverage is counted per model). Records go to `join`,
    /// which hands their lines on to the outcome log.
    pub fn new(
        settings: ShadowSettings,
        log_inputs: LogInputs,
        join: Arc<LabelJoin>,
        models: &[&str],
    ) -> std::io::Result<Self> {
        let coverage = models.iter().map(|&m| (m.to_owned(), ShadowCoverage::new(m))).collect();
        let threads = settings.threads.max(1);
        let share = (settings.cpu_budget / threads as f64).min(1.0);
        let thread = background::Settings {
            name: "shadow",
            threads,
            queue: settings.queue,
            batch: LOOK,
            priority: Priority::Idle,
            poll: POLL,
            poll_idle: idle_poll_max(settings.deadline),
        };
        let paced = Arc::new(AtomicBool::new(false));
        let pool = Worker::start(thread, |_| {
            let reserve = settings.deadline.saturating_sub(settings.max_wait);
            ShadowThread::new(Pacer::for_this_thread(share), reserve, Arc::clone(&paced))
        })?;
        let outlets = Outlets { join, coverage, held_bytes: AtomicUsize::new(0), max_held_bytes: settings.queue_bytes };
        Ok(Self { pool, paced, deadline: settings.deadline, log_inputs, outlets: Arc::new(outlets) })
    }

    /// If the queue is full (as it stays while the CPU budget binds), counts the request as shed
    /// for every member that would shadow it and returns `true`, so the caller does not assemble a
    /// `ShadowRequest` only to drop it: no allocation, and no touch of the shared `Arc`s' counts.
    /// A queue that fills after this look is handled by `submit`.
    pub fn shed_if_full(&self, deployment: &Deployment, answered: &Arc<ModelVersion>) -> bool {
        let full = self.pool.is_full() || (self.paced.load(Ordering::Relaxed) && self.pool.queued() >= PACED_QUEUE);
        if !full {
            return false;
        }
        self.count_all_shed(shadowing(deployment, answered).map(|(version, _)| version), answered.name());
        true
    }

    /// A request none of whose members could be queued: counted, with no record (there is no pair).
    fn count_all_shed<'a>(&self, members: impl Iterator<Item = &'a Arc<ModelVersion>>, model: &str) {
        for version in members {
            version.metrics().shadow(Status::Shed.index()).increment(1);
        }
        self.outlets.coverage(model, false);
    }

    /// Queues one job per member that did not answer, and returns at once.
    pub fn submit(&self, request: ShadowRequest) {
        let slots: Vec<Slot> = shadowing(&request.deployment, &request.answered)
            .map(|(version, role)| Slot { version: Arc::clone(version), role, result: OnceLock::new() })
            .collect();
        if slots.is_empty() {
            return;
        }
        // The request's tensors stay alive until its record is written: bounded in bytes too, so
        // that a queue long enough for a burst of small rows cannot hold as many large ones.
        let held_bytes = tensor_bytes(&request.inputs) + tensor_bytes(&request.outputs);
        if !self.outlets.hold(held_bytes) {
            self.count_all_shed(slots.iter().map(|slot| &slot.version), request.answered.name());
            return;
        }
        let members = slots.len();
        let pending = Arc::new(PendingRecord {
            remaining: AtomicUsize::new(members + 1),
            slots,
            request,
            deadline: Instant::now() + self.deadline,
            log_inputs: self.log_inputs,
            outlets: Arc::clone(&self.outlets),
            held_bytes,
        });
        let mut shed = 0;
        for slot in 0..members {
            if self.pool.try_send(Job::Score(Arc::clone(&pending), slot)).is_err() {
                let _ = pending.slots[slot].result.set(Err((Status::Shed, None)));
                shed += 1;
            }
        }
        if shed == members {
            self.count_all_shed(pending.slots.iter().map(|slot| &slot.version), pending.request.answered.name());
            return;
        }
        // Release the submitter's report. If every queued job already reported, the record is
        // assembled on the pool all the same; if even that cannot be queued, it is dropped (counted).
        if pending.remaining.fetch_sub(1 + shed, Ordering::AcqRel) == 1 + shed
            && self.pool.try_send(Job::Finish(Arc::clone(&pending))).is_err()
        {
            crate::metrics::outcome_records("dropped", 1);
        }
    }

    /// Runs every queued shadow job, so every pending record has gone to the join. Call after the
    /// server stopped taking requests, before the join and the log close.
    pub async fn close(self: &Arc<Self>) {
        let shadow = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || shadow.pool.close()).await;
    }
}

fn tensor_bytes(tensors: &[Tensor]) -> usize {
    tensors.iter().map(|t| t.data().byte_len()).sum()
}

/// The members that shadow a request: every one but the version that answered it.
fn shadowing<'a>(
    deployment: &'a Deployment,
    answered: &'a Arc<ModelVersion>,
) -> impl Iterator<Item = (&'a Arc<ModelVersion>, Role)> {
    deployment.members().filter(move |(version, _)| !Arc::ptr_eq(version, answered))
}
