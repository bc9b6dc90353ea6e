//! Scoring: the one place a challenger runs. The queued jobs of one version are scored together
//! (rows stacked into one run, cut back per request), or one at a time; either way through
//! [`infer`], whose panic guard turns a challenger's error or panic into its result.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::{PendingRecord, Scored};
use crate::model::Tensor;
use crate::registry::ModelVersion;
use crate::registry::Status;

/// Scores jobs of one version, oldest first, in batches no larger than the version (at its warm-up
/// speed) can finish before the oldest job's deadline: jobs already past their deadline are
/// timeouts, never run; a batch whose inputs do not stack, or that fails, runs one job at a time.
pub(super) fn score_group(version: &ModelVersion, mut group: Vec<(Arc<PendingRecord>, usize)>) {
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

/// One run over the stacked inputs, cut back into each request's outputs; `None` if the inputs do
/// not stack or the run fails (each is then run alone, so an error is its own request's).
fn run_batch(version: &ModelVersion, live: &[(Arc<PendingRecord>, usize)]) -> Option<Vec<Scored>> {
    let inputs_of = |i: usize| live.iter().map(|(p, _)| &p.request.inputs[i]).collect::<Vec<&Tensor>>();
    let count = live[0].0.request.inputs.len();
    let inputs: Vec<Tensor> = (0..count).map(|i| Tensor::concat_rows(&inputs_of(i))).collect::<Option<_>>()?;
    let rows: Vec<usize> = live.iter().map(|(p, _)| p.request.inputs[0].rows()).collect();
    let (outputs, latency) = infer(version, &inputs).ok()?;
    let mut per_request: Vec<Vec<Tensor>> = (0..live.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in &outputs {
        for (request, piece) in per_request.iter_mut().zip(output.split_rows(&rows)?) {
            request.push(piece);
        }
    }
    Some(per_request.into_iter().map(|outputs| Ok((outputs, latency, live.len()))).collect())
}

/// Runs one member on its request's input alone (on a shadow thread) and reports its result.
fn score_one(pending: &PendingRecord, slot: usize) {
    let scored = if Instant::now() >= pending.deadline {
        // Work that can no longer make its deadline is not worth the CPU.
        Err((Status::Timeout, None))
    } else {
        infer(&pending.slots[slot].version, &pending.request.inputs)
            .and_then(|(outputs, latency)| pending.within_deadline(Ok((outputs, latency, 1))))
    };
    pending.report(slot, scored);
}

/// One run of a challenger, timed: its error or panic is its result, and reaches no client.
fn infer(version: &ModelVersion, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Duration), (Status, Option<String>)> {
    let start = Instant::now();
    match catch_unwind(AssertUnwindSafe(|| version.infer(inputs))) {
        Ok(Ok(outputs)) => Ok((outputs, start.elapsed())),
        Ok(Err(error)) => Err((Status::Error, Some(error.to_string()))),
        Err(_panic) => Err((Status::Panic, Some("the model panicked".to_owned()))),
    }
}
