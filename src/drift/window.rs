//! One deployment's bounded drift state (`Watch`): the recent rows' feature and prediction values,
//! the champion's recent labelled scores, and the alert state, evaluated into a `DriftReport`.
//!
//! Invariant: bounded. The count window keeps the last `window_rows` rows. The time window keeps
//! the rows of the last `window_s` seconds, at most `max_window_rows`, admitting at most
//! `max_window_rows / window_s` a second so that under any traffic it spans its whole time.
//! Labelled scores keep the last `window_rows`, or those of `window_s`, up to `max_window_rows`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::report::{ConceptReport, DriftReport, Level, SeriesDrift, State, WindowReport};
use super::{DriftSettings, Thresholds, stats};
use crate::model::{Tensor, TensorData};
use crate::repository::profile::{Profile, SeriesKind};
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
    /// The last `window_rows` rows (no series without a profile).
    by_count: WindowRows,
    /// The rows of the last `window_s` seconds, admitted evenly (see `TimeAdmission`).
    by_time: WindowRows,
    admission: TimeAdmission,
    /// Reused per row: its values and bins.
    scratch: (Vec<f64>, Vec<u16>),
    labelled: VecDeque<(Instant, f64)>,
    rows_seen: u64,
    evaluations: u64,
    alerting: bool,
    started: Instant,
}

/// What a checkpoint keeps of a `Watch`: each window's rows (their bins and counts are computed
/// again from the values), the labelled scores and the alert state; instants as ages in
/// milliseconds before the checkpoint.
#[derive(Deserialize, Serialize)]
pub struct WatchState {
    version: VersionId,
    by_count: Vec<(u64, Vec<f64>)>,
    by_time: Vec<(u64, Vec<f64>)>,
    labelled: Vec<(u64, f64)>,
    rows_seen: u64,
    evaluations: u64,
    alerting: bool,
}

impl WatchState {
    pub fn version(&self) -> &VersionId {
        &self.version
    }
}

impl Watch {
    /// The state to checkpoint, `now` being the checkpoint's time.
    pub fn save(&self, now: Instant) -> WatchState {
        let age = |at: &Instant| now.saturating_duration_since(*at).as_millis() as u64;
        let rows = |window: &WindowRows| {
            (0..window.len())
                .map(|i| (age(&window.at[i]), window.values.iter().map(|column| column[i]).collect()))
                .collect()
        };
        WatchState {
            version: self.version.clone(),
            by_count: rows(&self.by_count),
            by_time: rows(&self.by_time),
            labelled: self.labelled.iter().map(|(at, score)| (age(at), *score)).collect(),
            rows_seen: self.rows_seen,
            evaluations: self.evaluations,
            alerting: self.alerting,
        }
    }

    /// The watch a checkpoint held, for the version `manifest` describes (the caller checks it is the
    /// state's version); its ages counted back from `now`. Rows whose series no longer match the
    /// profile are left out.
    pub fn restore(manifest: &Manifest, thresholds: Thresholds, state: WatchState, now: Instant) -> Self {
        let mut watch = Self::new(manifest, thresholds, state.alerting);
        let at = |age: u64| now.checked_sub(Duration::from_millis(age)).unwrap_or(now);
        if let Some(profile) = &watch.profile {
            let series = profile.series().count();
            let bins_of = |values: &[f64]| -> Vec<u16> {
                profile
                    .series()
                    .zip(values)
                    .map(|((s, _), &v)| if v.is_nan() { MISSING } else { s.distribution.bin(v) as u16 })
                    .collect()
            };
            for (age, values) in state.by_count.iter().filter(|(_, v)| v.len() == series) {
                watch.by_count.push(at(*age), values, &bins_of(values));
            }
            for (age, values) in state.by_time.iter().filter(|(_, v)| v.len() == series) {
                watch.by_time.push(at(*age), values, &bins_of(values));
            }
        }
        watch.labelled = state.labelled.into_iter().map(|(age, score)| (at(age), score)).collect();
        (watch.rows_seen, watch.evaluations) = (state.rows_seen, state.evaluations);
        watch
    }

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
            by_count: WindowRows::new(profile.as_ref()),
            by_time: WindowRows::new(profile.as_ref()),
            admission: TimeAdmission::default(),
            scratch: (Vec::new(), Vec::new()),
            profile,
            locations,
            thresholds,
            labelled: VecDeque::new(),
            rows_seen: 0,
            evaluations: 0,
            alerting,
            started: Instant::now(),
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
        // Where each series' values are, found once per request rather than once per row.
        let columns: Vec<Option<Column>> = self
            .locations
            .iter()
            .map(|&(output, index, column)| {
                let tensor = if output { outputs.get(index) } else { inputs.get(index) };
                tensor.and_then(|t| Column::of(t, column))
            })
            .collect();
        for row in 0..rows {
            let values = columns.iter().map(|c| c.as_ref().and_then(|c| c.get(row)).unwrap_or(f64::NAN));
            let (values_of_row, bins) = &mut self.scratch;
            values_of_row.clear();
            values_of_row.extend(values);
            bins.clear();
            bins.extend(
                profile
                    .series()
                    .zip(values_of_row.iter())
                    .map(|((series, _), &v)| if v.is_nan() { MISSING } else { series.distribution.bin(v) as u16 }),
            );
            self.by_count.push(at, values_of_row, bins);
            if self.by_count.len() > settings.window_rows {
                self.by_count.pop_front();
            }
            if self.admission.admit(at, self.started, settings) {
                self.by_time.push(at, values_of_row, bins);
            }
            self.by_time.expire(at, settings);
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
        self.by_time.expire(now, settings);
        trim(&mut self.labelled, now, settings);
        self.evaluations += 1;
        let windows: Vec<WindowReport> = match &self.profile {
            Some(profile) => [
                ("rows", format!("last {} rows", settings.window_rows), &self.by_count),
                ("time", format!("last {} s", settings.window_s), &self.by_time),
            ]
            .into_iter()
            .map(|(window, limit, rows)| WindowReport {
                window: window.into(),
                limit,
                rows: rows.len() as u64,
                judged: rows.len() >= settings.min_rows,
                series: rows.measure(profile, &self.thresholds),
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
            snapshot: None,
        };
        (report, transition)
    }
}

/// One series' values in a tensor: column `column` of a rows × columns tensor, or a one-per-row
/// tensor's values.
struct Column<'a> {
    data: &'a TensorData,
    width: usize,
    column: usize,
}

impl<'a> Column<'a> {
    /// `None` when the tensor has no such column.
    fn of(tensor: &'a Tensor, column: Option<usize>) -> Option<Self> {
        let width = tensor.data().len() / tensor.rows().max(1);
        match column {
            Some(c) if c < width => Some(Self { data: tensor.data(), width, column: c }),
            None if width == 1 => Some(Self { data: tensor.data(), width, column: 0 }),
            _ => None,
        }
    }

    fn get(&self, row: usize) -> Option<f64> {
        self.data.get_f64(row * self.width + self.column)
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

/// One window's rows, one column per series, with the window's bin counts kept up to date as rows
/// enter and leave: a PSI costs as much as the series has bins, however many rows the window holds.
struct WindowRows {
    at: VecDeque<Instant>,
    values: Vec<VecDeque<f64>>,
    bins: Vec<VecDeque<u16>>,
    /// Per series, per bin.
    counts: Vec<Vec<u64>>,
}

impl WindowRows {
    fn new(profile: Option<&Profile>) -> Self {
        let bins: Vec<usize> = profile.iter().flat_map(|p| p.series()).map(|(s, _)| s.distribution.bins()).collect();
        Self {
            at: VecDeque::new(),
            values: vec![VecDeque::new(); bins.len()],
            bins: vec![VecDeque::new(); bins.len()],
            counts: bins.iter().map(|&n| vec![0; n]).collect(),
        }
    }

    fn len(&self) -> usize {
        self.at.len()
    }

    fn push(&mut self, at: Instant, values: &[f64], bins: &[u16]) {
        self.at.push_back(at);
        for (j, (&v, &bin)) in values.iter().zip(bins).enumerate() {
            self.values[j].push_back(v);
            self.bins[j].push_back(bin);
            if bin != MISSING {
                self.counts[j][usize::from(bin)] += 1;
            }
        }
    }

    fn pop_front(&mut self) {
        self.at.pop_front();
        for column in &mut self.values {
            column.pop_front();
        }
        for (j, column) in self.bins.iter_mut().enumerate() {
            if let Some(bin) = column.pop_front()
                && bin != MISSING
            {
                self.counts[j][usize::from(bin)] -= 1;
            }
        }
    }

    /// As a time window: drops rows older than `window_s` and any beyond `max_window_rows`.
    fn expire(&mut self, now: Instant, settings: &DriftSettings) {
        let horizon = now.checked_sub(Duration::from_secs(settings.window_s));
        while self.at.front().is_some_and(|at| horizon.is_some_and(|h| *at < h))
            || self.len() > settings.max_window_rows
        {
            self.pop_front();
        }
    }

    /// PSI (from the counts) and KS (from the values, sorted) of every series.
    fn measure(&self, profile: &Profile, thresholds: &Thresholds) -> Vec<SeriesDrift> {
        let mut sorted = Vec::with_capacity(self.len());
        profile
            .series()
            .enumerate()
            .map(|(j, (series, kind))| {
                let d = &series.distribution;
                let psi = stats::psi((0..d.bins()).map(|i| d.expected(i)), &self.counts[j]);
                let ks = d.quantiles().and_then(|q| {
                    sorted.clear();
                    sorted.extend(self.values[j].iter().filter(|v| !v.is_nan()));
                    sorted.sort_unstable_by(f64::total_cmp);
                    stats::ks(&sorted, |x| stats::quantile_cdf(q, x))
                });
                let level = psi.map_or(Level::Ok, |p| Level::of(p, thresholds));
                SeriesDrift { name: series.name.clone(), kind, psi, ks, level }
            })
            .collect()
    }
}

/// Which rows enter the time window: at most `max_window_rows / window_s` a second (at least one),
/// so that under any traffic it holds rows from across its whole span rather than the last few
/// seconds' worth.
#[derive(Default)]
struct TimeAdmission {
    second: u64,
    admitted: u64,
}

impl TimeAdmission {
    fn admit(&mut self, at: Instant, started: Instant, settings: &DriftSettings) -> bool {
        let second = at.saturating_duration_since(started).as_secs();
        if second != self.second {
            (self.second, self.admitted) = (second, 0);
        }
        let per_second = (settings.max_window_rows as u64 / settings.window_s.max(1)).max(1);
        if self.admitted >= per_second {
            return false;
        }
        self.admitted += 1;
        true
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

    /// A manifest whose profile watches both columns of a two-column FP64 input.
    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "name": "m", "version": "1", "sha256": "", "task": {"kind": "regression", "prediction_output": "y"},
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}], "outputs": [],
            "reference": {"tolerance": {"absolute": 0, "relative": 0}, "inputs": {}, "outputs": {}},
            "profile": {"rows": 10, "predictions": [], "features": [
                {"name": "numeric", "tensor": "x", "column": 0, "kind": "numeric",
                 "edges": [1.0, 2.0], "shares": [0.3, 0.4, 0.3], "quantiles": [0.0, 1.5, 3.0]},
                {"name": "categorical", "tensor": "x", "column": 1, "kind": "categorical",
                 "values": [0.0, 1.0], "shares": [0.5, 0.5]}]}
        }))
        .expect("a valid manifest")
    }

    /// Recounts a window's bins from its own rows.
    fn recount(window: &WindowRows, profile: &Profile) -> Vec<Vec<u64>> {
        profile
            .series()
            .enumerate()
            .map(|(j, (s, _))| {
                let mut counts = vec![0; s.distribution.bins()];
                for v in window.values[j].iter().filter(|v| !v.is_nan()) {
                    counts[s.distribution.bin(*v)] += 1;
                }
                counts
            })
            .collect()
    }

    proptest::proptest! {
        /// Each window's counts are the counts of its rows; the count window is the last rows; the
        /// time window holds only rows of its span, at most its bound, admitted evenly.
        #[test]
        fn windows_hold_what_they_say_and_count_it(
            rows in proptest::collection::vec((0u64..3, proptest::option::of(0.0f64..3.0), 0u8..3), 1..150),
            window_rows in 1usize..12, window_s in 1u64..6, max_window_rows in 1usize..20,
        ) {
            let settings = DriftSettings { window_rows, window_s, max_window_rows, ..Default::default() };
            let manifest = manifest();
            let profile = manifest.profile.clone().unwrap();
            let mut watch = Watch::new(&manifest, Thresholds::default(), false);
            let mut now = watch.started;
            let mut all = Vec::new();
            for (step, numeric, category) in rows {
                now += Duration::from_secs(step);
                let row = [numeric.unwrap_or(f64::NAN), f64::from(category)];
                all.push(row);
                let input = Tensor::new(vec![1, 2], crate::model::TensorData::Fp64(row.to_vec())).unwrap();
                watch.add_rows(now, &[input], &[], &settings);
                proptest::prop_assert_eq!(&watch.by_count.counts, &recount(&watch.by_count, &profile));
                proptest::prop_assert_eq!(&watch.by_time.counts, &recount(&watch.by_time, &profile));
                let last: Vec<f64> = all[all.len().saturating_sub(window_rows)..].iter().map(|r| r[1]).collect();
                proptest::prop_assert_eq!(watch.by_count.values[1].iter().copied().collect::<Vec<_>>(), last);
                proptest::prop_assert!(watch.by_time.len() <= max_window_rows);
                let horizon = now.checked_sub(Duration::from_secs(window_s));
                proptest::prop_assert!(watch.by_time.at.iter().all(|at| horizon.is_none_or(|h| *at >= h)));
                let per_second = (max_window_rows as u64 / window_s).max(1);
                let mut seconds = std::collections::BTreeMap::new();
                for at in &watch.by_time.at {
                    *seconds.entry(at.duration_since(watch.started).as_secs()).or_insert(0u64) += 1;
                }
                proptest::prop_assert!(seconds.values().all(|&n| n <= per_second));
            }
        }
    }
}
