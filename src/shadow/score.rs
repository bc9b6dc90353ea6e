//! Scoring: the one place a challenger runs. The queued jobs of one version are scored together
//! (rows stacked into one run whose outputs each request's record views by its rows), or one at a
//! time; either way through [`infer`], whose panic guard turns a challenger's error or panic into
//! its result.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::{PendingRecord, Scored};
use crate::model::Tensor;
use crate::registry::ModelVersion;
use crate::registry::Status;

/// Scores jobs of one version (in queue order, so oldest first) in the largest batches that can
/// finish before their oldest job's deadline, at the version's measured time per row for that size
/// ([`BatchCost`](crate::registry::BatchCost)). When the oldest jobs have too little time left for
/// more than a small batch and newer ones allow a larger one, the oldest are timeouts, never run:
/// under pressure a row scored in a large batch costs a fraction of one scored alone, so more
/// records complete within `shadow_cpu_budget`. A batch whose inputs do not stack, or that fails,
/// runs one job at a time.
pub(super) fn score_group(version: &ModelVersion, group: &mut Vec<(Arc<PendingRecord>, usize)>, max_rows: usize) {
    let job = |(pending, _): &(Arc<PendingRecord>, usize)| (pending.deadline, pending.rows());
    while !group.is_empty() {
        let now = Instant::now();
        let (skip, take) = plan(group, now, max_rows, job, |rows| version.cost().estimate(rows));
        for (pending, slot) in group.drain(..skip) {
            // Work that cannot make its deadline (or only in a batch too small to be worth it)
            // is not worth the CPU.
            pending.report(slot, Err((Status::Timeout, None)));
        }
        let mut batch: Vec<(Arc<PendingRecord>, usize)> = group.drain(..take).collect();
        match batch.len() {
            0 => {}
            1 => {
                let (pending, slot) = batch.pop().expect("one job");
                score_one(&pending, slot);
            }
            _ => match run_batch(version, &batch) {
                Some(per_request) => {
                    for ((pending, slot), scored) in batch.iter().zip(per_request) {
                        pending.report(*slot, pending.within_deadline(scored));
                    }
                }
                None => batch.into_iter().for_each(|(pending, slot)| score_one(&pending, slot)),
            },
        }
    }
}

/// Which jobs of `group` (oldest first) to run now: `(skip, take)`, the `skip` oldest to time out
/// and the next `take` as one batch, the largest batch of consecutive jobs (of at most `max_rows`
/// rows, unless one job alone has more) whose estimated time ends before the deadline of its first
/// (oldest). On a tie, the one that starts oldest. A job whose deadline has passed is never taken;
/// `take` is 0 only when none can finish in time. `job` reads a job's deadline and rows.
fn plan<J>(
    group: &[J],
    now: Instant,
    max_rows: usize,
    job: impl Fn(&J) -> (Instant, usize),
    estimate: impl Fn(usize) -> Duration,
) -> (usize, usize) {
    let mut best = (group.len(), 0);
    for start in 0..group.len() {
        let Some(left) = job(&group[start]).0.checked_duration_since(now).filter(|d| !d.is_zero()) else {
            continue;
        };
        if group.len() - start <= best.1 {
            break;
        }
        let (mut rows, mut take) = (0, 0);
        for queued in &group[start..] {
            let more = job(queued).1;
            if (take > 0 && rows + more > max_rows) || estimate(rows + more) > left {
                break;
            }
            rows += more;
            take += 1;
        }
        if take > best.1 {
            best = (start, take);
        }
        if rows >= max_rows {
            // A full batch: none starting later is larger, and this one starts oldest.
            break;
        }
    }
    best
}

/// One run over the stacked inputs, whose outputs each request's record views by its rows; `None`
/// if the inputs do not stack, the run fails or an output is not one row per input row (each is
/// then run alone, so an error is its own request's).
fn run_batch(version: &ModelVersion, live: &[(Arc<PendingRecord>, usize)]) -> Option<Vec<Scored>> {
    let inputs_of = |i: usize| live.iter().map(|(p, _)| &p.request.inputs[i]).collect::<Vec<&Tensor>>();
    let count = live[0].0.request.inputs.len();
    let inputs: Vec<Tensor> = (0..count).map(|i| Tensor::concat_rows(&inputs_of(i))).collect::<Option<_>>()?;
    let rows = inputs.first().map_or(live.len(), Tensor::rows);
    version.metrics().shadow_batch(rows);
    let (outputs, latency) = infer(version, &inputs).ok()?;
    if !outputs.iter().all(|output| !output.shape().is_empty() && output.rows() == rows) {
        return None;
    }
    let outputs = Arc::new(outputs);
    let mut start = 0;
    let per_request = live.iter().map(|(pending, _)| {
        let end = start + pending.rows();
        let part = (Arc::clone(&outputs), Some(start..end));
        start = end;
        Ok((part, latency, live.len()))
    });
    Some(per_request.collect())
}

/// Runs one member on its request's input alone (on a shadow thread) and reports its result.
fn score_one(pending: &PendingRecord, slot: usize) {
    let scored = if Instant::now() >= pending.deadline {
        // Work that can no longer make its deadline is not worth the CPU.
        Err((Status::Timeout, None))
    } else {
        let version = &pending.slots[slot].version;
        version.metrics().shadow_batch(pending.rows());
        infer(version, &pending.request.inputs)
            .and_then(|(outputs, latency)| pending.within_deadline(Ok(((Arc::new(outputs), None), latency, 1))))
    };
    pending.report(slot, scored);
}

/// One run of a challenger, timed: its error or panic is its result, and reaches no client.
fn infer(version: &ModelVersion, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Duration), (Status, Option<String>)> {
    match catch_unwind(AssertUnwindSafe(|| version.infer_learning(inputs))) {
        Ok(Ok(timed)) => Ok(timed),
        Ok(Err(error)) => Err((Status::Error, Some(error.to_string()))),
        Err(_panic) => Err((Status::Panic, Some("the model panicked".to_owned()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A heavy model's cost: 1 ms a call plus 0.1 ms a row.
    fn heavy(rows: usize) -> Duration {
        MS + MS / 10 * rows as u32
    }

    #[test]
    fn with_time_for_all_every_job_runs_in_one_batch() {
        let now = Instant::now();
        let group: Vec<Instant> = (0..10).map(|i| now + 100 * MS + i * MS).collect();
        assert_eq!(plan(&group, now, 64, |&d| (d, 1), heavy), (0, 10));
    }

    #[test]
    fn the_oldest_are_timed_out_when_newer_ones_make_a_larger_batch() {
        let now = Instant::now();
        // The two oldest have 1.3 ms left: a batch of 3 at most. From the third on, 10 ms: all 8.
        let mut group = vec![now + 13 * MS / 10, now + 13 * MS / 10];
        group.extend((0..8).map(|_| now + 10 * MS));
        assert_eq!(plan(&group, now, 64, |&d| (d, 1), heavy), (2, 8));
        // Past deadlines are never taken, even when nothing else is.
        let late = vec![now - MS, now];
        assert_eq!(plan(&late, now, 64, |&d| (d, 1), heavy), (2, 0));
        // Nothing fits: everything is a timeout.
        assert_eq!(plan(&[now + MS / 2], now, 64, |&d| (d, 1), heavy), (1, 0));
    }

    #[test]
    fn rows_not_jobs_are_what_a_batch_costs() {
        let now = Instant::now();
        let group = vec![now + 9 * MS / 2; 4];
        // 20 rows a job: 1 + 2 ms for one job, 1 + 4 for two; 4.5 ms left → one job at a time.
        assert_eq!(plan(&group, now, 64, |&d| (d, 20), heavy), (0, 1));
        // At most max_rows rows, unless one job alone has more; the first full batch wins.
        let group = vec![now + 100 * MS; 10];
        assert_eq!(plan(&group, now, 4, |&d| (d, 1), heavy), (0, 4));
        assert_eq!(plan(&group, now, 4, |&d| (d, 6), heavy), (0, 1));
    }
}
