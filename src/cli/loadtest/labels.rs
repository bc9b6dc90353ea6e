//! `--feedback`: the labels of answered requests, posted in batches once they come due.

use std::time::Instant;

use serde_json::{Value, json};

use super::FeedbackSummary;

/// Labels waiting to be posted, at most; beyond it they count as failed.
pub(super) const FEEDBACK_QUEUE: usize = 100_000;
/// Labels per feedback POST, at most.
const FEEDBACK_BATCH: usize = 500;

/// A label to post once `due`.
pub(super) struct Label {
    pub(super) due: Instant,
    pub(super) id: String,
    pub(super) truth: Value,
}

/// Posts labels in batches as they come due, until every sender is gone and the queue is empty.
pub(super) async fn post_feedback(
    client: reqwest::Client,
    url: String,
    mut receiver: tokio::sync::mpsc::Receiver<Label>,
) -> FeedbackSummary {
    let mut summary = FeedbackSummary::default();
    let mut pending: Option<Label> = None;
    loop {
        let first = match pending.take() {
            Some(label) => label,
            None => match receiver.recv().await {
                Some(label) => label,
                None => break,
            },
        };
        tokio::time::sleep_until(first.due.into()).await;
        let mut batch = vec![first];
        while batch.len() < FEEDBACK_BATCH {
            match receiver.try_recv() {
                Ok(label) if label.due <= Instant::now() => batch.push(label),
                Ok(label) => {
                    pending = Some(label);
                    break;
                }
                Err(_) => break,
            }
        }
        let items: Vec<Value> = batch.iter().map(|l| json!({ "id": l.id, "truth": l.truth })).collect();
        let answer = client.post(&url).json(&json!({ "feedback": items })).send().await;
        let counts = match answer {
            Ok(response) if response.status().is_success() => response.json::<Value>().await.ok(),
            _ => None,
        };
        match counts {
            Some(counts) => {
                let n = |key: &str| counts[key].as_u64().unwrap_or(0);
                summary.posted += batch.len() as u64;
                summary.joined += n("joined");
                summary.held += n("held");
                summary.duplicate += n("duplicate");
                summary.expired += n("expired");
            }
            None => summary.failed += batch.len() as u64,
        }
    }
    summary
}
