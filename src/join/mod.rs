//! The live join: ground-truth labels, arriving late by request id, meet the paired records they
//! belong to, and each model's comparison (`compare::Comparison`) is kept up to date.
//!
//! One thread owns every index and comparison; the shadow threads and the HTTP handlers talk to it
//! through one bounded queue (`background::Worker`), so nothing here is behind a lock. What acts on
//! the join's results (the promotion policy, concept drift) is a `Listener`, told on that thread.
//!
//! The join is also the one owner of the record-and-label fan-out: a record's or label's JSON line
//! travels with it, and the join thread, having taken it, stamps it with the next number of its
//! sequence (`"seq"`) and hands it to the outcome log. So the stamped lines in the log are the
//! join's own history, in its order. Every `checkpoint_interval_s`, once enough lines came since the
//! last (`JoinThread::checkpoint_due`), the thread writes its whole state (every index and
//! comparison) with the last number it stamped to `state_dir` (`checkpoint`); at start it reads the
//! newest checkpoint that decodes and takes the log's stamped lines after it through the same code,
//! so a restart keeps the comparison and the policy's evidence, and a SIGKILL loses at most what the
//! log had not yet flushed. A line the join could not take (its queue full) goes to the log
//! unstamped: counted neither live nor at a restart.
//!
//! Invariants: every structure is bounded. Records are indexed per model up to `index_capacity`
//! and `retention`; an evicted id is remembered (bounded) so its late label is answered `expired`.
//! A label whose record has not arrived is held (bounded, `hold`) and joined when it lands; one
//! still unmatched when its hold ends is counted `unknown`. A full queue drops the record
//! (counted) and answers feedback with 503.

mod checkpoint;
mod index;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use self::index::ModelIndex;
use crate::background::{self, Closing, Priority, Work, Worker};
use crate::compare::{CompareSettings, Comparison, Observation, Report, Truth};
use crate::metrics::{
    COMPARISON_AGREEMENT, COMPARISON_IMPROVEMENT, COMPARISON_LABELLED, COMPARISON_MODEL, COMPARISON_P_VALUE,
    COMPARISON_SEQUENTIAL_P_VALUE,
};
use crate::outcomes::RecordSink;
use crate::repository::Task;

/// Bounds of the join.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinSettings {
    /// Records kept per model, waiting for their label.
    pub index_capacity: usize,
    /// How long a record waits for its label.
    pub retention_s: u64,
    /// Labels held per model whose record has not arrived yet.
    pub hold_capacity: usize,
    /// How long such a label waits for its record before it counts as `unknown`.
    pub hold_s: u64,
    /// Messages waiting for the join thread.
    pub queue: usize,
    /// How often the join writes its checkpoint to `state_dir` (one node; 0: never).
    pub checkpoint_interval_s: u64,
}

impl Default for JoinSettings {
    fn default() -> Self {
        Self {
            index_capacity: 200_000,
            retention_s: 7 * 86_400,
            hold_capacity: 20_000,
            hold_s: 600,
            queue: 8_192,
            checkpoint_interval_s: 10,
        }
    }
}

/// Where the join's lines go and where its checkpoints live.
pub struct Durability {
    /// The outcome log, which the join hands each stamped line to, and closes after itself.
    pub sink: Arc<dyn RecordSink>,
    /// The directory of the checkpoint (one node's `state_dir`); `None` writes none (a cluster
    /// replica: the analyst's checkpoints are the cluster's).
    pub checkpoint_dir: Option<PathBuf>,
    /// The outcome log's directory: the stamped lines after the checkpoint are read from it at start.
    pub log_dir: PathBuf,
}

/// What became of one label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Joined {
    /// Matched with its record now.
    Joined,
    /// No record yet: held until it lands (or the hold ends).
    Held,
    /// The request already has a label; the first one stands.
    Duplicate,
    /// The record was evicted before the label came.
    Expired,
}

impl Joined {
    pub fn label(self) -> &'static str {
        match self {
            Self::Joined => "joined",
            Self::Held => "held",
            Self::Duplicate => "duplicate",
            Self::Expired => "expired",
        }
    }
}

/// The join thread is behind: try again shortly.
#[derive(Debug)]
pub struct Busy;

/// What acts on the join's results. Told on the join thread: it must not wait long, and whatever
/// it hands elsewhere it hands over without waiting.
pub trait Listener: Send {
    /// A label met its record.
    fn joined(&mut self, _model: &str, _observation: &Observation, _truth: &Truth) {}
    /// The model's comparison gained a label (told after each one that joins).
    fn compared(&mut self, _model: &str, _comparison: &Comparison) {}
}

enum Message {
    Record { model: String, observation: Observation, line: Vec<u8> },
    Truths { model: String, truths: Vec<(String, Truth, Vec<u8>)>, reply: oneshot::Sender<Vec<Joined>> },
    Report { model: String, reply: oneshot::Sender<Option<Report>> },
}

/// The handle: the shadow threads hand records over, the HTTP handlers labels and report requests.
/// The one door records and labels go through: it owns the outcome log it hands their lines to,
/// and closes it.
pub struct LabelJoin {
    worker: Worker<Message>,
    sink: Arc<dyn RecordSink>,
}

const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// New lines a periodic checkpoint waits for at least (`JoinThread::checkpoint_due`): about a
/// second's reading at a restart. Before, a checkpoint every 10 s with any new line made a quiet
/// gateway write its whole state for a few hundred lines: at 30 req/s, 17k instructions a record
/// with the index nearly empty, and O(index) a record as it fills (200,000 records by default).
const CHECKPOINT_LINES: u64 = 10_000;
/// The longest a checkpoint waits for lines, whatever their number: the log's retention is days.
const CHECKPOINT_LONGEST: Duration = Duration::from_secs(3_600);

/// Whether `lines` new lines, `since` the last checkpoint, are worth a checkpoint of `held()`
/// records and labels (see `JoinThread::checkpoint_due`).
fn checkpoint_worth(lines: u64, since: Duration, interval: Duration, held: impl Fn() -> usize) -> bool {
    if lines == 0 || interval.is_zero() || since < interval {
        return false;
    }
    since >= CHECKPOINT_LONGEST.max(interval) || lines >= CHECKPOINT_LINES.max(held() as u64 / 8)
}

/// How long the join thread sleeps when nothing waits for it: 2 ms, up to 16 ms while nothing does.
/// It polls rather than blocks, like the outcome writer: a blocked receiver would make every shadow
/// thread pay a futex wake per record. Feedback and reports wait at most `POLL_IDLE` longer.
const POLL: Duration = Duration::from_millis(2);
const POLL_IDLE: Duration = Duration::from_millis(16);

impl LabelJoin {
    /// Starts the join thread for these models (name, task); `listeners` are told what it joins.
    /// With a checkpoint directory it first resumes from the newest checkpoint there and the log's
    /// stamped lines after it (blocking: call it at startup).
    pub fn start(
        models: Vec<(String, Task)>,
        compare: CompareSettings,
        settings: JoinSettings,
        listeners: Vec<Box<dyn Listener>>,
        durability: Durability,
    ) -> std::io::Result<Self> {
        let thread = background::Settings {
            name: "feedback-join",
            threads: 1,
            queue: settings.queue,
            batch: 64,
            // Below the request threads, not idle: labels and reports wait on this thread.
            priority: Priority::Low,
            poll: POLL,
            poll_idle: POLL_IDLE,
        };
        let now = Instant::now();
        let mut join = JoinThread {
            settings,
            listeners,
            models: models
                .into_iter()
                .map(|(name, task)| {
                    let comparison = Comparison::new(name.clone(), task, compare);
                    (name, ModelIndex::new(comparison))
                })
                .collect(),
            last_gauges: now,
            sink: Arc::clone(&durability.sink),
            seq: 0,
            checkpoint_dir: durability.checkpoint_dir.clone(),
            last_checkpoint: now,
            saved_seq: 0,
        };
        if let Some(dir) = &durability.checkpoint_dir {
            checkpoint::resume(&mut join, dir, &durability.log_dir, compare);
        }
        let worker = Worker::start_one(thread, join)?;
        Ok(Self { worker, sink: durability.sink })
    }

    /// Hands over a paired record and its JSON line without waiting. A full queue drops it from the
    /// comparison (counted); its line still goes to the log, unstamped.
    pub fn record(&self, model: String, observation: Observation, line: Vec<u8>) {
        if let Err(Message::Record { line, .. }) = self.worker.try_send(Message::Record { model, observation, line }) {
            crate::metrics::comparison_records_dropped();
            self.sink.offer(line);
        }
    }

    /// Joins labels of one model, each with its JSON line; answers once the join thread has taken
    /// them. Busy: the lines go to the log unstamped (a label retried is counted once it joins).
    pub async fn truths(&self, model: &str, truths: Vec<(String, Truth, Vec<u8>)>) -> Result<Vec<Joined>, Busy> {
        let (reply, answer) = oneshot::channel();
        if let Err(Message::Truths { truths, .. }) =
            self.worker.try_send(Message::Truths { model: model.to_owned(), truths, reply })
        {
            for (_, _, line) in truths {
                self.sink.offer(line);
            }
            return Err(Busy);
        }
        answer.await.map_err(|_| Busy)
    }

    /// The comparison as it stands; `None` for a model the join does not know.
    pub async fn report(&self, model: &str) -> Result<Option<Report>, Busy> {
        let (reply, answer) = oneshot::channel();
        self.worker.try_send(Message::Report { model: model.to_owned(), reply }).map_err(|_| Busy)?;
        answer.await.map_err(|_| Busy)
    }

    /// Takes every message sent so far (their lines reach the log), writes a last checkpoint, stops
    /// the thread, then closes the log, which writes everything it accepted. Blocking.
    pub fn close(&self) {
        self.worker.close();
        self.sink.close();
    }
}

/// The join thread's state: every model's index and comparison.
struct JoinThread {
    settings: JoinSettings,
    listeners: Vec<Box<dyn Listener>>,
    models: BTreeMap<String, ModelIndex>,
    last_gauges: Instant,
    sink: Arc<dyn RecordSink>,
    /// The last number stamped on a line.
    seq: u64,
    checkpoint_dir: Option<PathBuf>,
    last_checkpoint: Instant,
    /// `seq` when the last checkpoint was written.
    saved_seq: u64,
}

impl Work for JoinThread {
    type Message = Message;

    fn handle(&mut self, messages: &mut Vec<Message>, _: &Closing) {
        for message in messages.drain(..) {
            match message {
                Message::Record { model, observation, line } => {
                    self.record(&model, observation);
                    self.log(line);
                }
                Message::Truths { model, truths, reply } => {
                    let mut answers = Vec::with_capacity(truths.len());
                    for (id, truth, line) in truths {
                        answers.push(self.truth(&model, id, truth));
                        self.log(line);
                    }
                    let _ = reply.send(answers);
                }
                Message::Report { model, reply } => {
                    let _ = reply.send(self.models.get(&*model).map(|m| m.comparison.report()));
                }
            }
        }
    }

    /// Ends what outlived its time, every few seconds sets the changed comparisons' gauges, and
    /// writes the checkpoint when it is due.
    fn tick(&mut self, now: Instant) -> Duration {
        if self.checkpoint_due(now) {
            self.checkpoint(now);
        }
        for (name, index) in &mut self.models {
            index.expire(name, now, &self.settings);
        }
        if now.duration_since(self.last_gauges) >= GAUGE_INTERVAL {
            self.last_gauges = now;
            for (name, index) in self.models.iter_mut().filter(|(_, m)| m.changed) {
                index.changed = false;
                publish_gauges(name, &index.comparison);
            }
        }
        Duration::MAX
    }

    fn finish(&mut self) {
        for (name, index) in &self.models {
            publish_gauges(name, &index.comparison);
        }
        if self.seq != self.saved_seq {
            self.checkpoint(Instant::now());
        }
    }
}

impl JoinThread {
    fn record(&mut self, model: &str, observation: Observation) {
        let Some(index) = self.models.get_mut(model) else { return };
        if index.record(model, observation, &self.settings, &mut self.listeners) {
            Self::tell_compared(&mut self.listeners, model, &index.comparison);
        }
    }

    /// One label. Listeners are told after each label that joins, not once a batch: the policy then
    /// decides at the very label a replay of the log (`compare::replay`) decides at.
    fn truth(&mut self, model: &str, id: String, truth: Truth) -> Joined {
        let Some(index) = self.models.get_mut(model) else { return Joined::Held };
        index.changed = true;
        let joined = index.truth(id, truth, &self.settings, &mut self.listeners);
        crate::metrics::feedback(model, joined.label());
        if joined == Joined::Joined {
            Self::tell_compared(&mut self.listeners, model, &index.comparison);
        }
        joined
    }

    /// Stamps a line with the next number and hands it to the log.
    fn log(&mut self, line: Vec<u8>) {
        self.seq += 1;
        self.sink.offer(checkpoint::stamp(line, self.seq));
    }

    /// A checkpoint writes the whole state (every record waiting for its label), a restart reads
    /// it and then the lines after it. So one is due after `checkpoint_interval_s` only once the
    /// lines since the last are worth it: `CHECKPOINT_LINES`, or an eighth of the records held
    /// (whose writing then costs each new line at most about eight records' worth); or after
    /// `CHECKPOINT_LONGEST` with any. A restart reads at most that many lines again.
    fn checkpoint_due(&self, now: Instant) -> bool {
        let interval = Duration::from_secs(self.settings.checkpoint_interval_s);
        let since = now.duration_since(self.last_checkpoint);
        // The index is summed only when the rest allows one: at most once a tick.
        checkpoint_worth(self.seq - self.saved_seq, since, interval, || self.models.values().map(ModelIndex::len).sum())
    }

    fn checkpoint(&mut self, now: Instant) {
        let Some(dir) = &self.checkpoint_dir else { return };
        let began = Instant::now();
        match checkpoint::write(dir, self.seq, &self.models, now) {
            Ok(bytes) => crate::metrics::checkpoint_written(bytes, began.elapsed()),
            Err(error) => tracing::error!(%error, dir = %dir.display(), "the comparison's checkpoint was not written"),
        }
        self.last_checkpoint = now;
        self.saved_seq = self.seq;
    }

    fn tell_compared(listeners: &mut [Box<dyn Listener>], model: &str, comparison: &Comparison) {
        for listener in listeners {
            listener.compared(model, comparison);
        }
    }
}

/// The report's key figures as gauges (set from the join thread every few seconds), read without
/// building the whole report.
fn publish_gauges(model: &str, comparison: &Comparison) {
    for (version, metric, value) in comparison.headline_metrics() {
        gauge!(COMPARISON_MODEL, "model" => model.to_owned(), "version" => version.to_owned(), "metric" => metric)
            .set(value);
    }
    let model = model.to_owned();
    for p in &comparison.pair_reports() {
        let labels = [("model", model.clone()), ("champion", p.champion.clone()), ("challenger", p.challenger.clone())];
        gauge!(COMPARISON_LABELLED, &labels).set(p.labelled_pairs as f64);
        gauge!(COMPARISON_SEQUENTIAL_P_VALUE, &labels).set(p.sequential_p_value);
        if let Some(a) = p.agreement {
            gauge!(COMPARISON_AGREEMENT, &labels).set(a);
        }
        if let Some(i) = p.improvement {
            gauge!(COMPARISON_IMPROVEMENT, &labels).set(i);
        }
        if let Some(pv) = p.p_value {
            gauge!(COMPARISON_P_VALUE, &labels).set(pv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_waits_for_lines_worth_writing_the_state_for() {
        let (s10, minute) = (Duration::from_secs(10), Duration::from_secs(60));
        let small = || 1_000;
        // Within the interval, or with nothing new, never.
        assert!(!checkpoint_worth(50_000, Duration::from_secs(9), s10, small));
        assert!(!checkpoint_worth(0, CHECKPOINT_LONGEST, s10, small));
        // A quiet gateway: 300 lines in 10 s are not worth it; 10,000 are, whatever the time since.
        assert!(!checkpoint_worth(300, s10, s10, small));
        assert!(checkpoint_worth(CHECKPOINT_LINES, s10, s10, small));
        // A full index: an eighth of it in new lines.
        let full = || 200_000;
        assert!(!checkpoint_worth(24_999, minute, s10, full));
        assert!(checkpoint_worth(25_000, minute, s10, full));
        // Any line after the longest wait; and never sooner than the interval, however long it is.
        assert!(checkpoint_worth(1, CHECKPOINT_LONGEST, s10, full));
        assert!(!checkpoint_worth(1, CHECKPOINT_LONGEST, 2 * CHECKPOINT_LONGEST, full));
        // 0 turns the periodic ones off.
        assert!(!checkpoint_worth(1_000_000, CHECKPOINT_LONGEST, Duration::ZERO, full));
    }
}
