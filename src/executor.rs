//! Where inference runs: inline on the async worker for models that take microseconds, or on a
//! dedicated, bounded thread pool for slower ones, so no model blocks the async workers for long.
//!
//! Invariants: the pool's queue is bounded; a full queue is an immediate `Overloaded`, never a wait.
//! A model that panics fails its own request and nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::thread;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind};
use crate::model::ModelError;
use crate::model::Tensor;
use crate::registry::{Batcher, ModelVersion, Placement, Unrun};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads fed by a bounded, lock-free queue.
///
/// No lock is shared between submitters and pool threads: jobs go through an `ArrayQueue` and
/// sleeping threads are woken with `unpark` (a futex token). (The background threads have
/// their own polled queue, `background::Worker`, for the same reason: a preempted
/// background thread holding a lock would stall the request until the CPU next went idle.)
pub struct InferencePool {
    shared: Arc<Shared>,
    threads: Vec<thread::Thread>,
    handles: parking_lot::Mutex<Vec<thread::JoinHandle<()>>>,
}

struct Shared {
    queue: ArrayQueue<Job>,
    /// Threads parked or about to park; submitters wake them only when it is not zero.
    parked: AtomicUsize,
    closed: AtomicBool,
}

/// A job's result, once a pool thread has run it; `Err` if it panicked.
pub type Pending<R> = oneshot::Receiver<thread::Result<R>>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the inference queue is full")]
    Full,
    #[error("the job panicked")]
    Panicked,
    #[error("the inference pool has stopped")]
    Stopped,
}

impl InferencePool {
    pub fn new(name: &str, threads: usize, queue: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(queue.max(1)),
            parked: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            handles.push(thread::Builder::new().name(format!("{name}-{i}")).spawn(move || shared.work())?);
        }
        let threads = handles.iter().map(|h| h.thread().clone()).collect();
        Ok(Self { shared, threads, handles: parking_lot::Mutex::new(handles) })
    }

    /// Queues `job` without waiting and without a reply; `Full` at once if the queue is.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> Result<(), PoolError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PoolError::Stopped);
        }
        self.shared.queue.push(Box::new(job)).map_err(|_| PoolError::Full)?;
        // Pairs with the fence in `work`: either a parking thread sees the job, or we see it parking.
        fence(Ordering::SeqCst);
        if self.shared.parked.load(Ordering::Relaxed) > 0 {
            self.threads.iter().for_each(thread::Thread::unpark);
        }
        Ok(())
    }

    /// Queues `job` and returns where its result will arrive; `Full` at once if the queue is.
    pub fn submit<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> Result<Pending<R>, PoolError> {
        let (reply, result) = oneshot::channel();
        self.spawn(move || {
            // The caller may have gone (timeout); then the result has nowhere to go.
            let _ = reply.send(catch_unwind(AssertUnwindSafe(job)));
        })?;
        Ok(result)
    }

    /// Runs every job queued so far, then stops the threads and waits for them. Blocking.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.threads.iter().for_each(thread::Thread::unpark);
        for handle in std::mem::take(&mut *self.handles.lock()) {
            let _ = handle.join();
        }
    }

    /// Runs `job` on the pool and waits for its result without blocking the async worker.
    pub async fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> Result<R, PoolError> {
        let result = self.submit(job)?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_panic)) => Err(PoolError::Panicked),
            Err(_) => Err(PoolError::Stopped),
        }
    }
}

impl Shared {
    /// A pool thread: run jobs until the pool is closed and its queue empty.
    fn work(&self) {
        loop {
            if let Some(job) = self.queue.pop() {
                // A panic is the job's own affair (jobs catch what they must report).
                drop(catch_unwind(AssertUnwindSafe(job)));
                continue;
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            self.parked.fetch_add(1, Ordering::Relaxed);
            // Pairs with the fence in `spawn`: a job pushed before it is seen by the pop below.
            fence(Ordering::SeqCst);
            if let Some(job) = self.queue.pop() {
                self.parked.fetch_sub(1, Ordering::Relaxed);
                drop(catch_unwind(AssertUnwindSafe(job)));
                continue;
            }
            // Unparked by `spawn`; the timeout is a safety net.
            thread::park_timeout(Duration::from_millis(100));
            self.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Runs model versions where their placement says.
pub struct Executor {
    pool: InferencePool,
}

impl Executor {
    pub fn new(pool: InferencePool) -> Self {
        Self { pool }
    }

    pub async fn infer(&self, version: &Arc<ModelVersion>, inputs: &Arc<Vec<Tensor>>) -> Result<Vec<Tensor>, Error> {
        let rows = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
        let result = match version.placement(rows) {
            Placement::Inline => {
                catch_unwind(AssertUnwindSafe(|| version.infer(inputs))).map_err(|_| PoolError::Panicked)
            }
            Placement::Pool => match version.batcher() {
                Some(batcher) if rows <= batcher.max_batch() => self.batched(version, batcher, inputs, rows).await,
                _ => {
                    let (version, inputs) = (Arc::clone(version), Arc::clone(inputs));
                    self.pool.run(move || version.infer(&inputs)).await
                }
            },
        };
        match result {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(error)) => {
                tracing::warn!(model = %version.name(), version = %version.version(), %error, "inference failed");
                Err(Error::new(
                    ErrorKind::ModelFailed,
                    format!("model {} version {} failed on this request", version.name(), version.version()),
                ))
            }
            Err(PoolError::Full) => {
                Err(Error::new(ErrorKind::Overloaded, "the inference queue is full; retry shortly"))
            }
            Err(PoolError::Panicked) => {
                tracing::error!(model = %version.name(), version = %version.version(), "model panicked");
                Err(Error::new(
                    ErrorKind::ModelFailed,
                    format!("model {} version {} failed on this request", version.name(), version.version()),
                ))
            }
            Err(PoolError::Stopped) => Err(Error::new(ErrorKind::Unavailable, "the gateway is shutting down")),
        }
    }

    /// Queues the request's rows on its version's batcher, and a drain on the pool unless one is
    /// already waiting for a thread; then waits for its own outputs (see `registry::batch`).
    async fn batched(
        &self,
        version: &Arc<ModelVersion>,
        batcher: &Batcher,
        inputs: &Arc<Vec<Tensor>>,
        rows: usize,
    ) -> Result<Result<Vec<Tensor>, ModelError>, PoolError> {
        let (reply, schedule) = batcher.push(Arc::clone(inputs), rows).ok_or(PoolError::Full)?;
        if schedule {
            let drainer = Arc::clone(version);
            if let Err(error) = self.pool.spawn(move || drainer.drain()) {
                batcher.drain_refused();
                return Err(error);
            }
        }
        match reply.await {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(Unrun::Panicked)) => Err(PoolError::Panicked),
            Ok(Err(Unrun::Full)) => Err(PoolError::Full),
            Err(_) => Err(PoolError::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pool_runs_jobs_and_survives_panics() {
        let pool = InferencePool::new("test", 1, 4).unwrap();
        assert_eq!(pool.run(|| 2 + 2).await, Ok(4));
        assert_eq!(pool.run(|| -> i32 { panic!("boom") }).await, Err(PoolError::Panicked));
        assert_eq!(pool.run(|| 5).await, Ok(5), "the thread survives a panicking job");
    }

    #[test]
    fn close_runs_every_queued_job_then_refuses() {
        let pool = InferencePool::new("test", 2, 1000).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..500 {
            let done = Arc::clone(&done);
            pool.spawn(move || {
                done.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        pool.close();
        assert_eq!(done.load(Ordering::SeqCst), 500);
        assert_eq!(pool.spawn(|| {}), Err(PoolError::Stopped));
    }

    #[tokio::test]
    async fn full_queue_is_refused_at_once() {
        let pool = Arc::new(InferencePool::new("test", 1, 1).unwrap());
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel();
        // Occupy the only thread until released.
        let busy = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move {
                pool.run(move || {
                    started_tx.send(()).unwrap();
                    wait.recv().unwrap();
                })
                .await
            }
        });
        started_rx.await.unwrap();
        // One job fits the queue; the next is refused.
        let queued = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.run(|| 1).await }
        });
        while pool.shared.queue.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| 2).await, Err(PoolError::Full));
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap(), Ok(()));
        assert_eq!(queued.await.unwrap(), Ok(1));
    }
}
