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
use crate::repository::{Manifest, Task, VersionId};

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
    /// Empty (no series) without a profile.
    rows: Columns,
    labelled: VecDeque<(Instant, f64)>,
    rows_seen: u64,
    evaluations: u64,
    alerting: bool,
}

impl Watch {
    /// Watches the traffic of the version `manifest` describes against its profile. `alerting`
    /// carries the deployment's alert state over from the version it replaces.
    pub fn new(manifest: &Manifest, thresholds: Thresholds, alerting: bool) -> Self {
        let profile = manifest.profile.clone().filter(|p| match p.check(&manifest.inputs, &manifest.outputs) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(model = manifest.name, version = %manifest.version, %error, "drift: the profile does not fit the model; no drift for this version");
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
            model: manifest.name.clone(),
            version: manifest.version.clone(),
            concept_metric: (metric, manifest.holdout_metrics.get(metric).copied()),
            rows: Columns::new(profile.as_ref()),
            profile,
            locations,
            thresholds,
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
        let Some(profile) = &self.profile else { return };
        let rows = inputs.first().map_or(0, Tensor::rows);
        for row in 0..rows {
            let values = self.locations.iter().map(|&(output, index, column)| {
                let tensor = if output { outputs.get(index) } else { inputs.get(index) };
                tensor.and_then(|t| value(t, row, column)).unwrap_or(f64::NAN)
            });
            self.rows.push(at, values, profile, settings);
        }
        self.rows_seen += rows as u64;
    }

    /// Takes the champion's per-row scores of one labelled request (1/0 correct, or absolute error).
    pub fn add_labelled(&mut self, at: Instant, scores: &[f64], settings: &DriftSettings) {
        self.labelled.extend(scores.iter().map(|&s| (at, s)));
        trim(&mut self.labelled, at, settings);
    }

    /// The report as of `now`, and the alert transition it makes, if any.
    pub fn evaluate(&mut self, now: Instant, settings: &DriftSettings) -> (DriftReport, Option<Transition>) {
        self.rows.expire(now, settings);
        trim(&mut self.labelled, now, settings);
        self.evaluations += 1;
        let windows: Vec<WindowReport> = match &self.profile {
            Some(profile) => self
                .rows
                .windows(settings)
                .into_iter()
                .map(|window| {
                    let series = self.rows.measure(profile, &window, &self.thresholds);
                    WindowReport {
                        window: window.name.into(),
                        limit: window.limit,
                        rows: window.rows,
                        judged: window.rows >= settings.min_rows as u64,
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

/// A missing value's bin.
const MISSING: u16 = u16::MAX;

/// The recent rows, one column per series, with each window's bin counts kept up to date as rows
/// enter and leave it: a PSI costs as much as the series has bins, however many rows the window
/// holds. Rows are kept while either window needs them, and never more than `max_window_rows`.
struct Columns {
    /// Index (counted since the watch began) of the oldest row kept.
    first: u64,
    at: VecDeque<Instant>,
    values: Vec<VecDeque<f64>>,
    bins: Vec<VecDeque<u16>>,
    /// Per series, per bin: rows of the count window (the last `window_rows`).
    by_count: Vec<Vec<u64>>,
    /// The same for the time window, which starts at row `time_start`.
    by_time: Vec<Vec<u64>>,
    time_start: u64,
}

/// One window as `Columns::windows` describes it.
struct Window {
    name: &'static str,
    limit: String,
    /// Index of its oldest row.
    start: u64,
    rows: u64,
    time: bool,
}

impl Columns {
    fn new(profile: Option<&Profile>) -> Self {
        let bins: Vec<usize> = profile.iter().flat_map(|p| p.series()).map(|(s, _)| s.distribution.bins()).collect();
        let counts = || bins.iter().map(|&n| vec![0; n]).collect();
        Self {
            first: 0,
            at: VecDeque::new(),
            values: vec![VecDeque::new(); bins.len()],
            bins: vec![VecDeque::new(); bins.len()],
            by_count: counts(),
            by_time: counts(),
            time_start: 0,
        }
    }

    fn end(&self) -> u64 {
        self.first + self.at.len() as u64
    }

    fn push(&mut self, at: Instant, values: impl Iterator<Item = f64>, profile: &Profile, settings: &DriftSettings) {
        let index = self.end();
        self.at.push_back(at);
        for (j, ((series, _), v)) in profile.series().zip(values).enumerate() {
            let bin = if v.is_nan() { MISSING } else { series.distribution.bin(v) as u16 };
            self.values[j].push_back(v);
            self.bins[j].push_back(bin);
            if bin != MISSING {
                self.by_count[j][usize::from(bin)] += 1;
                self.by_time[j][usize::from(bin)] += 1;
            }
        }
        // The row `window_rows` back leaves the count window (it is still kept: see `expire`).
        if let Some(leaving) = index.checked_sub(settings.window_rows as u64) {
            self.uncount(leaving, false);
        }
        self.expire(at, settings);
    }

    /// Takes row `index` out of the count window's or the time window's counts.
    fn uncount(&mut self, index: u64, time: bool) {
        let i = (index - self.first) as usize;
        let counts = if time { &mut self.by_time } else { &mut self.by_count };
        for (j, bins) in self.bins.iter().enumerate() {
            let bin = bins[i];
            if bin != MISSING {
                counts[j][usize::from(bin)] -= 1;
            }
        }
    }

    /// Ends the time window at `now − window_s`, then drops the rows neither window needs and any
    /// beyond the bound (taking them out of the time window first).
    fn expire(&mut self, now: Instant, settings: &DriftSettings) {
        if let Some(horizon) = now.checked_sub(Duration::from_secs(settings.window_s)) {
            while self.time_start < self.end() && self.at[(self.time_start - self.first) as usize] < horizon {
                self.uncount(self.time_start, true);
                self.time_start += 1;
            }
        }
        let needed = |c: &Self| c.at.len() > settings.window_rows && c.first < c.time_start;
        let bound = settings.max_window_rows.max(settings.window_rows);
        while needed(self) || self.at.len() > bound {
            if self.first >= self.time_start {
                self.uncount(self.first, true);
                self.time_start = self.first + 1;
            }
            self.at.pop_front();
            for column in &mut self.values {
                column.pop_front();
            }
            for column in &mut self.bins {
                column.pop_front();
            }
            self.first += 1;
        }
    }

    fn windows(&self, settings: &DriftSettings) -> [Window; 2] {
        let end = self.end();
        let by_count = end - (self.at.len().min(settings.window_rows) as u64);
        [
            Window {
                name: "rows",
                limit: format!("last {} rows", settings.window_rows),
                start: by_count,
                rows: end - by_count,
                time: false,
            },
            Window {
                name: "time",
                limit: format!("last {} s", settings.window_s),
                start: self.time_start,
                rows: end - self.time_start,
                time: true,
            },
        ]
    }

    /// PSI (from the window's counts) and KS (from its values, sorted) of every series.
    fn measure(&self, profile: &Profile, window: &Window, thresholds: &Thresholds) -> Vec<SeriesDrift> {
        let counts = if window.time { &self.by_time } else { &self.by_count };
        let from = (window.start - self.first) as usize;
        let mut sorted = Vec::with_capacity(window.rows as usize);
        profile
            .series()
            .enumerate()
            .map(|(j, (series, kind))| {
                let d = &series.distribution;
                let psi = stats::psi((0..d.bins()).map(|i| d.expected(i)), &counts[j]);
                let ks = d.quantiles().and_then(|q| {
                    sorted.clear();
                    sorted.extend(self.values[j].range(from..).filter(|v| !v.is_nan()));
                    sorted.sort_unstable_by(f64::total_cmp);
                    stats::ks(&sorted, |x| stats::quantile_cdf(q, x))
                });
                let level = psi.map_or(Level::Ok, |p| Level::of(p, thresholds));
                SeriesDrift { name: series.name.clone(), kind, psi, ks, level }
            })
            .collect()
    }
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

    fn profile() -> Profile {
        use super::super::profile::{Distribution, Series};
        let series =
            |name: &str, distribution| Series { name: name.into(), tensor: "x".into(), column: None, distribution };
        Profile {
            rows: 10,
            features: vec![
                series(
                    "numeric",
                    Distribution::Numeric {
                        edges: vec![1.0, 2.0],
                        shares: vec![0.3, 0.4, 0.3],
                        quantiles: vec![0.0, 1.5, 3.0],
                    },
                ),
                series("categorical", Distribution::Categorical { values: vec![0.0, 1.0], shares: vec![0.5, 0.5] }),
            ],
            predictions: vec![],
        }
    }

    proptest::proptest! {
        /// The counts kept incrementally equal the counts of each window's rows, recounted.
        #[test]
        fn window_counts_are_the_counts_of_their_rows(
            rows in proptest::collection::vec((0u64..4, proptest::option::of(0.0f64..3.0), 0u8..3), 1..120),
            window_rows in 1usize..12, window_s in 1u64..20, extra in 0usize..10,
        ) {
            let settings = DriftSettings { window_rows, window_s, max_window_rows: window_rows + extra, ..Default::default() };
            let profile = profile();
            let mut columns = Columns::new(Some(&profile));
            let start = Instant::now();
            let mut now = start;
            let mut all: Vec<(Instant, [f64; 2])> = Vec::new();
            for (step, numeric, category) in rows {
                now += Duration::from_secs(step);
                let row = [numeric.unwrap_or(f64::NAN), f64::from(category)];
                all.push((now, row));
                columns.push(now, row.into_iter(), &profile, &settings);
                let recount = |rows: &[(Instant, [f64; 2])]| -> Vec<Vec<u64>> {
                    profile.series().enumerate().map(|(j, (s, _))| {
                        let mut counts = vec![0; s.distribution.bins()];
                        for (_, r) in rows.iter().filter(|(_, r)| !r[j].is_nan()) {
                            counts[s.distribution.bin(r[j])] += 1;
                        }
                        counts
                    }).collect()
                };
                let kept = &all[all.len().saturating_sub(settings.max_window_rows.max(window_rows))..];
                let last = &all[all.len().saturating_sub(window_rows)..];
                proptest::prop_assert_eq!(&columns.by_count, &recount(last));
                let horizon = now.checked_sub(Duration::from_secs(window_s));
                let recent: Vec<_> = kept.iter().copied().filter(|(at, _)| horizon.is_none_or(|h| *at >= h)).collect();
                proptest::prop_assert_eq!(&columns.by_time, &recount(&recent));
                let [count_window, time_window] = columns.windows(&settings);
                proptest::prop_assert_eq!(count_window.rows, last.len() as u64);
                proptest::prop_assert_eq!(time_window.rows, recent.len() as u64);
                proptest::prop_assert!(columns.at.len() <= settings.max_window_rows.max(window_rows));
            }
        }
    }
}
