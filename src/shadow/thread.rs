//! A shadow thread: takes up to `LOOK` jobs a look and holds each version's jobs until they make a
//! batch worth its run (`MAX_BATCH` rows, or the oldest has waited its part of the deadline), scores
//! them in batches of up to `MAX_BATCH` rows, then rests to stay within its share of
//! `shadow_cpu_budget`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::pacer::{Pacer, REST_SLICE};
use super::record::{Job, PendingRecord};
use super::score::score_group;
use crate::background::{Closing, Work};
use crate::registry::ModelVersion;

/// The most rows of one version a shadow thread scores in one call.
pub(super) const MAX_BATCH: usize = 64;

/// Jobs a shadow thread takes from the queue at once: several batches' worth, so that when the
/// oldest have too little time left (after a rest, under pressure) a full batch can still be formed
/// from newer ones (`score::plan`).
pub(super) const LOOK: usize = 4 * MAX_BATCH;

/// How long a shadow thread that found the queue empty first sleeps before it looks again (then
/// longer, up to `idle_poll_max`, while it stays empty: `IdlePoll`).
pub(super) const POLL: Duration = Duration::from_millis(1);

/// The longest sleep between looks at an empty queue: a job that arrives just after a look waits
/// at most this long to start, a small part of its deadline; and the default queue holds what a
/// sudden 30k requests a second with two challengers bring in that time.
pub(super) fn idle_poll_max(deadline: Duration) -> Duration {
    (deadline / 8).clamp(POLL, Duration::from_millis(16))
}

/// A shadow thread's own state: its pacer and the jobs it holds for a fuller batch.
pub(super) struct ShadowThread {
    pacer: Pacer,
    /// Score jobs taken but not yet scored, by version. None past its version's `due`, and at most
    /// `MAX_BATCH` rows a version (one with more is scored at once): bounded, like the queue.
    held: Vec<Held>,
    /// How long before its deadline a held job is scored at the latest: the deadline less
    /// `shadow_max_wait_ms` (a quarter of it by default). Below `MAX_BATCH` rows in that time, a
    /// tiny challenger's run is mostly ONNX Runtime's fixed cost per call (callgrind: the demo's MLP
    /// 46k instructions a call and 0.9k a row), so rows scored together cost a fraction each.
    reserve: Duration,
    /// Seen at the first look; lets a rest owed by work done in `tick` end early at shutdown.
    closing: Option<Closing>,
    /// Whether its last look left it owing a rest (`Shadow::shed_if_full` reads it).
    paced: Arc<AtomicBool>,
}

/// One version's held jobs, in the order taken (so oldest first).
struct Held {
    version: Arc<ModelVersion>,
    jobs: Vec<(Arc<PendingRecord>, usize)>,
    rows: usize,
    /// When they are scored whatever their rows: the first job's deadline less the thread's
    /// `reserve` and twice the time the rows held would take.
    due: Instant,
}

impl Held {
    fn is_due(&self, now: Instant) -> bool {
        self.rows >= MAX_BATCH || now >= self.due
    }
}

impl ShadowThread {
    /// `reserve`: the time to run that a held job keeps before its deadline.
    pub(super) fn new(pacer: Pacer, reserve: Duration, paced: Arc<AtomicBool>) -> Self {
        Self { pacer, held: Vec::new(), reserve, closing: None, paced }
    }

    /// Adds a job to its version's held ones, and moves their `due` earlier as their rows grow.
    fn hold(&mut self, pending: Arc<PendingRecord>, slot: usize) {
        let rows = pending.rows();
        let version = &pending.slots[slot].version;
        let index = match self.held.iter().position(|held| Arc::ptr_eq(&held.version, version)) {
            Some(index) => index,
            None => {
                let version = Arc::clone(version);
                self.held.push(Held { version, jobs: Vec::new(), rows: 0, due: pending.deadline });
                self.held.len() - 1
            }
        };
        let held = &mut self.held[index];
        held.rows += rows;
        held.jobs.push((pending, slot));
        // Twice the time the rows held would take (at the version's measured cost), on top of the
        // reserve, before the first job's deadline: a slow model's batch stops growing while there
        // is still time to run it.
        let run = held.version.cost().estimate(held.rows.min(MAX_BATCH)) * 2;
        let first = held.jobs[0].0.deadline;
        held.due = first.checked_sub(self.reserve + run).unwrap_or_else(Instant::now);
    }

    /// Scores each version's held jobs that are due (`all`: every one): those with `MAX_BATCH`
    /// rows, or whose `due` has come.
    fn score_due(&mut self, now: Instant, all: bool) {
        self.held.retain_mut(|held| {
            if !(all || held.is_due(now)) {
                return true;
            }
            score_group(&held.version, &mut held.jobs, MAX_BATCH);
            false
        });
    }

    /// Rests what the pacer says is owed, in slices so a close is seen soon: then the queue is
    /// drained at full speed (the server has stopped answering).
    fn rest_owed(&mut self) {
        let closing = || self.closing.as_ref().is_some_and(Closing::is_closing);
        let owed = self.pacer.due().is_some();
        if self.paced.load(Ordering::Relaxed) != owed {
            self.paced.store(owed, Ordering::Relaxed);
        }
        while let Some(rest) = self.pacer.due().filter(|_| !closing()) {
            self.pacer.rest(rest.min(REST_SLICE));
        }
    }
}

impl Work for ShadowThread {
    type Message = Job;

    fn handle(&mut self, taken: &mut Vec<Job>, closing: &Closing) {
        if self.closing.is_none() {
            self.closing = Some(closing.clone());
        }
        let cpu = self.pacer.clock();
        for job in taken.drain(..) {
            match job {
                Job::Score(pending, slot) => self.hold(pending, slot),
                Job::Finish(pending) => pending.finish(),
            }
        }
        self.score_due(Instant::now(), closing.is_closing());
        self.pacer.worked(cpu);
        self.rest_owed();
    }

    /// Scores the held jobs whose wait is over; the thread looks again by the next one's.
    fn tick(&mut self, now: Instant) -> Duration {
        if self.held.iter().any(|held| held.is_due(now)) {
            // Read only when there is work: a thread's CPU clock is a system call.
            let cpu = self.pacer.clock();
            self.score_due(now, false);
            self.pacer.worked(cpu);
            self.rest_owed();
        }
        let next = self.held.iter().map(|held| held.due).min();
        next.map_or(Duration::MAX, |next| next.saturating_duration_since(Instant::now()))
    }

    /// An idle poll pays off rest too.
    fn rest(&mut self, duration: Duration) {
        self.pacer.rest(duration);
    }

    /// At shutdown nothing is held back: every job taken is scored (or timed out) before the join closes.
    fn finish(&mut self) {
        self.score_due(Instant::now(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_idle_thread_looks_less_often_but_well_within_the_deadline() {
        assert_eq!(idle_poll_max(Duration::from_millis(80)), 10 * MS);
        assert_eq!(idle_poll_max(Duration::from_millis(250)), 16 * MS);
        assert_eq!(idle_poll_max(Duration::from_millis(2)), MS);
    }
}
