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
//! - Batched: a shadow thread takes up to `MAX_BATCH` queued jobs at once and scores those of one
//!   version in a single run (rows stacked), so under load a challenger pays its per-run overhead
//!   once per batch, not once per request. A batch that fails or panics is scored again one
//!   request at a time, so each result is its own. A batched result's latency is the batch's.
//! - When no challenger can be queued at all, no record is written (there is nothing to pair); the
//!   request still counts, as `shed` per challenger and as an incomplete one in coverage.
//! - Bounded: a job the queue cannot take is `shed`; one that could not start before the deadline
//!   is skipped and, like one that finished after it, recorded as `timeout`. Each is counted.
//! - Paced: the threads together use at most `shadow_cpu_budget` cores of CPU time (`Pacer`);
//!   what that leaves undone is shed or times out, as above.
//! - A challenger's error or panic is recorded in its result and reaches no client.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::compare::Observation;
use crate::executor::IdlePoll;
use crate::metrics::ShadowCoverage;
use crate::model::Tensor;
use crate::outcomes::feedback::Feedback;
use crate::outcomes::{
    LogInputs, ModelResult, NamedTensors, OutcomeRecord, OutcomeWriter, Role, Status, inputs_sha256,
};
use crate::registry::{Deployment, ModelVersion};
use crossbeam_queue::ArrayQueue;

pub struct Shadow {
    pool: ShadowPool,
    deadline: Duration,
    log_inputs: LogInputs,
    sink: Arc<RecordSink>,
}

/// The shadow pool's bounds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ShadowSettings {
    /// Threads, each at background priority.
    pub threads: usize,
    /// Jobs waiting at most; beyond it they are shed.
    pub queue: usize,
    /// After this long a member's result is a timeout.
    pub deadline: Duration,
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
}

/// One member's result: outputs, model time and the requests in its batch, or why there are none.
type Scored = Result<(Vec<Tensor>, Duration, usize), (Status, Option<String>)>;

/// A result's outputs borrowed, for the record.
type ScoredView<'a> = Result<(&'a [Tensor], Duration, usize), (Status, Option<String>)>;

fn view(scored: &Scored) -> ScoredView<'_> {
    match scored {
        Ok((outputs, latency, batch)) => Ok((outputs.as_slice(), *latency, *batch)),
        Err((status, error)) => Err((*status, error.clone())),
    }
}

/// Jobs a shadow thread takes from the queue at once, and so the largest batch.
const MAX_BATCH: usize = 64;

/// What a shadow thread does: score one member of a record, or (rarely) assemble a record whose
/// members all reported before its submitter did.
enum Work {
    Score(Arc<PendingRecord>, usize),
    Finish(Arc<PendingRecord>),
}

/// How long a shadow thread that found the queue empty first sleeps before it looks again (then
/// longer, up to `idle_poll_max`, while it stays empty: `IdlePoll`).
const POLL: Duration = Duration::from_millis(1);

/// The longest sleep between looks at an empty queue: a job that arrives just after a look waits
/// at most this long to start, a small part of its deadline; and the default queue holds what a
/// sudden 30k requests a second with two challengers bring in that time.
fn idle_poll_max(deadline: Duration) -> Duration {
    (deadline / 8).clamp(POLL, Duration::from_millis(16))
}

/// Background-priority threads polling one bounded, lock-free queue of `Work`.
struct ShadowPool {
    shared: Arc<PoolShared>,
    handles: parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

struct PoolShared {
    queue: ArrayQueue<Work>,
    closed: AtomicBool,
    idle_poll_max: Duration,
}

impl ShadowPool {
    fn new(settings: &ShadowSettings) -> std::io::Result<Self> {
        let shared = Arc::new(PoolShared {
            queue: ArrayQueue::new(settings.queue.max(1)),
            closed: AtomicBool::new(false),
            idle_poll_max: idle_poll_max(settings.deadline),
        });
        let threads = settings.threads.max(1);
        let share = (settings.cpu_budget / threads as f64).min(1.0);
        let mut handles = Vec::new();
        for i in 0..threads {
            let shared = Arc::clone(&shared);
            handles.push(std::thread::Builder::new().name(format!("shadow-{i}")).spawn(move || {
                crate::executor::lower_priority();
                shared.work(Pacer::for_this_thread(share));
            })?);
        }
        Ok(Self { shared, handles: parking_lot::Mutex::new(handles) })
    }

    fn is_full(&self) -> bool {
        self.shared.queue.is_full()
    }

    /// Queues without waiting; gives the work back if the queue is full or the pool closed.
    fn push(&self, work: Work) -> Result<(), Work> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(work);
        }
        // No wakeup: the threads poll (a futex wake would cost the request thread and the CPU).
        self.shared.queue.push(work)
    }

    /// Runs everything queued, then stops the threads. Blocking.
    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        for handle in std::mem::take(&mut *self.handles.lock()) {
            let _ = handle.join();
        }
    }
}

impl PoolShared {
    fn work(&self, mut pacer: Pacer) {
        let mut taken = Vec::with_capacity(MAX_BATCH);
        let mut poll = IdlePoll::new(POLL, self.idle_poll_max);
        loop {
            while taken.len() < MAX_BATCH
                && let Some(work) = self.queue.pop()
            {
                taken.push(work);
            }
            if taken.is_empty() {
                if self.closed.load(Ordering::Acquire) && self.queue.is_empty() {
                    return;
                }
                pacer.rest(poll.idle());
                continue;
            }
            poll.busy();
            let cpu = pacer.clock();
            let mut scores = Vec::with_capacity(taken.len());
            for work in taken.drain(..) {
                match work {
                    Work::Score(pending, slot) => scores.push((pending, slot)),
                    Work::Finish(pending) => pending.finish(),
                }
            }
            // Group by version, keeping queue order within each group.
            while let Some((pending, slot)) = scores.first() {
                let version = Arc::clone(&pending.slots[*slot].version);
                let (group, rest): (Vec<_>, Vec<_>) =
                    scores.into_iter().partition(|(p, slot)| Arc::ptr_eq(&p.slots[*slot].version, &version));
                scores = rest;
                score_group(&version, group);
            }
            pacer.worked(cpu);
            // In slices, so a close is seen soon: then the queue is drained at full speed (the
            // server has stopped answering).
            while let Some(rest) = pacer.due().filter(|_| !self.closed.load(Ordering::Acquire)) {
                pacer.rest(rest.min(REST_SLICE));
            }
        }
    }
}

/// Keeps a shadow thread within its share of `shadow_cpu_budget`. `SCHED_IDLE` already yields
/// every busy CPU to request threads, but not everything a CPU does shows up as busy: caches the
/// shadow work evicted, and a container's CPU quota (which idle-priority threads spend like any
/// other, so the champion is throttled for it) all land on the answered requests. So after work
/// that took `c` of its own CPU time, a thread rests `c × (1 − share) / share`: over any stretch
/// it uses at most `share` of a core. What it cannot get to is shed or times out, and is counted.
/// Idle time banks no credit, so a burst after a quiet spell is paced from its first batch.
struct Pacer {
    /// Of one core, in (0, 1]; 1 is not paced.
    share: f64,
    /// Rest owed for work done; taken once it is worth a sleep.
    owed: Duration,
}

/// Rest shorter than this is carried over rather than slept (a sleep has its own cost).
const MIN_REST: Duration = Duration::from_millis(1);
/// The longest single sleep of a rest (a slow challenger's batch can owe seconds of it).
const REST_SLICE: Duration = Duration::from_millis(50);

impl Pacer {
    /// A pacer for the calling thread; unpaced (with a warning) where its CPU time cannot be read.
    fn for_this_thread(share: f64) -> Self {
        if share < 1.0 && cpu_time::ThreadTime::try_now().is_err() {
            tracing::warn!("this system does not report a thread's CPU time; shadow_cpu_budget is not applied");
            return Self::new(1.0);
        }
        Self::new(share)
    }

    fn new(share: f64) -> Self {
        Self { share, owed: Duration::ZERO }
    }

    /// The thread's CPU clock, where pacing needs it.
    fn clock(&self) -> Option<cpu_time::ThreadTime> {
        (self.share < 1.0).then(|| cpu_time::ThreadTime::try_now().ok()).flatten()
    }

    /// Owes rest for the CPU time used since `clock`.
    fn worked(&mut self, clock: Option<cpu_time::ThreadTime>) {
        if let Some(used) = clock.and_then(|c| c.try_elapsed().ok()) {
            self.charge(used);
        }
    }

    fn charge(&mut self, cpu: Duration) {
        self.owed += cpu.mul_f64((1.0 - self.share) / self.share);
    }

    /// The rest owed, once it is worth a sleep.
    fn due(&self) -> Option<Duration> {
        (self.owed >= MIN_REST).then_some(self.owed)
    }

    /// Sleeps; the time slept pays off what is owed (an idle poll pays too).
    fn rest(&mut self, duration: Duration) {
        let start = Instant::now();
        std::thread::sleep(duration);
        self.rested(start.elapsed());
    }

    fn rested(&mut self, slept: Duration) {
        self.owed = self.owed.saturating_sub(slept);
    }
}

/// Scores jobs of one version, oldest first, in batches no larger than the version (at its warm-up
/// speed) can finish before the oldest job's deadline: jobs already past their deadline are
/// timeouts, never run; a batch whose inputs do not stack, or that fails, runs one job at a time.
fn score_group(version: &ModelVersion, mut group: Vec<(Arc<PendingRecord>, usize)>) {
    group.reverse();
    while !group.is_empty() {
        let now = Instant::now();
        let mut batch: Vec<(Arc<PendingRecord>, usize)> = Vec::new();
        let mut rows = 0;
        while let Some((pending, _)) = group.last() {
            if now >= pending.deadline {
                // Work that can no longer make its deadline is not worth the CPU.
                let (pending, slot) = group.pop().expect("just looked");
                pending.report(slot, Err((Status::Timeout, None)));
                continue;
            }
            let budget = batch.first().map_or(pending.deadline, |(first, _)| first.deadline) - now;
            let more = pending.request.inputs.first().map_or(1, Tensor::rows);
            if !batch.is_empty() && version.one_row().saturating_mul((rows + more) as u32) > budget {
                break;
            }
            rows += more;
            batch.push(group.pop().expect("just looked"));
        }
        match batch.len() {
            0 => {}
            1 => {
                let (pending, slot) = batch.pop().expect("one job");
                pending.score(slot);
            }
            _ => match run_batch(version, &batch) {
                Some(per_request) => {
                    for ((pending, slot), scored) in batch.iter().zip(per_request) {
                        pending.report(*slot, pending.within_deadline(scored));
                    }
                }
                None => batch.into_iter().for_each(|(pending, slot)| pending.score(slot)),
            },
        }
    }
}

/// One run over the stacked inputs, cut back into each request's outputs; `None` if the inputs do
/// not stack or the run fails (each is then run alone, so an error is its own request's).
fn run_batch(version: &ModelVersion, live: &[(Arc<PendingRecord>, usize)]) -> Option<Vec<Scored>> {
    let inputs_of = |i: usize| live.iter().map(|(p, _)| &p.request.inputs[i]).collect::<Vec<&Tensor>>();
    let count = live[0].0.request.inputs.len();
    let inputs: Vec<Tensor> = (0..count).map(|i| Tensor::concat_rows(&inputs_of(i))).collect::<Option<_>>()?;
    let rows: Vec<usize> = live.iter().map(|(p, _)| p.request.inputs[0].rows()).collect();
    let start = Instant::now();
    let outputs = catch_unwind(AssertUnwindSafe(|| version.infer(&inputs))).ok()?.ok()?;
    let latency = start.elapsed();
    let mut per_request: Vec<Vec<Tensor>> = (0..live.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in &outputs {
        for (request, piece) in per_request.iter_mut().zip(output.split_rows(&rows)?) {
            request.push(piece);
        }
    }
    Some(per_request.into_iter().map(|outputs| Ok((outputs, latency, live.len()))).collect())
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
        settings: ShadowSettings,
        log_inputs: LogInputs,
        writer: Arc<OutcomeWriter>,
        feedback: Arc<Feedback>,
        models: &[&str],
    ) -> std::io::Result<Self> {
        let coverage = models.iter().map(|&m| (m.to_owned(), ShadowCoverage::new(m))).collect();
        let pool = ShadowPool::new(&settings)?;
        Ok(Self {
            pool,
            deadline: settings.deadline,
            log_inputs,
            sink: Arc::new(RecordSink { writer, feedback, coverage }),
        })
    }

    /// If the queue is full (as it stays while the CPU budget binds), counts the request as shed
    /// for every member that would shadow it and returns `true`, so the caller does not assemble a
    /// `ShadowRequest` only to drop it: no allocation, and no touch of the shared `Arc`s' counts.
    /// A queue that fills after this look is handled by `submit`.
    pub fn shed_if_full(&self, deployment: &Deployment, answered: &Arc<ModelVersion>) -> bool {
        if !self.pool.is_full() {
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
        self.sink.coverage(model, false);
    }

    /// Queues one job per member that did not answer, and returns at once.
    pub fn submit(&self, request: ShadowRequest) {
        let slots: Vec<Slot> = shadowing(&request.deployment, &request.answered)
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
            if self.pool.push(Work::Score(Arc::clone(&pending), slot)).is_err() {
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
            && self.pool.push(Work::Finish(Arc::clone(&pending))).is_err()
        {
            crate::metrics::outcome_records("dropped", 1);
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
                Ok(Ok(outputs)) => self.within_deadline(Ok((outputs, latency, 1))),
                Ok(Err(error)) => Err((Status::Error, Some(error.to_string()))),
                Err(_panic) => Err((Status::Panic, Some("the model panicked".to_owned()))),
            }
        };
        self.report(slot, scored);
    }

    /// A result that came after the deadline counts as a timeout.
    fn within_deadline(&self, scored: Scored) -> Scored {
        match scored {
            Ok((_, latency, _)) if Instant::now() > self.deadline => Err((
                Status::Timeout,
                Some(format!("finished after the deadline, in {:.1} ms", latency.as_secs_f64() * 1e3)),
            )),
            other => other,
        }
    }

    /// Sets a member's result; whoever reports last writes the record.
    fn report(&self, slot: usize, scored: Scored) {
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
        self.sink.writer.try_write_line(record.to_json_line());
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
            Ok((request.outputs.as_slice(), request.latency, 1)),
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
                    Ok((outputs, latency, batch)) => (
                        Status::Ok,
                        Some(latency),
                        (batch > 1).then_some(batch),
                        Some(NamedTensors::new(&manifest.outputs, outputs)),
                        None,
                    ),
                    Err((status, error)) => (status, None, None, None, error),
                };
                ModelResult {
                    version: version.version().to_string(),
                    role,
                    sha256: manifest.sha256.clone(),
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

/// The members that shadow a request: every one but the version that answered it.
fn shadowing<'a>(
    deployment: &'a Deployment,
    answered: &'a Arc<ModelVersion>,
) -> impl Iterator<Item = (&'a Arc<ModelVersion>, Role)> {
    deployment.members().filter(move |(version, _)| !Arc::ptr_eq(version, answered))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_paced_thread_rests_so_its_work_is_its_share_of_the_time() {
        let mut quarter = Pacer::new(0.25);
        quarter.charge(3 * MS);
        // 3 ms of work at a quarter of a core: 9 ms of rest, so 3 of every 12 ms are work.
        assert_eq!(quarter.due(), Some(9 * MS));
        quarter.rested(4 * MS);
        assert_eq!(quarter.due(), Some(5 * MS), "a short sleep pays part of it");
        quarter.rested(5 * MS);
        assert_eq!(quarter.due(), None);
    }

    #[test]
    fn rest_too_short_to_sleep_is_carried_over_and_idle_time_banks_no_credit() {
        let mut half = Pacer::new(0.5);
        for _ in 0..9 {
            half.charge(MS / 10);
            assert_eq!(half.due(), None, "less than a millisecond owed is not slept yet");
        }
        half.charge(MS / 10);
        assert_eq!(half.due(), Some(MS));
        half.rested(100 * MS);
        half.charge(2 * MS);
        assert_eq!(half.due(), Some(2 * MS), "a long idle spell does not pay for work to come");
    }

    #[test]
    fn an_idle_thread_looks_less_often_but_well_within_the_deadline() {
        assert_eq!(idle_poll_max(Duration::from_millis(80)), 10 * MS);
        assert_eq!(idle_poll_max(Duration::from_millis(250)), 16 * MS);
        assert_eq!(idle_poll_max(Duration::from_millis(2)), MS);
    }

    #[test]
    fn a_whole_core_is_not_paced() {
        let mut whole = Pacer::new(1.0);
        whole.charge(Duration::from_secs(1));
        assert_eq!(whole.due(), None);
        assert!(whole.clock().is_none(), "nor is its CPU time read");
    }
}
