//! One deployment's bounded drift state (`Watch`): the recent rows' feature and prediction values,
//! the champion's recent labelled scores, and the alert state, evaluated into a `DriftReport`.
//!
//! Invariant: bounded. Rows are kept while either window needs them (the last `window_rows`, or
//! those of the last `window_s` seconds) and never more than `max_window_rows`; past that, the time
//! window covers less time (its row count says so).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::profile::{Profile, SeriesKind};
use super::report::{ConceptReport, DriftReport, Level, SeriesDrift, State, WindowReport};
use super::{DriftSettings, Thresholds, stats};
use crate::model::Tensor;
use crate::registry::ModelVersion;
use crate::repository::{Task, VersionId};

/// Entering or leaving the alert state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Entered,
    Left,
}

impl Transition {
    /// Alerting starts at `Alert` and ends only at `Ok`: a series hovering around the alert
    /// threshold keeps the alert rather than sending an event each time it crosses. No data, no change.
    pub fn of(alerting: bool, state: State) -> Option<Self> {
        match (alerting, state) {
            (false, State::Alert) => Some(Self::Entered),
            (true, State::Ok) => Some(Self::Left),
            _ => None,
        }
    }
}

pub struct Watch {
    model: String,
    version: VersionId,
    profile: Option<Profile>,
    /// Per series, in `Profile::series` order: (is an output, tensor index in the signature, column).
    locations: Vec<(bool, usize, Option<usize>)>,
    /// `accuracy` or `mae`, and the manifest's holdout figure.
    concept_metric: (&'static str, Option<f64>),
    thresholds: Thresholds,
    rows: VecDeque<(Instant, Box<[f64]>)>,
    labelled: VecDeque<(Instant, f64)>,
    rows_seen: u64,
    evaluations: u64,
    alerting: bool,
}

impl Watch {
    /// Watches `version`'s traffic against its profile. `alerting` carries the deployment's alert
    /// state over from the version it replaces.
    pub fn new(version: &ModelVersion, thresholds: Thresholds, alerting: bool) -> Self {
        let manifest = version.manifest();
        let profile = manifest.profile.clone().filter(|p| match p.check(&manifest.inputs, &manifest.outputs) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(model = version.name(), version = %version.version(), %error, "drift: the profile does not fit the model; no drift for this version");
                false
            }
        });
        let locations = profile
            .iter()
            .flat_map(|p| p.series())
            .map(|(series, kind)| {
                let specs = if kind == SeriesKind::Feature { &manifest.inputs } else { &manifest.outputs };
                let index = specs.iter().position(|s| s.name == series.tensor).expect("checked by Profile::check");
                (kind == SeriesKind::Prediction, index, series.column)
            })
            .collect();
        let metric = match manifest.task {
            Task::Classification { .. } => "accuracy",
            Task::Regression { .. } => "mae",
        };
        Self {
            model: version.name().to_owned(),
            version: version.version().clone(),
            concept_metric: (metric, manifest.holdout_metrics.get(metric).copied()),
            profile,
            locations,
            thresholds,
            rows: VecDeque::new(),
            labelled: VecDeque::new(),
            rows_seen: 0,
            evaluations: 0,
            alerting,
        }
    }

    pub fn version(&self) -> &VersionId {
        &self.version
    }

    pub fn alerting(&self) -> bool {
        self.alerting
    }

    /// Takes each row's feature and prediction values. A value a tensor lacks is kept as NaN and
    /// left out of that series' statistics.
    pub fn add_rows(&mut self, at: Instant, inputs: &[Tensor], outputs: &[Tensor], settings: &DriftSettings) {
        if self.profile.is_none() {
            return;
        }
        let rows = inputs.first().map_or(0, Tensor::rows);
        for row in 0..rows {
            let values = self
                .locations
                .iter()
                .map(|&(output, index, column)| {
                    let tensor = if output { outputs.get(index) } else { inputs.get(index) };
                    tensor.and_then(|t| value(t, row, column)).unwrap_or(f64::NAN)
                })
                .collect();
            self.rows.push_back((at, values));
        }
        self.rows_seen += rows as u64;
        trim(&mut self.rows, at, settings);
    }

    /// Takes the champion's per-row scores of one labelled request (1/0 correct, or absolute error).
    pub fn add_labelled(&mut self, at: Instant, scores: &[f64], settings: &DriftSettings) {
        self.labelled.extend(scores.iter().map(|&s| (at, s)));
        trim(&mut self.labelled, at, settings);
    }

    /// The report as of `now`, and the alert transition it makes, if any.
    pub fn evaluate(&mut self, now: Instant, settings: &DriftSettings) -> (DriftReport, Option<Transition>) {
        trim(&mut self.rows, now, settings);
        trim(&mut self.labelled, now, settings);
        self.evaluations += 1;
        let windows: Vec<WindowReport> = match &self.profile {
            Some(profile) => windows_of(&self.rows, now, settings)
                .into_iter()
                .map(|(window, limit, start)| {
                    let rows = self.rows.range(start..).map(|(_, values)| &values[..]);
                    let series = measure(profile, rows, &self.thresholds);
                    let n = (self.rows.len() - start) as u64;
                    WindowReport {
                        window: window.into(),
                        limit,
                        rows: n,
                        judged: n >= settings.min_rows as u64,
                        series,
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        let judged = || windows.iter().filter(|w| w.judged).flat_map(|w| &w.series);
        let state = judged().map(|s| s.level).max().map_or(State::InsufficientData, |level| match level {
            Level::Ok => State::Ok,
            Level::Warn => State::Warn,
            Level::Alert => State::Alert,
        });
        let transition = Transition::of(self.alerting, state);
        self.alerting = match transition {
            Some(Transition::Entered) => true,
            Some(Transition::Left) => false,
            None => self.alerting,
        };
        let names_at = |level: Level| -> Vec<String> {
            let mut names: Vec<String> = Vec::new();
            for s in judged().filter(|s| s.level == level) {
                if !names.contains(&s.name) {
                    names.push(s.name.clone());
                }
            }
            names
        };
        let drifted = names_at(Level::Alert);
        let warned = names_at(Level::Warn).into_iter().filter(|n| !drifted.contains(n)).collect();
        let concept = windows_of(&self.labelled, now, settings)
            .into_iter()
            .map(|(window, _, start)| {
                let n = self.labelled.len() - start;
                let sum: f64 = self.labelled.range(start..).map(|(_, s)| s).sum();
                ConceptReport {
                    window: window.into(),
                    labelled_rows: n as u64,
                    metric: self.concept_metric.0.into(),
                    value: (n > 0).then(|| sum / n as f64),
                    holdout: self.concept_metric.1,
                }
            })
            .collect();
        let report = DriftReport {
            model: self.model.clone(),
            version: Some(self.version.to_string()),
            profile: self.profile.is_some(),
            state,
            alerting: self.alerting,
            thresholds: self.thresholds,
            min_rows: settings.min_rows,
            evaluations: self.evaluations,
            rows_seen: self.rows_seen,
            drifted,
            warned,
            windows,
            concept,
        };
        (report, transition)
    }
}

/// Element (`row`, `column`) of a rows × columns tensor, or `row` of a one-per-row tensor.
fn value(tensor: &Tensor, row: usize, column: Option<usize>) -> Option<f64> {
    let rows = tensor.rows().max(1);
    let width = tensor.data().len() / rows;
    match column {
        Some(c) if c < width => tensor.data().get_f64(row * width + c),
        None if width == 1 => tensor.data().get_f64(row),
        _ => None,
    }
}

/// Drops what neither window needs any more, and anything past the hard bound.
fn trim<T>(queue: &mut VecDeque<(Instant, T)>, now: Instant, settings: &DriftSettings) {
    let horizon = now.checked_sub(Duration::from_secs(settings.window_s));
    while queue.len() > settings.window_rows && horizon.is_some_and(|h| queue.front().is_some_and(|(at, _)| *at < h)) {
        queue.pop_front();
    }
    while queue.len() > settings.max_window_rows.max(settings.window_rows) {
        queue.pop_front();
    }
}

/// The two windows over `queue`: name, description and first index.
fn windows_of<T>(
    queue: &VecDeque<(Instant, T)>,
    now: Instant,
    settings: &DriftSettings,
) -> [(&'static str, String, usize); 2] {
    let by_count = queue.len().saturating_sub(settings.window_rows);
    let by_time = match now.checked_sub(Duration::from_secs(settings.window_s)) {
        Some(horizon) => queue.partition_point(|(at, _)| *at < horizon),
        None => 0,
    };
    [
        ("rows", format!("last {} rows", settings.window_rows), by_count),
        ("time", format!("last {} s", settings.window_s), by_time),
    ]
}

/// PSI and KS of every series over one window's rows.
fn measure<'a>(
    profile: &Profile,
    rows: impl Iterator<Item = &'a [f64]> + Clone,
    thresholds: &Thresholds,
) -> Vec<SeriesDrift> {
    profile
        .series()
        .enumerate()
        .map(|(j, (series, kind))| {
            let d = &series.distribution;
            let mut counts = vec![0u64; d.bins()];
            let mut values = Vec::new();
            for row in rows.clone() {
                let v = row[j];
                if v.is_nan() {
                    continue;
                }
                counts[d.bin(v)] += 1;
                values.push(v);
            }
            let psi = stats::psi((0..d.bins()).map(|i| d.expected(i)), &counts);
            let ks = d.quantiles().and_then(|q| {
                values.sort_unstable_by(f64::total_cmp);
                stats::ks(&values, |x| stats::quantile_cdf(q, x))
            });
            let level = psi.map_or(Level::Ok, |p| Level::of(p, thresholds));
            SeriesDrift { name: series.name.clone(), kind, psi, ks, level }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_ends_only_when_every_series_is_back_under_warn() {
        let mut alerting = false;
        let mut events = Vec::new();
        let states = [
            State::InsufficientData,
            State::Warn,
            State::Alert,
            State::Warn,
            State::Alert,
            State::InsufficientData,
            State::Ok,
            State::Ok,
        ];
        for state in states {
            if let Some(t) = Transition::of(alerting, state) {
                alerting = t == Transition::Entered;
                events.push(t);
            }
        }
        assert_eq!(events, [Transition::Entered, Transition::Left]);
    }

    #[test]
    fn windows_keep_what_either_needs_and_no_more_than_the_bound() {
        let settings = DriftSettings { window_rows: 3, window_s: 10, max_window_rows: 5, ..Default::default() };
        let start = Instant::now();
        let mut queue = VecDeque::new();
        for i in 0..8u64 {
            queue.push_back((start + Duration::from_secs(i), i));
        }
        let now = start + Duration::from_secs(8);
        trim(&mut queue, now, &settings);
        // All eight are within 10 s, but the bound keeps five.
        assert_eq!(queue.iter().map(|(_, i)| *i).collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
        let later = start + Duration::from_secs(15);
        trim(&mut queue, later, &settings);
        // Rows 3 and 4 are older than 10 s and the count window needs only three.
        assert_eq!(queue.len(), 3);
        let [(_, _, by_count), (_, _, by_time)] = windows_of(&queue, later, &settings);
        assert_eq!((by_count, by_time), (0, 0));
        let [(_, _, by_count), (_, _, by_time)] = windows_of(&queue, start + Duration::from_secs(17), &settings);
        // Two seconds on, rows 5 and 6 have left the time window; the count window keeps them.
        assert_eq!((by_count, by_time), (0, 2));
    }
}
