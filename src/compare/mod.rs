//! Champion against each challenger over paired outcomes: label-free agreement and divergence at
//! once, accuracy or error with paired tests once ground truth arrives, latency and failures, and
//! a verdict.
//!
//! Invariant: pure. `Comparison` is fed observations and truths and knows nothing of where they
//! come from: the live join (`join`) and the offline report over log files
//! (`offline`) drive the same code, so they give the same figures.

mod estimate;
pub mod history;
mod observation;
pub mod offline;
pub mod policy;
pub mod replay;
mod report;
pub mod stats;
mod table;

use std::collections::{BTreeMap, VecDeque};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::registry::{Role, Status};
use crate::repository::{Task, VersionId};

pub use self::observation::{ModelOutcome, Observation, Prediction, Truth, predictions};
pub use self::report::{ModelReport, PairReport, Report, SliceReport, Snapshot, Verdict};

/// How the comparison judges.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareSettings {
    /// Significance level of the paired tests and the sequential test.
    pub alpha: f64,
    /// Power used to estimate how many labelled pairs an effect needs.
    pub power: f64,
    /// Below this many labelled pairs the verdict is "not enough data".
    pub min_labelled_pairs: u64,
    /// Regression: two predictions agree when they differ by at most this share of the larger.
    pub agreement_tolerance: f64,
    /// A point of the comparison's history (`history`) at most this often, while labels join.
    pub history_interval_s: u64,
    /// Points kept per model (10,080: a week at one a minute).
    pub history_points: usize,
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            power: 0.8,
            min_labelled_pairs: 30,
            agreement_tolerance: 0.05,
            history_interval_s: 60,
            history_points: 10_080,
        }
    }
}

/// Samples kept per pair for rank statistics (Wilcoxon, KS): the most recent ones.
const SAMPLE_CAPACITY: usize = 100_000;

/// The comparison of one served model's versions. Serializable whole: a checkpoint holds it
/// (`offline::Checkpoint`), and one read back goes on exactly where this one stood.
#[derive(Deserialize, Serialize)]
pub struct Comparison {
    model: String,
    task: Task,
    settings: CompareSettings,
    records: u64,
    labelled_records: u64,
    /// Truths whose row count did not match the record's.
    mismatched_truths: u64,
    models: BTreeMap<VersionId, ModelStats>,
    /// (champion, challenger) as the records named them; a handful, searched in place (a record
    /// allocates no key).
    pairs: Vec<((VersionId, VersionId), PairStats)>,
    /// The champion the latest record named, and how many times that changed: each change starts
    /// every pair's evidence afresh (`Fresh`), and the policy's `policy::level` spends its error
    /// once per decision.
    champion: Option<VersionId>,
    changes: u32,
}

#[derive(Deserialize, Serialize)]
struct ModelStats {
    records: u64,
    statuses: [u64; 5],
    #[serde(with = "recorded")]
    latency_us: Histogram<u64>,
    class_counts: Vec<u64>,
    labelled_rows: u64,
    correct: u64,
    abs_error: f64,
    squared_error: f64,
    probability_rows: u64,
    log_loss: f64,
    brier: f64,
    /// Binary classifiers with probabilities: what the label-free estimate needs (`estimate`).
    #[serde(default)]
    confidence: Option<Box<estimate::Confidence>>,
}

#[derive(Default, Deserialize, Serialize)]
struct PairStats {
    /// Records in which both appear, and in which both answered.
    records: u64,
    complete: u64,
    rows: u64,
    agree: u64,
    correlation: Comoments,
    champion_classes: Vec<u64>,
    challenger_classes: Vec<u64>,
    champion_values: Ring,
    challenger_values: Ring,
    labelled: u64,
    champion_right: u64,
    challenger_right: u64,
    /// Discordant pairs: only the champion right, only the challenger right.
    only_champion: u64,
    only_challenger: u64,
    champion_abs_error: f64,
    challenger_abs_error: f64,
    champion_squared_error: f64,
    challenger_squared_error: f64,
    /// Paired differences, positive when the challenger did better: Σd, Σd² and (regression) recent d.
    d_sum: f64,
    d_squares: f64,
    differences: Ring,
    /// Largest mixture likelihood ratio seen so far (its inverse is the always-valid p-value).
    max_ln_ratio: f64,
    /// The same evidence counted only from labels that joined since the champion last changed:
    /// what the policy decides on, so a decision never rests on evidence an earlier one used.
    fresh: Fresh,
    /// The labelled evidence per slice of the requests (`[models.<name>.slices]`), in the order the
    /// slices first came; at most `MAX_SLICES` (the rest counted in `other`).
    #[serde(default)]
    slices: Vec<(String, SliceStats)>,
}

/// Distinct slices a pair keeps, whatever the records say: the gateway bounds them per replica
/// (`max_slices`), and this bounds what a fleet's replicas or old logs can add together.
const MAX_SLICES: usize = 256;

/// One slice's labelled pairs.
#[derive(Clone, Default, Deserialize, Serialize)]
struct SliceStats {
    labelled: u64,
    champion_right: u64,
    challenger_right: u64,
    only_champion: u64,
    only_challenger: u64,
    champion_abs_error: f64,
    challenger_abs_error: f64,
    /// Paired differences, positive when the challenger did better: Σd and Σd².
    d_sum: f64,
    d_squares: f64,
}

impl SliceStats {
    fn push(&mut self, d: f64) {
        self.labelled += 1;
        self.d_sum += d;
        self.d_squares += d * d;
    }
}

impl PairStats {
    /// Where the stats of `slice` are, made on first use; past `MAX_SLICES`, those of `other`.
    fn slice_index(&mut self, slice: &str) -> usize {
        let key = if self.slices.len() >= MAX_SLICES && !self.slices.iter().any(|(k, _)| k == slice) {
            crate::traffic::OTHER_SLICE
        } else {
            slice
        };
        match self.slices.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                self.slices.push((key.to_owned(), SliceStats::default()));
                self.slices.len() - 1
            }
        }
    }
}

/// The paired evidence since the champion last changed.
#[derive(Clone, Copy, Default, Deserialize, Serialize)]
struct Fresh {
    labelled: u64,
    only_champion: u64,
    only_challenger: u64,
    d_sum: f64,
    d_squares: f64,
    max_ln_ratio: f64,
}

impl Fresh {
    fn push(&mut self, d: f64, only_champion: bool, only_challenger: bool) {
        self.labelled += 1;
        self.only_champion += u64::from(only_champion);
        self.only_challenger += u64::from(only_challenger);
        self.d_sum += d;
        self.d_squares += d * d;
    }
}

/// The most recent values, at most `SAMPLE_CAPACITY`.
#[derive(Default, Deserialize, Serialize)]
struct Ring(VecDeque<f64>);

impl Ring {
    fn push(&mut self, value: f64) {
        if self.0.len() == SAMPLE_CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back(value);
    }

    fn values(&self) -> Vec<f64> {
        self.0.iter().copied().collect()
    }
}

/// Running means and co-moments (Welford), for a correlation that does not lose digits.
#[derive(Default, Deserialize, Serialize)]
struct Comoments {
    n: f64,
    mean_a: f64,
    mean_b: f64,
    m_aa: f64,
    m_bb: f64,
    m_ab: f64,
}

impl Comoments {
    fn push(&mut self, a: f64, b: f64) {
        self.n += 1.0;
        let (da, db) = (a - self.mean_a, b - self.mean_b);
        self.mean_a += da / self.n;
        self.mean_b += db / self.n;
        self.m_aa += da * (a - self.mean_a);
        self.m_bb += db * (b - self.mean_b);
        self.m_ab += da * (b - self.mean_b);
    }

    fn correlation(&self) -> Option<f64> {
        (self.n >= 2.0 && self.m_aa > 0.0 && self.m_bb > 0.0).then(|| self.m_ab / (self.m_aa * self.m_bb).sqrt())
    }
}

impl ModelStats {
    /// Correct labelled rows per labelled row (a classifier's), once any is labelled.
    fn accuracy(&self) -> Option<f64> {
        (self.labelled_rows > 0).then(|| self.correct as f64 / self.labelled_rows as f64)
    }

    /// Absolute error per labelled row (a regression's), once any is labelled.
    fn mae(&self) -> Option<f64> {
        (self.labelled_rows > 0).then(|| self.abs_error / self.labelled_rows as f64)
    }

    fn new(classes: usize) -> Self {
        Self {
            records: 0,
            statuses: [0; 5],
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            class_counts: vec![0; classes],
            labelled_rows: 0,
            correct: 0,
            abs_error: 0.0,
            squared_error: 0.0,
            probability_rows: 0,
            log_loss: 0.0,
            brier: 0.0,
            confidence: None,
        }
    }
}

impl Comparison {
    /// Judges with `settings` from now on (a checkpoint read back takes the configuration's).
    pub fn set_settings(&mut self, settings: CompareSettings) {
        self.settings = settings;
    }

    pub fn new(model: impl Into<String>, task: Task, settings: CompareSettings) -> Self {
        Self {
            model: model.into(),
            task,
            settings,
            records: 0,
            labelled_records: 0,
            mismatched_truths: 0,
            models: BTreeMap::new(),
            pairs: Vec::new(),
            champion: None,
            changes: 0,
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The label-free part of an observation: statuses, latency, agreement, prediction shares.
    pub fn add(&mut self, observation: &Observation) {
        self.records += 1;
        let classes = classes_of(&self.task);
        let class_index = |label: i64| classes.iter().position(|c| *c == label);
        for result in &observation.results {
            if !self.models.contains_key(&result.version) {
                self.models.insert(result.version.clone(), ModelStats::new(classes.len()));
            }
            let stats = self.models.get_mut(&result.version).expect("inserted above");
            stats.records += 1;
            stats.statuses[result.status.index()] += 1;
            if let Some(ms) = result.latency_ms {
                let _ = stats.latency_us.record(((ms * 1e3).round() as u64).max(1));
            }
            for prediction in &result.predictions {
                if let Prediction::Class { label, probabilities } = prediction
                    && let Some(i) = class_index(*label)
                {
                    stats.class_counts[i] += 1;
                    // Binary with probabilities: the label-free estimate's row.
                    if let (2, Some(p)) = (classes.len(), probabilities) {
                        stats.confidence.get_or_insert_default().push(i == 1, p[1]);
                    }
                }
            }
        }
        let Some(champion) = observation.results.iter().find(|r| r.role == Role::Champion) else { return };
        if self.champion.as_ref() != Some(&champion.version) {
            if self.champion.is_some() {
                self.changes += 1;
                for (_, pair) in &mut self.pairs {
                    pair.fresh = Fresh::default();
                }
            }
            self.champion = Some(champion.version.clone());
        }
        let tolerance = self.settings.agreement_tolerance;
        for challenger in observation.results.iter().filter(|r| r.role == Role::Challenger) {
            let pair =
                match self.pairs.iter().position(|((a, b), _)| *a == champion.version && *b == challenger.version) {
                    Some(i) => &mut self.pairs[i].1,
                    None => {
                        let key = (champion.version.clone(), challenger.version.clone());
                        self.pairs.push((key, PairStats::new(classes.len())));
                        &mut self.pairs.last_mut().expect("just pushed").1
                    }
                };
            pair.records += 1;
            if champion.status != Status::Ok || challenger.status != Status::Ok {
                continue;
            }
            pair.complete += 1;
            for (a, b) in champion.predictions.iter().zip(&challenger.predictions) {
                pair.rows += 1;
                match (a, b) {
                    (Prediction::Class { label: a, .. }, Prediction::Class { label: b, .. }) => {
                        pair.agree += u64::from(a == b);
                        if let Some(i) = class_index(*a) {
                            pair.champion_classes[i] += 1;
                        }
                        if let Some(i) = class_index(*b) {
                            pair.challenger_classes[i] += 1;
                        }
                    }
                    (Prediction::Value(a), Prediction::Value(b)) => {
                        pair.agree += u64::from((a - b).abs() <= tolerance * a.abs().max(b.abs()));
                        pair.correlation.push(*a, *b);
                        pair.champion_values.push(*a);
                        pair.challenger_values.push(*b);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The labelled part: each model's accuracy or error, and the paired differences. Call once
    /// per request, after `add` of its observation.
    pub fn add_truth(&mut self, observation: &Observation, truth: &Truth) {
        let rows = observation.results.iter().find(|r| r.status == Status::Ok).map_or(0, |r| r.predictions.len());
        if rows != truth.0.len() {
            self.mismatched_truths += 1;
            return;
        }
        self.labelled_records += 1;
        let classes = classes_of(&self.task);
        for result in observation.results.iter().filter(|r| r.status == Status::Ok) {
            let Some(stats) = self.models.get_mut(&result.version) else { continue };
            for (prediction, &y) in result.predictions.iter().zip(&truth.0) {
                stats.labelled_rows += 1;
                match prediction {
                    Prediction::Class { label, probabilities } => {
                        stats.correct += u64::from(*label as f64 == y);
                        if let Some(p) = probabilities
                            && let Some(k) = classes.iter().position(|c| *c as f64 == y)
                        {
                            stats.probability_rows += 1;
                            stats.log_loss -= p[k].clamp(1e-15, 1.0).ln();
                            stats.brier += brier(p, k);
                            if classes.len() == 2
                                && let Some(confidence) = &mut stats.confidence
                            {
                                let positive = classes.get(1).is_some_and(|c| *c == *label);
                                confidence.push_labelled(positive, p[1], k == 1, &observation.request_id);
                            }
                        }
                    }
                    Prediction::Value(v) => {
                        stats.abs_error += (v - y).abs();
                        stats.squared_error += (v - y) * (v - y);
                    }
                }
            }
        }
        let Some(champion) = observation.results.iter().find(|r| r.role == Role::Champion && r.status == Status::Ok)
        else {
            return;
        };
        for challenger in observation.results.iter().filter(|r| r.role == Role::Challenger && r.status == Status::Ok) {
            let Some((_, pair)) =
                self.pairs.iter_mut().find(|((a, b), _)| *a == champion.version && *b == challenger.version)
            else {
                continue;
            };
            let slice = observation.slice.as_deref().map(|s| pair.slice_index(s));
            for ((a, b), &y) in champion.predictions.iter().zip(&challenger.predictions).zip(&truth.0) {
                pair.labelled += 1;
                match (a, b) {
                    (Prediction::Class { label: a, .. }, Prediction::Class { label: b, .. }) => {
                        let (ra, rb) = (*a as f64 == y, *b as f64 == y);
                        pair.champion_right += u64::from(ra);
                        pair.challenger_right += u64::from(rb);
                        pair.only_champion += u64::from(ra && !rb);
                        pair.only_challenger += u64::from(rb && !ra);
                        let d = f64::from(u8::from(rb)) - f64::from(u8::from(ra));
                        pair.d_sum += d;
                        pair.d_squares += d * d;
                        pair.fresh.push(d, ra && !rb, rb && !ra);
                        if let Some(i) = slice {
                            let slice = &mut pair.slices[i].1;
                            slice.champion_right += u64::from(ra);
                            slice.challenger_right += u64::from(rb);
                            slice.only_champion += u64::from(ra && !rb);
                            slice.only_challenger += u64::from(rb && !ra);
                            slice.push(d);
                        }
                    }
                    (Prediction::Value(a), Prediction::Value(b)) => {
                        let (ea, eb) = ((a - y).abs(), (b - y).abs());
                        pair.champion_abs_error += ea;
                        pair.challenger_abs_error += eb;
                        pair.champion_squared_error += (a - y) * (a - y);
                        pair.challenger_squared_error += (b - y) * (b - y);
                        pair.d_sum += ea - eb;
                        pair.d_squares += (ea - eb) * (ea - eb);
                        pair.differences.push(ea - eb);
                        pair.fresh.push(ea - eb, false, false);
                        if let Some(i) = slice {
                            let slice = &mut pair.slices[i].1;
                            slice.champion_abs_error += ea;
                            slice.challenger_abs_error += eb;
                            slice.push(ea - eb);
                        }
                    }
                    _ => {}
                }
            }
            let classification = matches!(self.task, Task::Classification { .. });
            let total = Fresh {
                labelled: pair.labelled,
                only_champion: pair.only_champion,
                only_challenger: pair.only_challenger,
                d_sum: pair.d_sum,
                d_squares: pair.d_squares,
                max_ln_ratio: 0.0,
            };
            pair.max_ln_ratio = pair.max_ln_ratio.max(ln_ratio(&total, classification));
            pair.fresh.max_ln_ratio = pair.fresh.max_ln_ratio.max(ln_ratio(&pair.fresh, classification));
        }
    }
}

impl Comparison {
    /// The statistics of one (champion, challenger) pair, if records named it.
    fn pair(&self, champion: &VersionId, challenger: &VersionId) -> Option<&PairStats> {
        self.pairs.iter().find(|((a, b), _)| a == champion && b == challenger).map(|(_, p)| p)
    }
}

impl PairStats {
    fn new(classes: usize) -> Self {
        Self { champion_classes: vec![0; classes], challenger_classes: vec![0; classes], ..Self::default() }
    }
}

/// The mixture SPRT's log likelihood ratio against "no difference", on `evidence` now.
fn ln_ratio(evidence: &Fresh, classification: bool) -> f64 {
    if classification {
        stats::sequential::ln_bernoulli_mixture(evidence.only_challenger, evidence.only_champion)
    } else {
        let n = evidence.labelled as f64;
        if n < 2.0 {
            return 0.0;
        }
        let mean = evidence.d_sum / n;
        let variance = (evidence.d_squares - evidence.d_sum * mean) / (n - 1.0);
        // Prior on the mean difference: a tenth of a standard deviation (an effect worth finding).
        stats::sequential::ln_normal_mixture(evidence.labelled, mean, variance, 0.01 * variance)
    }
}

/// A latency histogram as its recorded buckets (value, count): recorded again, each value lands
/// in the bucket it came from, so the histogram read back is the one written.
mod recorded {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(histogram: &Histogram<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        let buckets: Vec<(u64, u64)> =
            histogram.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        buckets.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Histogram<u64>, D::Error> {
        let buckets = Vec::<(u64, u64)>::deserialize(deserializer)?;
        let mut histogram = crate::compare::ModelStats::new(0).latency_us;
        for (value, count) in buckets {
            histogram.record_n(value, count).map_err(serde::de::Error::custom)?;
        }
        Ok(histogram)
    }
}

/// The task's classes, in the order probabilities are given; none for regression.
fn classes_of(task: &Task) -> &[i64] {
    match task {
        Task::Classification { classes, .. } => classes,
        Task::Regression { .. } => &[],
    }
}

/// Brier score of one row: binary tasks use the positive class's probability (as scikit-learn's
/// `brier_score_loss`); with more classes, the sum over classes.
fn brier(probabilities: &[f64], truth: usize) -> f64 {
    if probabilities.len() == 2 {
        let y = if truth == 1 { 1.0 } else { 0.0 };
        (probabilities[1] - y).powi(2)
    } else {
        probabilities.iter().enumerate().map(|(k, p)| (p - if k == truth { 1.0 } else { 0.0 }).powi(2)).sum()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod simulations;
