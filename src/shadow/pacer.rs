//! Pacing: the shadow threads together use at most `shadow_cpu_budget` cores of CPU time.

use std::time::{Duration, Instant};

/// Keeps a shadow thread within its share of `shadow_cpu_budget`. `SCHED_IDLE` already yields
/// every busy CPU to request threads, but not everything a CPU does shows up as busy: caches the
/// shadow work evicted, and a container's CPU quota (which idle-priority threads spend like any
/// other, so the champion is throttled for it) all land on the answered requests. So after work
/// that took `c` of its own CPU time, a thread rests `c × (1 − share) / share`: over any stretch
/// it uses at most `share` of a core. What it cannot get to is shed or times out, and is counted.
/// Idle time banks no credit, so a burst after a quiet spell is paced from its first batch.
pub(super) struct Pacer {
    /// Of one core, in (0, 1]; 1 is not paced.
    share: f64,
    /// Rest owed for work done; taken once it is worth a sleep.
    owed: Duration,
}

/// Rest shorter than this is carried over rather than slept (a sleep has its own cost).
pub(super) const MIN_REST: Duration = Duration::from_millis(1);
/// The longest single sleep of a rest (a slow challenger's batch can owe seconds of it).
pub(super) const REST_SLICE: Duration = Duration::from_millis(50);

impl Pacer {
    /// A pacer for the calling thread; unpaced (with a warning) where its CPU time cannot be read.
    pub(super) fn for_this_thread(share: f64) -> Self {
        if share < 1.0 && cpu_time::ThreadTime::try_now().is_err() {
            tracing::warn!("this system does not report a thread's CPU time; shadow_cpu_budget is not applied");
            return Self::new(1.0);
        }
        Self::new(share)
    }

    pub(super) fn new(share: f64) -> Self {
        Self { share, owed: Duration::ZERO }
    }

    /// The thread's CPU clock, where pacing needs it.
    pub(super) fn clock(&self) -> Option<cpu_time::ThreadTime> {
        (self.share < 1.0).then(|| cpu_time::ThreadTime::try_now().ok()).flatten()
    }

    /// Owes rest for the CPU time used since `clock`.
    pub(super) fn worked(&mut self, clock: Option<cpu_time::ThreadTime>) {
        if let Some(used) = clock.and_then(|c| c.try_elapsed().ok()) {
            self.charge(used);
        }
    }

    pub(super) fn charge(&mut self, cpu: Duration) {
        self.owed += cpu.mul_f64((1.0 - self.share) / self.share);
    }

    /// The rest owed, once it is worth a sleep.
    pub(super) fn due(&self) -> Option<Duration> {
        (self.owed >= MIN_REST).then_some(self.owed)
    }

    /// Sleeps; the time slept pays off what is owed (an idle poll pays too).
    pub(super) fn rest(&mut self, duration: Duration) {
        let start = Instant::now();
        std::thread::sleep(duration);
        self.rested(start.elapsed());
    }

    pub(super) fn rested(&mut self, slept: Duration) {
        self.owed = self.owed.saturating_sub(slept);
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
    fn a_whole_core_is_not_paced() {
        let mut whole = Pacer::new(1.0);
        whole.charge(Duration::from_secs(1));
        assert_eq!(whole.due(), None);
        assert!(whole.clock().is_none(), "nor is its CPU time read");
    }
}
