//! Dynamic batching of one version's requests: concurrent requests queue their rows here, and a
//! pool thread runs what is queued as one call, cut back into each request's outputs.
//!
//! How a batch forms (Triton's default, no added delay): a request queues its rows and, unless a
//! drain is already waiting for a pool thread, queues one. A drain starts on a free thread, takes
//! every row queued (up to `max_batch`), runs them, and goes on while rows are queued. So with a
//! pool thread free each request runs at once, alone or beside another; with every thread busy the
//! rows that arrive meanwhile wait for the first thread to free, and run together. With
//! `max_queue_delay > 0` a drain that found fewer than `max_batch` rows waits up to that long (from
//! its oldest request's arrival) for more.
//!
//! Invariants: the queue is bounded (a full queue refuses at once); a request whose caller has gone
//! (its timeout) is not run; a batch whose inputs do not stack, that fails or that panics is run
//! again one request at a time, so an error is only its own request's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use tokio::sync::oneshot;

use crate::model::{ModelError, Tensor};
use crate::repository::Manifest;

/// A version's batching, from `[models.<name>.batching]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// The most rows one call runs; 1 turns batching off.
    pub max_batch: usize,
    /// How long a drain may wait for more rows; zero: only rows already queued join.
    pub max_queue_delay: Duration,
    /// Requests a version may have queued; beyond it a request is refused as overloaded.
    pub queue: usize,
}

/// Why a batched request got no outputs from its model.
#[derive(Debug, PartialEq, Eq)]
pub enum Unrun {
    /// The model panicked on this request's rows, run alone.
    Panicked,
    /// The batch queue, or the pool that drains it, was full.
    Full,
}

/// A request's answer: the model's outputs or error, or why it did not run.
pub type Reply = Result<Result<Vec<Tensor>, ModelError>, Unrun>;

/// One request's rows, waiting.
struct Waiting {
    inputs: Arc<Vec<Tensor>>,
    rows: usize,
    since: Instant,
    reply: oneshot::Sender<Reply>,
}

/// One version's queue of requests waiting to run in a batch.
pub struct Batcher {
    settings: BatchSettings,
    queue: ArrayQueue<Waiting>,
    /// A drain is queued on the pool and has not started: a new request need not queue another.
    scheduled: AtomicBool,
}

/// How long a drain waiting for more rows (`max_queue_delay`) sleeps between looks.
const LOOK: Duration = Duration::from_micros(50);

impl Batcher {
    /// A batcher for a version with this signature, or `None` when batching is off or the model has
    /// no batch dimension (every input's and output's first dimension free).
    pub(super) fn for_version(settings: BatchSettings, manifest: &Manifest) -> Option<Self> {
        let batched = |specs: &[crate::model::TensorSpec]| specs.iter().all(|s| s.shape.first() == Some(&-1));
        (settings.max_batch > 1 && batched(&manifest.inputs) && batched(&manifest.outputs)).then(|| Self {
            settings,
            queue: ArrayQueue::new(settings.queue.max(1)),
            scheduled: AtomicBool::new(false),
        })
    }

    pub fn max_batch(&self) -> usize {
        self.settings.max_batch
    }

    /// Queues a request's rows. Returns where its reply will arrive, and whether the caller must
    /// queue a drain (`ModelVersion::drain`) on the pool; `None` when the queue is full.
    pub fn push(&self, inputs: Arc<Vec<Tensor>>, rows: usize) -> Option<(oneshot::Receiver<Reply>, bool)> {
        let (reply, receiver) = oneshot::channel();
        let waiting = Waiting { inputs, rows, since: Instant::now(), reply };
        self.queue.push(waiting).ok()?;
        let schedule = !self.scheduled.swap(true, Ordering::AcqRel);
        Some((receiver, schedule))
    }

    /// The drain the caller was to queue could not be: every request waiting is refused as `Full`
    /// (none would be run), and the next request queues a drain again.
    pub fn drain_refused(&self) {
        self.scheduled.store(false, Ordering::Release);
        while let Some(waiting) = self.queue.pop() {
            let _ = waiting.reply.send(Err(Unrun::Full));
        }
    }

    /// The next batch: what is queued (after `carry`, a request that did not fit the last one), up
    /// to `max_batch` rows, waiting up to `max_queue_delay` for more when it is not full.
    fn next_batch(&self, carry: &mut Option<Waiting>) -> Vec<Waiting> {
        let max = self.settings.max_batch;
        let mut batch: Vec<Waiting> = carry.take().into_iter().collect();
        let mut rows: usize = batch.iter().map(|w| w.rows).sum();
        loop {
            while rows < max {
                let Some(waiting) = self.queue.pop() else { break };
                if waiting.reply.is_closed() {
                    // Its caller gave up (the request timeout): not worth the CPU.
                    continue;
                }
                if !batch.is_empty() && rows + waiting.rows > max {
                    *carry = Some(waiting);
                    break;
                }
                rows += waiting.rows;
                batch.push(waiting);
            }
            let Some(oldest) = batch.first() else { return batch };
            let waited = oldest.since.elapsed();
            if carry.is_some() || rows >= max || waited >= self.settings.max_queue_delay {
                return batch;
            }
            std::thread::sleep((self.settings.max_queue_delay - waited).min(LOOK));
        }
    }
}

/// A version's time per row by batch size, learnt from its calls: what the shadow plans batches
/// with. One row's warm-up time multiplied by the rows overestimates a batch of a heavy model
/// tenfold (its matrices are read once per call, not once per row), and would keep batches small.
pub struct BatchCost {
    /// Nanoseconds per row, an exponential average per size class (1, 2, 3–4, 5–8, …, 65–128 and
    /// more); 0 while unmeasured.
    per_row: [AtomicU64; Self::CLASSES],
}

impl BatchCost {
    const CLASSES: usize = 8;

    pub(super) fn new(one_row: Duration) -> Self {
        let cost = Self { per_row: Default::default() };
        cost.per_row[0].store(one_row.as_nanos().max(1) as u64, Ordering::Relaxed);
        cost
    }

    fn class(rows: usize) -> usize {
        ((usize::BITS - rows.max(1).saturating_sub(1).leading_zeros()) as usize).min(Self::CLASSES - 1)
    }

    /// A call of `rows` rows took `took`. (Racing updates may lose one: it is an average.)
    pub fn observe(&self, rows: usize, took: Duration) {
        let per_row = (took.as_nanos() / rows.max(1) as u128).clamp(1, u64::MAX as u128) as u64;
        let slot = &self.per_row[Self::class(rows)];
        let old = slot.load(Ordering::Relaxed);
        let new = if old == 0 { per_row } else { old - old / 8 + per_row / 8 };
        slot.store(new.max(1), Ordering::Relaxed);
    }

    /// The expected time of a call of `rows` rows: at the per-row time of its size class, or of the
    /// nearest smaller class measured (a row costs less in a larger batch: an overestimate).
    pub fn estimate(&self, rows: usize) -> Duration {
        let per_row = self.per_row[..=Self::class(rows)]
            .iter()
            .rev()
            .map(|slot| slot.load(Ordering::Relaxed))
            .find(|&ns| ns > 0)
            .unwrap_or(0);
        Duration::from_nanos(per_row.saturating_mul(rows.max(1) as u64))
    }
}

impl Batcher {
    /// Runs the queued requests in batches until none is queued (on a pool thread): `run` is one
    /// guarded call of the model, `rows` hears each batch's size.
    pub(super) fn drain(&self, run: impl Fn(&[Tensor]) -> Reply, rows: impl Fn(usize)) {
        // Requests queued from now on queue another drain, which a free pool thread runs beside
        // this one: batches form only when every thread is busy. (A read-modify-write with
        // acquire: it reads the flag a `push` set after queueing, so the pops below see that
        // request.)
        self.scheduled.swap(false, Ordering::AcqRel);
        let mut carry = None;
        loop {
            let batch = self.next_batch(&mut carry);
            if batch.is_empty() {
                return;
            }
            rows(batch.iter().map(|w| w.rows).sum());
            run_batch(batch, &run);
        }
    }
}

fn run_batch(mut batch: Vec<Waiting>, run: &impl Fn(&[Tensor]) -> Reply) {
    if batch.len() == 1 {
        let waiting = batch.pop().expect("one request");
        let _ = waiting.reply.send(run(&waiting.inputs));
        return;
    }
    match run_stacked(&batch, run) {
        Some(per_request) => {
            for (waiting, outputs) in batch.into_iter().zip(per_request) {
                let _ = waiting.reply.send(Ok(Ok(outputs)));
            }
        }
        None => {
            for waiting in batch {
                let _ = waiting.reply.send(run(&waiting.inputs));
            }
        }
    }
}

/// One run over the stacked inputs, cut back per request; `None` if they do not stack, or the run
/// fails or panics.
fn run_stacked(batch: &[Waiting], run: &impl Fn(&[Tensor]) -> Reply) -> Option<Vec<Vec<Tensor>>> {
    let count = batch[0].inputs.len();
    let inputs = (0..count)
        .map(|i| Tensor::concat_rows(&batch.iter().map(|w| &w.inputs[i]).collect::<Vec<_>>()))
        .collect::<Option<Vec<Tensor>>>()?;
    let outputs = run(&inputs).ok()?.ok()?;
    let rows: Vec<usize> = batch.iter().map(|w| w.rows).collect();
    let mut per_request: Vec<Vec<Tensor>> = (0..batch.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in &outputs {
        for (request, piece) in per_request.iter_mut().zip(output.split_rows(&rows)?) {
            request.push(piece);
        }
    }
    Some(per_request)
}
