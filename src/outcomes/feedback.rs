//! The live join: ground-truth labels, arriving late by request id, meet the paired records they
//! belong to, and the comparison (`compare::Comparison`) is kept up to date.
//!
//! One thread owns every index and comparison; the shadow threads and the HTTP handlers talk to it
//! through one bounded channel, so nothing here is behind a lock.
//!
//! Invariants: every structure is bounded. Records are indexed per model up to `index_capacity`
//! and `retention`; an evicted id is remembered (bounded) so its late label is answered `expired`.
//! A label whose record has not arrived is held (bounded, `hold`) and joined when it lands; one
//! still unmatched when its hold ends is counted `unknown`. A full channel drops the record
//! (counted) and answers feedback with 503.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::compare::policy::{self, Decision, PolicySettings};
use crate::compare::{CompareSettings, Comparison, Observation, Report, Truth};
use crate::drift::Drift;
use crate::registry::{Change, Origin, Registry};
use crate::repository::Task;

/// Bounds of the join.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackSettings {
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
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        Self { index_capacity: 200_000, retention_s: 7 * 86_400, hold_capacity: 20_000, hold_s: 600, queue: 8_192 }
    }
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

enum Message {
    Record { model: String, observation: Observation },
    Truths { model: String, truths: Vec<(String, Truth)>, reply: oneshot::Sender<Vec<Joined>> },
    Report { model: String, reply: oneshot::Sender<Option<Report>> },
    Close,
}

pub struct Feedback {
    sender: Sender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Feedback {
    /// Starts the join thread for these models (name, task, policy), acting on `registry` when a
    /// policy decides.
    pub fn start(
        models: Vec<(String, Task, PolicySettings)>,
        compare: CompareSettings,
        settings: FeedbackSettings,
        registry: Arc<Registry>,
        drift: Arc<Drift>,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = bounded(settings.queue.max(1));
        let policies = models.iter().map(|(name, _, policy)| (name.clone(), policy.clone())).collect();
        let mut join = Join {
            settings,
            registry,
            drift,
            policies,
            dry_run_noted: BTreeMap::new(),
            models: models
                .into_iter()
                .map(|(name, task, _)| {
                    let comparison = Comparison::new(name.clone(), task, compare);
                    (name, ModelIndex::new(comparison))
                })
                .collect(),
            last_gauges: Instant::now(),
        };
        let thread = thread::Builder::new().name("feedback-join".into()).spawn(move || {
            // Below the request threads, not idle: labels and reports wait on this thread.
            crate::executor::lower_priority_somewhat();
            join.run(receiver)
        })?;
        Ok(Self { sender, thread: Mutex::new(Some(thread)) })
    }

    /// Hands over a paired record without waiting; a full channel drops it (counted).
    pub fn record(&self, model: String, observation: Observation) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.sender.try_send(Message::Record { model, observation })
        {
            crate::metrics::comparison_records_dropped();
        }
    }

    /// Joins labels of one model; answers once the join thread has taken them.
    pub async fn truths(&self, model: &str, truths: Vec<(String, Truth)>) -> Result<Vec<Joined>, Busy> {
        let (reply, answer) = oneshot::channel();
        self.sender.try_send(Message::Truths { model: model.to_owned(), truths, reply }).map_err(|_| Busy)?;
        answer.await.map_err(|_| Busy)
    }

    /// The comparison as it stands; `None` for a model the join does not know.
    pub async fn report(&self, model: &str) -> Result<Option<Report>, Busy> {
        let (reply, answer) = oneshot::channel();
        self.sender.try_send(Message::Report { model: model.to_owned(), reply }).map_err(|_| Busy)?;
        answer.await.map_err(|_| Busy)
    }

    /// Takes every message sent so far, then stops the thread. Blocking.
    pub fn close(&self) {
        let Some(thread) = self.thread.lock().take() else { return };
        let _ = self.sender.send(Message::Close);
        if thread.join().is_err() {
            tracing::error!("the feedback join thread panicked");
        }
    }
}

impl Drop for Feedback {
    fn drop(&mut self) {
        self.close();
    }
}

struct Join {
    settings: FeedbackSettings,
    registry: Arc<Registry>,
    /// Told of every joined label: the champion's accuracy over time is concept drift.
    drift: Arc<Drift>,
    policies: BTreeMap<String, PolicySettings>,
    /// The last decision a dry-run policy recorded per model (action, champion, version), so each is
    /// recorded once rather than after every label.
    dry_run_noted: BTreeMap<String, (&'static str, String, String)>,
    models: BTreeMap<String, ModelIndex>,
    last_gauges: Instant,
}

/// One model's records awaiting labels, labels awaiting records, and its comparison.
struct ModelIndex {
    comparison: Comparison,
    records: HashMap<String, Entry>,
    order: VecDeque<(String, Instant)>,
    held: HashMap<String, (Truth, Instant)>,
    held_order: VecDeque<(String, Instant)>,
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
    changed: bool,
    /// A held label joined since the policy last looked.
    changed_labels: bool,
}

struct Entry {
    observation: Observation,
    labelled: bool,
}

const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// How long the join thread sleeps when nothing waits for it: 2 ms, up to 16 ms while nothing does.
const POLL: Duration = Duration::from_millis(2);
const POLL_IDLE: Duration = Duration::from_millis(16);

impl Join {
    /// Polls rather than blocks, like the outcome writer: a blocked receiver would make every
    /// shadow thread pay a futex wake per record. Feedback and reports wait at most `POLL_IDLE` longer.
    fn run(&mut self, receiver: Receiver<Message>) {
        let mut poll = crate::executor::IdlePoll::new(POLL, POLL_IDLE);
        loop {
            let message = receiver.try_recv();
            if message.is_ok() {
                poll.busy();
            }
            match message {
                Ok(Message::Record { model, observation }) => self.record(&model, observation),
                Ok(Message::Truths { model, truths, reply }) => {
                    let answers = self.truths(&model, truths);
                    let _ = reply.send(answers);
                }
                Ok(Message::Report { model, reply }) => {
                    let _ = reply.send(self.models.get(&*model).map(|m| m.comparison.report()));
                }
                Ok(Message::Close) | Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => std::thread::sleep(poll.idle()),
            }
            let now = Instant::now();
            for (name, index) in &mut self.models {
                index.expire(name, now, &self.settings);
            }
            if now.duration_since(self.last_gauges) >= GAUGE_INTERVAL {
                self.last_gauges = now;
                for index in self.models.values_mut().filter(|m| m.changed) {
                    index.changed = false;
                    crate::metrics::comparison_gauges(&index.comparison.report());
                }
            }
        }
        for index in self.models.values() {
            crate::metrics::comparison_gauges(&index.comparison.report());
        }
    }

    fn record(&mut self, model: &str, observation: Observation) {
        let Some(index) = self.models.get_mut(model) else { return };
        let settings = self.settings;
        index.changed = true;
        index.comparison.add(&observation);
        let id = observation.request_id.clone();
        let mut entry = Entry { observation, labelled: false };
        if let Some((truth, _)) = index.held.remove(&id) {
            index.comparison.add_truth(&entry.observation, &truth);
            self.drift.labelled(model, &entry.observation, &truth);
            entry.labelled = true;
            index.changed_labels = true;
            crate::metrics::feedback(model, "joined_late");
        }
        if index.records.insert(id.clone(), entry).is_none() {
            index.order.push_back((id, Instant::now()));
        }
        while index.records.len() > settings.index_capacity {
            index.evict_oldest_record(settings.index_capacity);
        }
        if index.changed_labels {
            index.changed_labels = false;
            self.apply_policy(model);
        }
    }

    /// Lets the model's policy, if enabled, act on the comparison as it now stands.
    fn apply_policy(&mut self, model: &str) {
        let Some(settings) = self.policies.get(model).filter(|p| p.enabled) else { return };
        let (Some(index), Some(served)) = (self.models.get(model), self.registry.model(model)) else { return };
        let deployment = served.deployment();
        let champion = deployment.champion().version().clone();
        let challengers: Vec<_> = deployment.challengers().iter().map(|c| c.version().clone()).collect();
        let Some(decision) =
            policy::decide(&index.comparison, &champion, &challengers, deployment.previous().last(), settings)
        else {
            return;
        };
        let evidence = serde_json::to_value(decision.evidence()).ok();
        let (change, version, reason) = match &decision {
            Decision::Promote { version, .. } => (
                Change::Promote { version: version.clone(), keep_previous: true },
                version,
                "the challenger is better by the sequential test",
            ),
            Decision::Rollback { version, .. } => {
                (Change::Rollback, version, "the champion it replaced is better by the sequential test")
            }
        };
        let origin = Origin { actor: "policy", reason: Some(reason), evidence: evidence.as_ref() };
        if settings.dry_run {
            let key = (change.action(), champion.to_string(), version.to_string());
            if self.dry_run_noted.get(model) != Some(&key) {
                tracing::info!(model, action = change.action(), version = %version, ?evidence, "policy (dry run) would act");
                self.registry.record_decision(model, change.action(), version, origin);
                self.dry_run_noted.insert(model.to_owned(), key);
            }
            return;
        }
        if let Err(error) = self.registry.apply(model, &change, origin) {
            tracing::error!(model, %error, "the policy's change was refused");
        }
    }

    fn truths(&mut self, model: &str, truths: Vec<(String, Truth)>) -> Vec<Joined> {
        let Some(index) = self.models.get_mut(model) else { return vec![] };
        let settings = self.settings;
        index.changed = true;
        let answers: Vec<Joined> = truths
            .into_iter()
            .map(|(id, truth)| {
                let joined = index.truth(id, truth, &settings, &self.drift);
                crate::metrics::feedback(model, joined.label());
                joined
            })
            .collect();
        if answers.contains(&Joined::Joined) {
            self.apply_policy(model);
        }
        answers
    }
}

impl ModelIndex {
    fn new(comparison: Comparison) -> Self {
        Self {
            comparison,
            records: HashMap::new(),
            order: VecDeque::new(),
            held: HashMap::new(),
            held_order: VecDeque::new(),
            expired: HashSet::new(),
            expired_order: VecDeque::new(),
            changed: false,
            changed_labels: false,
        }
    }

    fn truth(&mut self, id: String, truth: Truth, settings: &FeedbackSettings, drift: &Drift) -> Joined {
        if let Some(entry) = self.records.get_mut(&id) {
            if entry.labelled {
                return Joined::Duplicate;
            }
            entry.labelled = true;
            self.comparison.add_truth(&entry.observation, &truth);
            drift.labelled(self.comparison.model(), &entry.observation, &truth);
            return Joined::Joined;
        }
        if self.expired.contains(&id) {
            return Joined::Expired;
        }
        if self.held.contains_key(&id) {
            return Joined::Duplicate;
        }
        let now = Instant::now();
        self.held.insert(id.clone(), (truth, now));
        self.held_order.push_back((id, now));
        while self.held.len() > settings.hold_capacity {
            let Some((oldest, _)) = self.held_order.pop_front() else { break };
            if self.held.remove(&oldest).is_some() {
                crate::metrics::feedback(self.comparison_model(), "unknown");
            }
        }
        Joined::Held
    }

    fn comparison_model(&self) -> &str {
        self.comparison.model()
    }

    fn evict_oldest_record(&mut self, expired_capacity: usize) {
        let Some((id, _)) = self.order.pop_front() else { return };
        if self.records.remove(&id).is_some_and(|entry| !entry.labelled) {
            // Remember it (bounded) so a label that comes now is told `expired`, not held.
            if self.expired.insert(id.clone()) {
                self.expired_order.push_back(id);
            }
            while self.expired.len() > expired_capacity {
                let Some(old) = self.expired_order.pop_front() else { break };
                self.expired.remove(&old);
            }
        }
    }

    /// Ends what outlived its time: records past retention, held labels past their hold.
    fn expire(&mut self, model: &str, now: Instant, settings: &FeedbackSettings) {
        let retention = Duration::from_secs(settings.retention_s);
        while self.order.front().is_some_and(|(_, at)| now.duration_since(*at) > retention) {
            self.evict_oldest_record(settings.index_capacity);
        }
        let hold = Duration::from_secs(settings.hold_s);
        while let Some((id, at)) = self.held_order.front()
            && now.duration_since(*at) > hold
        {
            if self.held.get(id).is_some_and(|(_, held_at)| held_at == at) {
                self.held.remove(id);
                crate::metrics::feedback(model, "unknown");
            }
            self.held_order.pop_front();
        }
    }
}
