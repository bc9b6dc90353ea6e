//! Background threads: the one shape every helper thread of the gateway takes (the outcome writer,
//! the label join, the shadow pool, the drift monitor and its webhook).
//!
//! A `Worker` is a fixed set of named threads, at a priority below the request threads, polling one
//! bounded lock-free queue; each thread owns its own `Work`, which handles what it takes.
//!
//! Invariants:
//! - Senders never wait and never wake anyone: `try_send` pushes onto the queue or hands the message
//!   back when it is full (the caller counts the drop). No lock is shared with the threads: a
//!   background thread preempted while holding one would stall its sender until the CPU next went
//!   idle (measured as an 88 ms champion p99 before the pools moved to a lock-free, polled queue).
//! - The threads poll: every `poll` while there is work, backing off to `poll_idle` while the queue
//!   stays empty (`IdlePoll`), so a busy sender pays no futex wake and an idle gateway few wakeups.
//! - `close` lets the threads take everything accepted before it, then `Work::finish`, then joins
//!   them: a graceful shutdown loses nothing that `try_send` accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use thread_priority::ThreadPriority;
use thread_priority::unix::NormalThreadSchedulePolicy;

/// How far below the request threads a background thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Linux `SCHED_IDLE`: runs only on a CPU nothing else wants.
    Idle,
    /// nice 10: request threads come first, yet unlike `SCHED_IDLE` it still gets a share of a fully
    /// busy CPU (about a tenth of a normal thread's), for a thread requests wait on (the label join
    /// answers label posts and reports).
    Low,
}

/// Sleeps `total` in steps of at most `tick`, returning early once `closing` is set: for the
/// threads that wait on a store rather than on a queue (the cluster's follower, the analyst).
pub fn sleep_unless(closing: &AtomicBool, total: Duration, tick: Duration) {
    let until = Instant::now() + total;
    while !closing.load(Ordering::Acquire) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(tick));
    }
}

/// Lowers the calling thread to `priority`, or logs why not.
pub fn lower_priority(priority: Priority) {
    let (value, policy) = match priority {
        Priority::Idle => (ThreadPriority::Min, NormalThreadSchedulePolicy::Idle),
        // thread-priority maps 0..=99 linearly onto nice 19..=-20: 22 is nice 10.
        Priority::Low => match thread_priority::ThreadPriorityValue::try_from(22u8) {
            Ok(value) => (ThreadPriority::Crossplatform(value), NormalThreadSchedulePolicy::Other),
            Err(_) => return,
        },
    };
    use thread_priority::unix::{ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id};
    if let Err(error) = set_thread_priority_and_policy(thread_native_id(), value, ThreadSchedulePolicy::Normal(policy))
    {
        tracing::warn!(?error, "could not lower a background thread's priority; it runs at normal priority");
    }
}

/// How long a polling background thread sleeps while its queue stays empty: `min` at first,
/// doubling with each empty look up to `max`; work found starts it over. Busy, the thread looks
/// every `min` (its senders never pay a wakeup); idle, it wakes about `1/max` times a second
/// instead of `1/min` (on this VM each wakeup cost about 20 µs of CPU).
pub struct IdlePoll {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl IdlePoll {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }

    /// The sleep due after an empty look; the next one is longer.
    pub fn idle(&mut self) -> Duration {
        let sleep = self.next;
        self.next = (self.next * 2).min(self.max);
        sleep
    }

    /// Work was found: look again soon.
    pub fn busy(&mut self) {
        self.next = self.min;
    }
}

/// What one background thread does with what it takes from the queue.
pub trait Work: Send + 'static {
    type Message: Send + 'static;

    /// Handles the messages of one look at the queue (at most `Settings::batch`), leaving `messages`
    /// empty. `closing` tells a long task (a retry's backoff, a rest) that shutdown has begun.
    fn handle(&mut self, messages: &mut Vec<Self::Message>, closing: &Closing);

    /// Called after every look, whether it found work or not: the thread's own timers (a flush, an
    /// evaluation). Returns how long the thread may sleep at most before it must be called again.
    fn tick(&mut self, _now: Instant) -> Duration {
        Duration::MAX
    }

    /// Sleeps after an empty look. A thread that paces itself counts the sleep as rest.
    fn rest(&mut self, duration: Duration) {
        thread::sleep(duration);
    }

    /// Called once, after `close`, when everything accepted has been handled.
    fn finish(&mut self) {}
}

/// A worker's bounds and manner.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Thread names are `name` (one thread) or `name-<i>`.
    pub name: &'static str,
    pub threads: usize,
    /// Messages waiting at most; one more is handed back to its sender.
    pub queue: usize,
    /// Messages one look takes at most.
    pub batch: usize,
    pub priority: Priority,
    /// The sleep after an empty look, doubling up to `poll_idle` while the queue stays empty.
    pub poll: Duration,
    pub poll_idle: Duration,
}

/// Whether shutdown has begun, for work that takes long.
#[derive(Clone)]
pub struct Closing(Arc<AtomicBool>);

impl Closing {
    pub fn is_closing(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Background threads polling one bounded, lock-free queue.
pub struct Worker<M: Send + 'static> {
    shared: Arc<Shared<M>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared<M> {
    queue: ArrayQueue<M>,
    closing: Closing,
    /// Senders between their look at `closing` and their push: the threads wait for them to leave
    /// before they stop, so a message accepted just as `close` began is still handled.
    entering: AtomicUsize,
}

impl<M: Send + 'static> Worker<M> {
    /// Starts `settings.threads` threads, thread `i` running `work(i)`.
    pub fn start<W: Work<Message = M>>(settings: Settings, mut work: impl FnMut(usize) -> W) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(settings.queue.max(1)),
            closing: Closing(Arc::new(AtomicBool::new(false))),
            entering: AtomicUsize::new(0),
        });
        let count = settings.threads.max(1);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let name = if count == 1 { settings.name.to_owned() } else { format!("{}-{i}", settings.name) };
            let (shared, settings, work) = (Arc::clone(&shared), settings.clone(), work(i));
            threads.push(thread::Builder::new().name(name).spawn(move || {
                lower_priority(settings.priority);
                shared.run(work, &settings);
            })?);
        }
        Ok(Self { shared, threads: Mutex::new(threads) })
    }

    /// Starts one thread running `work` (`settings.threads` is taken as 1).
    pub fn start_one<W: Work<Message = M>>(settings: Settings, work: W) -> std::io::Result<Self> {
        let mut work = Some(work);
        Self::start(Settings { threads: 1, ..settings }, |_| work.take().expect("one thread, one work"))
    }

    /// Queues without waiting; hands the message back if the queue is full or the worker closed.
    pub fn try_send(&self, message: M) -> Result<(), M> {
        let shared = &*self.shared;
        shared.entering.fetch_add(1, Ordering::SeqCst);
        let pushed = if shared.closing.0.load(Ordering::SeqCst) { Err(message) } else { shared.queue.push(message) };
        shared.entering.fetch_sub(1, Ordering::Release);
        pushed
    }

    pub fn is_full(&self) -> bool {
        self.shared.queue.is_full()
    }

    /// Messages waiting now.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    /// Lets the threads handle everything accepted so far, then stops and joins them. Blocking.
    pub fn close(&self) {
        self.shared.closing.0.store(true, Ordering::SeqCst);
        for thread in std::mem::take(&mut *self.threads.lock()) {
            if thread.join().is_err() {
                tracing::error!("a background thread panicked");
            }
        }
    }
}

impl<M: Send + 'static> Drop for Worker<M> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<M: Send + 'static> Shared<M> {
    fn run<W: Work<Message = M>>(&self, mut work: W, settings: &Settings) {
        let mut poll = IdlePoll::new(settings.poll, settings.poll_idle);
        let mut taken = Vec::with_capacity(settings.batch.min(1024));
        loop {
            while taken.len() < settings.batch.max(1)
                && let Some(message) = self.queue.pop()
            {
                taken.push(message);
            }
            let found = !taken.is_empty();
            if found {
                poll.busy();
                work.handle(&mut taken, &self.closing);
                taken.clear();
            }
            let limit = work.tick(Instant::now());
            if found {
                continue;
            }
            if self.closing.is_closing() {
                if self.entering.load(Ordering::Acquire) == 0 && self.queue.is_empty() {
                    work.finish();
                    return;
                }
                // A sender is between its look and its push: its message is about to land.
                thread::yield_now();
                continue;
            }
            work.rest(poll.idle().min(limit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_poll_backs_off_and_work_resets_it() {
        let mut poll = IdlePoll::new(ms(1), ms(5));
        let sleeps: Vec<Duration> = (0..5).map(|_| poll.idle()).collect();
        assert_eq!(sleeps, [ms(1), ms(2), ms(4), ms(5), ms(5)]);
        poll.busy();
        assert_eq!(poll.idle(), ms(1));
    }

    /// The calling thread's nice value and scheduling policy, from /proc.
    fn nice_and_policy() -> (i64, i64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command (which may hold spaces): state is field 3, nice 19, policy 41.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        (fields[19 - 3].parse().unwrap(), fields[41 - 3].parse().unwrap())
    }

    #[test]
    fn background_threads_get_the_priorities_their_comments_promise() {
        const SCHED_OTHER: i64 = 0;
        const SCHED_IDLE: i64 = 5;
        let somewhat = thread::spawn(|| {
            lower_priority(Priority::Low);
            nice_and_policy()
        });
        assert_eq!(somewhat.join().unwrap(), (10, SCHED_OTHER));
        let idle = thread::spawn(|| {
            lower_priority(Priority::Idle);
            nice_and_policy().1
        });
        assert_eq!(idle.join().unwrap(), SCHED_IDLE);
    }

    struct Sum {
        total: Arc<AtomicUsize>,
        finished: Arc<AtomicUsize>,
    }

    impl Work for Sum {
        type Message = usize;
        fn handle(&mut self, messages: &mut Vec<usize>, _: &Closing) {
            for n in messages.drain(..) {
                self.total.fetch_add(n, Ordering::Relaxed);
            }
        }
        fn finish(&mut self) {
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn close_handles_everything_accepted_and_a_full_queue_hands_messages_back() {
        let (total, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let settings = Settings {
            name: "test-sum",
            threads: 2,
            queue: 4,
            batch: 2,
            priority: Priority::Low,
            poll: ms(1),
            poll_idle: ms(4),
        };
        let worker =
            Worker::start(settings, |_| Sum { total: Arc::clone(&total), finished: Arc::clone(&finished) }).unwrap();
        let (mut accepted, mut refused) = (0, 0);
        for n in 1..=1000 {
            match worker.try_send(n) {
                Ok(()) => accepted += n,
                Err(back) => {
                    assert_eq!(back, n, "the refused message comes back whole");
                    refused += 1;
                }
            }
        }
        worker.close();
        assert_eq!(total.load(Ordering::Relaxed), accepted, "every accepted message was handled");
        assert_eq!(finished.load(Ordering::Relaxed), 2, "each thread finished once");
        assert!(worker.try_send(1).is_err(), "a closed worker takes nothing");
        // 1000 sends into a queue of 4 within microseconds: some are refused (and the sender counts them).
        assert!(refused > 0 && accepted > 0, "{refused} refused");
    }
}
