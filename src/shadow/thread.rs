//! A shadow thread: takes up to `LOOK` jobs a look, scores those of one version in batches of up to
//! `MAX_BATCH` rows, then rests to stay within its share of `shadow_cpu_budget`.

use std::sync::Arc;
use std::time::Duration;

use super::pacer::{Pacer, REST_SLICE};
use super::record::Job;
use super::score::score_group;
use crate::background::{Closing, Work};

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

/// One shadow thread's own state: its pacer.
pub(super) struct ShadowThread {
    pub(super) pacer: Pacer,
}

impl Work for ShadowThread {
    type Message = Job;

    fn handle(&mut self, taken: &mut Vec<Job>, closing: &Closing) {
        let cpu = self.pacer.clock();
        let mut scores = Vec::with_capacity(taken.len());
        for job in taken.drain(..) {
            match job {
                Job::Score(pending, slot) => scores.push((pending, slot)),
                Job::Finish(pending) => pending.finish(),
            }
        }
        // Group by version, keeping queue order within each group.
        while let Some((pending, slot)) = scores.first() {
            let version = Arc::clone(&pending.slots[*slot].version);
            let (group, rest): (Vec<_>, Vec<_>) =
                scores.into_iter().partition(|(p, slot)| Arc::ptr_eq(&p.slots[*slot].version, &version));
            scores = rest;
            score_group(&version, group, MAX_BATCH);
        }
        self.pacer.worked(cpu);
        // In slices, so a close is seen soon: then the queue is drained at full speed (the server
        // has stopped answering).
        while let Some(rest) = self.pacer.due().filter(|_| !closing.is_closing()) {
            self.pacer.rest(rest.min(REST_SLICE));
        }
    }

    /// An idle poll pays off rest too.
    fn rest(&mut self, duration: Duration) {
        self.pacer.rest(duration);
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
