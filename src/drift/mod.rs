//! Drift: how far live traffic has moved from what each champion was trained on.
//!
//! Every version's manifest carries its training profile (`profile`). For sampled requests the
//! champion answered, the request path hands the decoded inputs and the champion's outputs to one
//! monitor thread; it keeps each deployment's recent rows (`window::Watch`), and every
//! `evaluate_interval_ms` computes per feature and per prediction the population stability index and
//! the KS statistic against the profile, over a window by count and one by time. Labels joined by
//! the join thread add the champion's accuracy or error per window (concept drift).
//! A deployment whose drift crosses its thresholds enters the alert state: a gauge, and an event
//! POSTed to the configured webhook (`webhook`), the hook a team points at its retraining pipeline.
//!
//! Invariants:
//! - The request path only pushes onto a bounded lock-free queue (no lock, no wakeup); a full queue
//!   drops the sample and counts it. Everything else runs on the monitor thread.
//! - Bounded: per deployment at most `max_window_rows` rows and labelled rows; the webhook's queue
//!   and its retries are bounded too, and what they drop is counted.
//! - A new champion starts a new watch against its own profile; samples of a version that is no
//!   longer the champion (in flight across a swap) are ignored.

pub mod offline;
pub mod report;
pub mod stats;
pub mod webhook;
pub mod window;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use metrics::{Counter, gauge};
use serde::{Deserialize, Serialize};

pub use self::report::DriftReport;
use self::webhook::{Event, Webhook};
use self::window::{Transition, Watch, WatchState};
use crate::background::{self, Closing, Priority, Work, Worker};
use crate::compare::{Observation, Prediction, Truth};
use crate::model::Tensor;
use crate::registry::{ModelVersion, Registry};
use crate::registry::{Role, Status};
use crate::repository::VersionId;
use crate::secret::Secret;

/// The monitor's settings (`[drift]`); thresholds can be set per deployment (`models.<name>.drift`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSettings {
    pub enabled: bool,
    /// Share of champion-answered requests, in [0, 1], whose rows are watched (by request-id hash).
    pub sample_rate: f64,
    /// At most this many sampled requests a second per deployment reach the monitor; beyond it the
    /// rest of the second is skipped. Drift needs a steady sample, not every request: this keeps
    /// its cost flat under any load (and the windows spanning time). 0: no limit.
    pub max_samples_per_s: u32,
    /// The count window: the last this many rows.
    pub window_rows: usize,
    /// The time window: rows of the last this many seconds.
    pub window_s: u64,
    /// The time window's bound: it admits at most `max_window_rows / window_s` rows a second.
    pub max_window_rows: usize,
    /// Rows a window needs before its drift counts towards the state.
    pub min_rows: usize,
    pub evaluate_interval_ms: u64,
    /// Samples waiting for the monitor thread; beyond this they are dropped (and counted).
    pub queue: usize,
    /// Default thresholds of every deployment.
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// Where alert events are POSTed (http:// or https://); unset: no webhook.
    pub webhook_url: Option<String>,
    /// Sent as `Authorization: Bearer <token>` (set it from the environment:
    /// GAUNTLET_DRIFT__WEBHOOK_BEARER_TOKEN).
    pub webhook_bearer_token: Option<Secret>,
    pub webhook_timeout_ms: u64,
    /// Tries per event, waiting `webhook_backoff_ms`, then twice as long, … between them.
    pub webhook_attempts: u32,
    pub webhook_backoff_ms: u64,
    /// Events waiting for delivery; beyond this they are dropped (and counted).
    pub webhook_queue: usize,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_rate: 1.0,
            max_samples_per_s: 500,
            window_rows: 1000,
            window_s: 300,
            max_window_rows: 10_000,
            min_rows: 200,
            evaluate_interval_ms: 5000,
            queue: 4096,
            thresholds: Thresholds::default(),
            webhook_url: None,
            webhook_bearer_token: None,
            webhook_timeout_ms: 2000,
            webhook_attempts: 5,
            webhook_backoff_ms: 500,
            webhook_queue: 64,
        }
    }
}

impl DriftSettings {
    /// What is wrong with these settings, if anything: (key, message).
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Some(("sample_rate", "must be between 0 and 1".into()));
        }
        for (key, value) in [
            ("window_rows", self.window_rows as u64),
            ("queue", self.queue as u64),
            ("evaluate_interval_ms", self.evaluate_interval_ms),
            ("webhook_attempts", u64::from(self.webhook_attempts)),
            ("webhook_queue", self.webhook_queue as u64),
        ] {
            if value == 0 {
                return Some((key, "must be greater than 0".into()));
            }
        }
        if self.max_window_rows < self.window_rows {
            return Some(("max_window_rows", format!("must be at least window_rows ({})", self.window_rows)));
        }
        if let Some(url) = &self.webhook_url
            && reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            return Some(("webhook_url", format!("'{url}' is not an http:// or https:// URL")));
        }
        self.thresholds.invalid().map(|m| ("psi_warn", m))
    }

    fn evaluate_interval(&self) -> Duration {
        Duration::from_millis(self.evaluate_interval_ms)
    }
}

/// PSI levels at which a series warns and alerts.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub psi_warn: f64,
    pub psi_alert: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { psi_warn: 0.1, psi_alert: 0.25 }
    }
}

impl Thresholds {
    pub fn invalid(&self) -> Option<String> {
        (!(self.psi_warn > 0.0 && self.psi_warn <= self.psi_alert && self.psi_alert.is_finite()))
            .then(|| format!("need 0 < psi_warn ({}) <= psi_alert ({})", self.psi_warn, self.psi_alert))
    }
}

/// The champion's per-row scores for one labelled request: 1 or 0 for a correct or wrong class,
/// the absolute error for a value. `None` when the champion has no result or the rows differ.
pub fn champion_scores(observation: &Observation, truth: &Truth) -> Option<(VersionId, Vec<f64>)> {
    let champion = observation.results.iter().find(|r| r.role == Role::Champion && r.status == Status::Ok)?;
    if champion.predictions.len() != truth.0.len() {
        return None;
    }
    let scores = champion
        .predictions
        .iter()
        .zip(&truth.0)
        .map(|(prediction, &y)| match prediction {
            Prediction::Class { label, .. } => f64::from(u8::from(*label as f64 == y)),
            Prediction::Value(v) => (v - y).abs(),
        })
        .collect();
    Some((champion.version.clone(), scores))
}

enum Message {
    Rows { version: Arc<ModelVersion>, inputs: Arc<Vec<Tensor>>, outputs: Arc<Vec<Tensor>>, at: Instant },
    Labelled { model: String, version: VersionId, scores: Vec<f64>, at: Instant },
}

/// The handle: the request path and the join thread push, the admin API reads reports.
pub struct Drift {
    shared: Arc<Shared>,
    /// The monitor thread; `None` when drift is off.
    monitor: Option<Worker<Message>>,
    /// Per model: this second's samples, against `max_samples_per_s`.
    budgets: Vec<(String, Budget)>,
    started: Instant,
    webhook: Option<Arc<Webhook>>,
}

struct Shared {
    settings: DriftSettings,
    /// Per-deployment thresholds that override `settings.thresholds`.
    thresholds: HashMap<String, Thresholds>,
    /// The last evaluation of each deployment, replaced whole after each round: readers on the async
    /// workers never wait for the (background-priority) monitor.
    reports: ArcSwap<HashMap<String, Arc<DriftReport>>>,
    dropped: Counter,
    /// In a cluster: whether this replica is the one that sends alerts (the analyst), so the
    /// cluster sends each transition once; `None`: one node, it always does.
    sends_alerts: Option<Arc<AtomicBool>>,
}

impl Drift {
    /// Starts the monitor for the registry's deployments; `thresholds` overrides the defaults per
    /// model. With `sends_alerts`, webhook events go out only while it is true. With
    /// `checkpoint_dir` (one node's `state_dir`) the windows and alert states are checkpointed there
    /// and resumed at start, so a restart neither empties them nor alerts again.
    pub fn start(
        settings: DriftSettings,
        thresholds: HashMap<String, Thresholds>,
        registry: Arc<Registry>,
        sends_alerts: Option<Arc<AtomicBool>>,
        checkpoint_dir: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let webhook = match (&settings.webhook_url, settings.enabled) {
            (Some(url), true) => Some(Arc::new(Webhook::start(url.clone(), &settings)?)),
            _ => None,
        };
        let shared = Arc::new(Shared {
            reports: ArcSwap::default(),
            dropped: crate::metrics::drift_samples_dropped(),
            settings,
            thresholds,
            sends_alerts,
        });
        let budgets = registry.models().map(|m| (m.name().to_owned(), Budget::default())).collect();
        let monitor = if shared.settings.enabled {
            let thread = background::Settings {
                name: "drift",
                threads: 1,
                queue: shared.settings.queue,
                batch: 4096,
                priority: Priority::Idle,
                poll: POLL,
                poll_idle: POLL_IDLE,
            };
            let interval = shared.settings.evaluate_interval();
            let mut monitor = Monitor {
                shared: Arc::clone(&shared),
                registry,
                watches: HashMap::new(),
                webhook: webhook.clone(),
                interval,
                next: Instant::now() + interval,
                checkpoint: checkpoint_dir.map(|dir| dir.join("drift.checkpoint")),
                checkpointed: Instant::now(),
                unsaved: false,
            };
            monitor.resume();
            Some(Worker::start_one(thread, monitor)?)
        } else {
            None
        };
        Ok(Self { shared, monitor, budgets, started: Instant::now(), webhook })
    }

    /// From the request path, after the response is complete: the rows a champion answered.
    /// Never waits: a full queue drops the sample (counted).
    pub fn observe(
        &self,
        request_id: &str,
        version: &Arc<ModelVersion>,
        inputs: &Arc<Vec<Tensor>>,
        outputs: &Arc<Vec<Tensor>>,
    ) {
        let settings = &self.shared.settings;
        if !settings.enabled || version.manifest().profile.is_none() {
            return;
        }
        if settings.sample_rate < 1.0 && crate::traffic::unit_interval("drift", request_id) >= settings.sample_rate {
            return;
        }
        let at = Instant::now();
        if settings.max_samples_per_s > 0
            && let Some((_, budget)) = self.budgets.iter().find(|(model, _)| model == version.name())
            && !budget.take(at.saturating_duration_since(self.started).as_secs(), settings.max_samples_per_s)
        {
            return;
        }
        let message = Message::Rows {
            version: Arc::clone(version),
            inputs: Arc::clone(inputs),
            outputs: Arc::clone(outputs),
            at,
        };
        self.send(message);
    }

    fn send(&self, message: Message) {
        if self.monitor.as_ref().is_some_and(|monitor| monitor.try_send(message).is_err()) {
            self.shared.dropped.increment(1);
        }
    }

    /// From the join thread: a label joined with its record.
    pub fn labelled(&self, model: &str, observation: &Observation, truth: &Truth) {
        if !self.shared.settings.enabled {
            return;
        }
        let Some((version, scores)) = champion_scores(observation, truth) else { return };
        self.send(Message::Labelled { model: model.to_owned(), version, scores, at: Instant::now() });
    }

    /// The last evaluation of the deployment `champion` leads, or, if it has had none since it
    /// became champion, an empty report (a replaced champion's would describe other traffic).
    pub fn report(&self, champion: &ModelVersion) -> DriftReport {
        let last = self.shared.reports.load().get(champion.name()).cloned();
        match last {
            Some(report) if report.version.as_deref() == Some(champion.version().as_str()) => (*report).clone(),
            _ => DriftReport::empty(champion, &self.shared.settings, self.shared.thresholds_of(champion.name())),
        }
    }

    /// Stops the monitor, then gives the webhook until its current delivery ends. Blocking.
    pub fn close(&self) {
        if let Some(monitor) = &self.monitor {
            monitor.close();
        }
        if let Some(webhook) = &self.webhook {
            webhook.close();
        }
    }
}

impl Drop for Drift {
    fn drop(&mut self) {
        self.close();
    }
}

/// Joined labels give the champion's accuracy or error over time: concept drift.
impl crate::join::Listener for Arc<Drift> {
    fn joined(&mut self, model: &str, observation: &Observation, truth: &Truth) {
        self.labelled(model, observation, truth);
    }
}

impl Shared {
    fn thresholds_of(&self, model: &str) -> Thresholds {
        self.thresholds.get(model).copied().unwrap_or(self.settings.thresholds)
    }
}

/// Samples taken in the current second: (second << 32) | count, in one atomic word.
#[derive(Default)]
struct Budget(AtomicU64);

impl Budget {
    /// Whether one more sample fits in second `now`. Lock-free; under a race a second may take a
    /// few more than `limit`, which only matters for cost, never for correctness.
    fn take(&self, now: u64, limit: u32) -> bool {
        let current = self.0.load(Ordering::Relaxed);
        let (second, count) = (current >> 32, current & 0xffff_ffff);
        if second != now & 0xffff_ffff {
            return self.0.compare_exchange(current, (now << 32) | 1, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        }
        if count >= u64::from(limit) {
            return false;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// The monitor thread's state.
struct Monitor {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    watches: HashMap<String, Watch>,
    webhook: Option<Arc<Webhook>>,
    interval: Duration,
    /// When the next evaluation is due.
    next: Instant,
    /// One node: where the windows are checkpointed (`state_dir/drift.checkpoint`), and when last.
    checkpoint: Option<PathBuf>,
    checkpointed: Instant,
    /// Rows or labels taken since the last checkpoint.
    unsaved: bool,
}

/// How often the monitor checkpoints its windows (and once more as it stops).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// The version of what `Monitor::save` writes; another is refused, named in the log.
const CHECKPOINT_FORMAT: i32 = 1;

/// The watch of `model` if `version` is what it watches, a new one if `version` is the champion
/// now, else `None` (a sample from before a swap).
fn watch<'a>(
    watches: &'a mut HashMap<String, Watch>,
    registry: &Registry,
    shared: &Shared,
    model: &str,
    version: &VersionId,
) -> Option<&'a mut Watch> {
    let current = watches.get(model).is_some_and(|w| w.version() == version);
    if !current {
        let champion = Arc::clone(registry.model(model)?.deployment().champion());
        if champion.version() != version {
            return None;
        }
        let alerting = watches.get(model).is_some_and(Watch::alerting);
        watches.insert(model.to_owned(), Watch::new(champion.manifest(), shared.thresholds_of(model), alerting));
    }
    watches.get_mut(model)
}

/// How long the monitor sleeps when its queue is empty: 5 ms, up to 40 ms while it stays empty. It
/// polls rather than blocks, like the outcome writer: a blocked receiver would make the request path
/// pay a futex wake per sample.
const POLL: Duration = Duration::from_millis(5);
const POLL_IDLE: Duration = Duration::from_millis(40);

impl Work for Monitor {
    type Message = Message;

    fn handle(&mut self, messages: &mut Vec<Message>, _: &Closing) {
        for message in messages.drain(..) {
            self.take(message);
        }
    }

    /// Evaluates every `evaluate_interval_ms`; checkpoints the windows every `CHECKPOINT_EVERY`.
    fn tick(&mut self, now: Instant) -> Duration {
        if now >= self.next {
            self.next = now + self.interval;
            self.evaluate(now);
        }
        if self.unsaved && now.duration_since(self.checkpointed) >= CHECKPOINT_EVERY {
            self.save(now);
        }
        self.next.saturating_duration_since(now)
    }

    fn finish(&mut self) {
        if self.unsaved {
            self.save(Instant::now());
        }
    }
}

impl Monitor {
    /// Writes every watch's windows and alert state to the checkpoint file.
    fn save(&mut self, now: Instant) {
        let Some(path) = &self.checkpoint else { return };
        let watches: Vec<(&str, WatchState)> =
            self.watches.iter().map(|(model, watch)| (model.as_str(), watch.save(now))).collect();
        if let Err(error) = crate::outcomes::write_checkpoint(path, CHECKPOINT_FORMAT, &watches, None) {
            tracing::error!(%error, file = %path.display(), "drift: the windows' checkpoint was not written");
        }
        (self.checkpointed, self.unsaved) = (now, false);
    }

    /// The watches a checkpoint held, for the models whose champion is still the version watched.
    fn resume(&mut self) {
        let Some(path) = self.checkpoint.clone().filter(|p| p.exists()) else { return };
        let watches: Vec<(String, WatchState)> = match crate::outcomes::read_checkpoint(&path, CHECKPOINT_FORMAT) {
            Ok(watches) => watches,
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "drift: the checkpoint cannot be read; the windows start empty");
                return;
            }
        };
        let now = Instant::now();
        for (model, state) in watches {
            let Some(served) = self.registry.model(&model) else { continue };
            let champion = Arc::clone(served.deployment().champion());
            if champion.version() == state.version() {
                let thresholds = self.shared.thresholds_of(&model);
                self.watches.insert(model, Watch::restore(champion.manifest(), thresholds, state, now));
            }
        }
        tracing::info!(watches = self.watches.len(), "drift: the windows resumed from the checkpoint");
    }

    fn take(&mut self, message: Message) {
        self.unsaved = true;
        let settings = &self.shared.settings;
        match message {
            Message::Rows { version, inputs, outputs, at } => {
                if let Some(watch) =
                    watch(&mut self.watches, &self.registry, &self.shared, version.name(), version.version())
                {
                    watch.add_rows(at, &inputs, &outputs, settings);
                }
            }
            Message::Labelled { model, version, scores, at } => {
                if let Some(watch) = watch(&mut self.watches, &self.registry, &self.shared, &model, &version) {
                    watch.add_labelled(at, &scores, settings);
                }
            }
        }
    }

    fn evaluate(&mut self, now: Instant) {
        let mut reports = HashMap::with_capacity(self.watches.len());
        for (model, watch) in &mut self.watches {
            let (report, transition) = watch.evaluate(now, &self.shared.settings);
            publish_gauges(&report);
            if let Some(transition) = transition {
                let entered = transition == Transition::Entered;
                crate::metrics::drift_transition(model, entered);
                if entered {
                    tracing::warn!(model, drifted = ?report.drifted, "drift: the deployment entered the alert state");
                } else {
                    tracing::info!(model, "drift: the deployment left the alert state");
                }
                let here = self.shared.sends_alerts.as_ref().is_none_or(|gate| gate.load(Ordering::Acquire));
                match &self.webhook {
                    Some(webhook) if here => webhook.send(Event::new(transition, &report)),
                    // Another replica (the cluster's analyst) sends the cluster's alerts.
                    Some(_) => crate::metrics::drift_webhook("not_analyst"),
                    None => {}
                }
            }
            reports.insert(model.clone(), Arc::new(report));
        }
        self.shared.reports.store(Arc::new(reports));
    }
}

/// A drift evaluation as gauges (set from the monitor thread after every evaluation).
fn publish_gauges(report: &DriftReport) {
    use self::report::State;
    let model = report.model.clone();
    let state = match report.state {
        State::InsufficientData => -1.0,
        State::Ok => 0.0,
        State::Warn => 1.0,
        State::Alert => 2.0,
    };
    gauge!(crate::metrics::DRIFT_STATE, "model" => model.clone()).set(state);
    gauge!(crate::metrics::DRIFT_ALERTING, "model" => model.clone()).set(f64::from(u8::from(report.alerting)));
    for window in &report.windows {
        gauge!(crate::metrics::DRIFT_WINDOW_ROWS, "model" => model.clone(), "window" => window.window.clone())
            .set(window.rows as f64);
        for s in &window.series {
            let labels = [("model", model.clone()), ("series", s.name.clone()), ("window", window.window.clone())];
            if let Some(psi) = s.psi {
                gauge!(crate::metrics::DRIFT_PSI, &labels).set(psi);
            }
            if let Some(ks) = s.ks {
                gauge!(crate::metrics::DRIFT_KS, &labels).set(ks);
            }
        }
    }
    for c in &report.concept {
        if let Some(value) = c.value {
            let labels = [("model", model.clone()), ("metric", c.metric.clone()), ("window", c.window.clone())];
            gauge!(crate::metrics::DRIFT_CHAMPION, &labels).set(value);
        }
        if let Some(holdout) = c.holdout {
            gauge!(crate::metrics::DRIFT_CHAMPION_HOLDOUT, "model" => model.clone(), "metric" => c.metric.clone())
                .set(holdout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_takes_its_limit_each_second() {
        let budget = Budget::default();
        let taken: Vec<bool> = (0..5).map(|_| budget.take(7, 3)).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        assert!(budget.take(8, 3), "a new second starts a new count");
        assert_eq!((0..5).filter(|_| budget.take(8, 3)).count(), 2);
    }
}
