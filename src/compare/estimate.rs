//! Label-free accuracy: confidence-based performance estimation (CBPE, after NannyML) for binary
//! classifiers. A calibrated model's probability that its predicted class is right *is* its
//! expected accuracy on that row, so the mean of those probabilities over every record (labelled
//! or not) estimates the version's accuracy before the labels come.
//!
//! Calibration is fitted on the live labelled records (isotonic regression, as NannyML fits it on
//! its reference data) and used only where it helps, decided as NannyML decides: not when the
//! labelled rows hold one class or their ROC AUC is above 0.999; else each of ten folds is
//! calibrated by the regression fitted on the other nine, and calibration is used when the pooled
//! folds' expected calibration error (ten bins of equal count) is lower calibrated than not.
//! (NannyML draws its ten test sets at random, 10% each; here the folds are a hash of the request
//! id, so every replica and every replay decides alike.) Without enough labelled rows
//! (`MIN_CALIBRATION_ROWS`), the probabilities are taken as they are, and the report says so.

use serde::{Deserialize, Serialize};

/// Bins of the positive class's probability, for the calibrated estimate over every record:
/// equal in log-odds over ±`LOGIT_SPAN`, so they are as fine as 1e-5 near 0 and 1, where confident
/// models put most rows.
const BINS: usize = 2000;
const LOGIT_SPAN: f64 = 12.0;
/// Labelled rows kept for calibration: the most recent.
const RESERVOIR: usize = 20_000;
/// Labelled rows before a calibration is fitted.
pub const MIN_CALIBRATION_ROWS: usize = 100;
const FOLDS: u8 = 10;

/// One version's confidences (binary classification with probabilities).
#[derive(Deserialize, Serialize)]
pub(super) struct Confidence {
    /// Every row: how many, the sum of the predicted class's probability, and per bin of the
    /// positive class's probability how many predicted each class.
    rows: u64,
    raw_sum: f64,
    predicted: Vec<[u64; 2]>,
    /// The labelled rows: the same, and how many were right.
    labelled_rows: u64,
    labelled_raw_sum: f64,
    labelled_predicted: Vec<[u64; 2]>,
    labelled_correct: u64,
    /// Recent labelled rows, (positive probability, truth, fold), for the calibration.
    kept: std::collections::VecDeque<(f32, u8, u8)>,
    /// The last calibration decided, and at how many labelled rows: decided again only once they
    /// grew by a hundredth (a report is asked for every second by a cluster's analyst; the decision
    /// is ten isotonic fits over up to 20,000 rows). Not kept in checkpoints.
    #[serde(skip)]
    decided: parking_lot::Mutex<Option<Decided>>,
}

/// A calibration decision: at how many labelled rows, the calibrator if any, and the words for it.
struct Decided {
    at: u64,
    calibrator: Option<std::sync::Arc<Isotonic>>,
    text: String,
}

impl Default for Confidence {
    fn default() -> Self {
        Self {
            rows: 0,
            raw_sum: 0.0,
            predicted: vec![[0; 2]; BINS],
            labelled_rows: 0,
            labelled_raw_sum: 0.0,
            labelled_predicted: vec![[0; 2]; BINS],
            labelled_correct: 0,
            kept: std::collections::VecDeque::new(),
            decided: parking_lot::Mutex::new(None),
        }
    }
}

fn bin(p: f64) -> usize {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let logit = (p / (1.0 - p)).ln().clamp(-LOGIT_SPAN, LOGIT_SPAN);
    (((logit + LOGIT_SPAN) / (2.0 * LOGIT_SPAN) * BINS as f64) as usize).min(BINS - 1)
}

fn center(b: usize) -> f64 {
    let logit = (b as f64 + 0.5) / BINS as f64 * 2.0 * LOGIT_SPAN - LOGIT_SPAN;
    1.0 / (1.0 + (-logit).exp())
}

/// The predicted class's probability, as CBPE takes it: `p` when it predicted the positive class.
fn confidence(label_positive: bool, p: f64) -> f64 {
    if label_positive { p } else { 1.0 - p }
}

impl Confidence {
    /// A row of any record: its predicted class (positive or not) and the positive class's probability.
    pub(super) fn push(&mut self, label_positive: bool, p: f64) {
        self.rows += 1;
        self.raw_sum += confidence(label_positive, p);
        self.predicted[bin(p)][usize::from(label_positive)] += 1;
    }

    /// A labelled row; `key` (the request id) chooses its fold.
    pub(super) fn push_labelled(&mut self, label_positive: bool, p: f64, truth_positive: bool, key: &str) {
        self.labelled_rows += 1;
        self.labelled_raw_sum += confidence(label_positive, p);
        self.labelled_predicted[bin(p)][usize::from(label_positive)] += 1;
        self.labelled_correct += u64::from(label_positive == truth_positive);
        if self.kept.len() == RESERVOIR {
            self.kept.pop_front();
        }
        let fold = (crate::traffic::unit_interval("gauntlet/cbpe/v1", key) * f64::from(FOLDS)) as u8;
        self.kept.push_back((p as f32, u8::from(truth_positive), fold.min(FOLDS - 1)));
    }

    /// The estimate, over every record and over the labelled ones, with the calibration it used.
    pub(super) fn estimate(&self) -> Option<Estimate> {
        if self.rows == 0 {
            return None;
        }
        let (calibrator, calibration) = self.calibration_now();
        let over = |rows: u64, raw: f64, predicted: &[[u64; 2]]| match &calibrator {
            None => raw / rows as f64,
            Some(c) => {
                let sum: f64 = predicted
                    .iter()
                    .enumerate()
                    .map(|(b, [negative, positive])| {
                        let p = c.predict(center(b));
                        *positive as f64 * p + *negative as f64 * (1.0 - p)
                    })
                    .sum();
                sum / rows as f64
            }
        };
        let accuracy = over(self.rows, self.raw_sum, &self.predicted);
        let labelled =
            (self.labelled_rows > 0).then(|| over(self.labelled_rows, self.labelled_raw_sum, &self.labelled_predicted));
        let realised = (self.labelled_rows > 0).then(|| self.labelled_correct as f64 / self.labelled_rows as f64);
        Some(Estimate {
            accuracy,
            labelled,
            error: labelled.zip(realised).map(|(e, r)| e - r),
            rows: self.rows,
            calibration,
        })
    }

    /// The calibration as last decided, decided again when the labelled rows grew by a hundredth.
    fn calibration_now(&self) -> (Option<std::sync::Arc<Isotonic>>, String) {
        let mut decided = self.decided.lock();
        let fresh = decided.as_ref().is_some_and(|d| self.labelled_rows.saturating_sub(d.at) * 100 < d.at.max(1));
        if !fresh {
            let (calibrator, text) = self.calibration();
            *decided = Some(Decided { at: self.labelled_rows, calibrator: calibrator.map(std::sync::Arc::new), text });
        }
        match &*decided {
            Some(d) => (d.calibrator.clone(), d.text.clone()),
            None => (None, String::new()),
        }
    }

    /// The calibrator to use, if any, and what was decided, in words.
    fn calibration(&self) -> (Option<Isotonic>, String) {
        let n = self.kept.len();
        if n < MIN_CALIBRATION_ROWS {
            return (
                None,
                format!("none: {n} labelled rows, calibration needs {MIN_CALIBRATION_ROWS}; probabilities as given"),
            );
        }
        let rows: Vec<(f64, f64, u8)> = self.kept.iter().map(|&(p, y, f)| (f64::from(p), f64::from(y), f)).collect();
        let positives = rows.iter().filter(|r| r.1 > 0.5).count();
        if positives == 0 || positives == n {
            return (None, format!("none: the {n} labelled rows hold one class"));
        }
        if roc_auc(&rows) > 0.999 {
            return (None, format!("none: ROC AUC above 0.999 on {n} labelled rows"));
        }
        let (mut raw, mut calibrated) = (Vec::new(), Vec::new());
        for fold in 0..FOLDS {
            let (train, test): (Vec<&(f64, f64, u8)>, Vec<_>) = rows.iter().partition(|r| r.2 != fold);
            if test.is_empty() || train.is_empty() {
                continue;
            }
            let fitted = Isotonic::fit(&train.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>());
            raw.extend(test.iter().map(|r| (r.0, r.1)));
            calibrated.extend(test.iter().map(|r| (fitted.predict(r.0), r.1)));
        }
        let (before, after) = (ece(&raw), ece(&calibrated));
        if before <= after {
            let why = format!("calibration error {before:.4}, {after:.4} calibrated, on {n} labelled rows");
            return (None, format!("none: isotonic calibration did not lower the {why}"));
        }
        let all: Vec<(f64, f64)> = rows.iter().map(|r| (r.0, r.1)).collect();
        let how = format!("calibration error {before:.4} to {after:.4}");
        (Some(Isotonic::fit(&all)), format!("isotonic, fitted on {n} live labelled rows ({how})"))
    }
}

/// What the estimate says of one version.
pub(super) struct Estimate {
    pub accuracy: f64,
    /// The same estimate over the labelled rows only, and how far it is from their realised accuracy.
    pub labelled: Option<f64>,
    pub error: Option<f64>,
    pub rows: u64,
    pub calibration: String,
}

/// Isotonic regression (pool adjacent violators), predicted by linear interpolation between its
/// thresholds and clipped at the ends: what scikit-learn's `IsotonicRegression(out_of_bounds="clip")`,
/// NannyML's calibrator, does.
struct Isotonic {
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Isotonic {
    fn fit(points: &[(f64, f64)]) -> Self {
        let mut sorted = points.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Equal x: one point, their mean (scikit-learn does the same before pooling).
        let mut merged: Vec<(f64, f64, f64)> = Vec::new(); // (x, sum y, weight)
        for (x, y) in sorted {
            match merged.last_mut() {
                Some(last) if last.0 == x => {
                    last.1 += y;
                    last.2 += 1.0;
                }
                _ => merged.push((x, y, 1.0)),
            }
        }
        // Pool adjacent violators over blocks (first x, last x, sum y, weight).
        let mut blocks: Vec<(usize, usize, f64, f64)> = Vec::new();
        for (i, &(_, sum, weight)) in merged.iter().enumerate() {
            blocks.push((i, i, sum, weight));
            while blocks.len() > 1 {
                let (a, b) = (blocks[blocks.len() - 2], blocks[blocks.len() - 1]);
                if a.2 / a.3 <= b.2 / b.3 {
                    break;
                }
                blocks.pop();
                let last = blocks.last_mut().expect("two blocks");
                *last = (a.0, b.1, a.2 + b.2, a.3 + b.3);
            }
        }
        // Each block as its two ends (one point when it is one x), as scikit-learn keeps thresholds.
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (first, last, sum, weight) in blocks {
            let value = sum / weight;
            x.push(merged[first].0);
            y.push(value);
            if last != first {
                x.push(merged[last].0);
                y.push(value);
            }
        }
        Self { x, y }
    }

    fn predict(&self, p: f64) -> f64 {
        let (x, y) = (&self.x, &self.y);
        if p <= x[0] {
            return y[0];
        }
        if p >= x[x.len() - 1] {
            return y[y.len() - 1];
        }
        let i = x.partition_point(|&v| v <= p);
        let (x0, x1, y0, y1) = (x[i - 1], x[i], y[i - 1], y[i]);
        if x1 == x0 { y1 } else { y0 + (y1 - y0) * (p - x0) / (x1 - x0) }
    }
}

/// Expected calibration error as NannyML computes it: rows sorted by probability into ten bins of
/// equal count (fewer for fewer than twenty rows), each bin's |mean probability − mean truth|
/// weighted by its share.
fn ece(rows: &[(f64, f64)]) -> f64 {
    let mut sorted = rows.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = sorted.len();
    let bins = if n <= 20 { (n / 2).max(1) } else { 10 };
    let size = n / bins;
    let mut total = 0.0;
    for b in 0..bins {
        let end = if b == bins - 1 { n } else { (b + 1) * size };
        let chunk = &sorted[b * size..end];
        if chunk.is_empty() {
            continue;
        }
        let k = chunk.len() as f64;
        let p = chunk.iter().map(|r| r.0).sum::<f64>() / k;
        let y = chunk.iter().map(|r| r.1).sum::<f64>() / k;
        total += (k / n as f64) * (p - y).abs();
    }
    total
}

/// ROC AUC of probabilities against 0/1 truths (ties counted half).
fn roc_auc(rows: &[(f64, f64, u8)]) -> f64 {
    let mut sorted: Vec<(f64, f64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let rank = (i + j + 1) as f64 / 2.0;
        rank_sum += rank * sorted[i..j].iter().filter(|r| r.1 > 0.5).count() as f64;
        i = j;
    }
    let positives = sorted.iter().filter(|r| r.1 > 0.5).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isotonic_matches_scikit_learn_on_a_small_case() {
        // sklearn: IsotonicRegression(out_of_bounds="clip").fit([.1,.2,.3,.4,.5], [0,1,0,1,1])
        // X_thresholds_ [.1 .2 .3 .4 .5], y_thresholds_ [0 .5 .5 1 1]; predict(.25) = .5, predict(.05) = 0.
        let fitted = Isotonic::fit(&[(0.1, 0.0), (0.2, 1.0), (0.3, 0.0), (0.4, 1.0), (0.5, 1.0)]);
        assert_eq!(fitted.predict(0.25), 0.5);
        assert_eq!(fitted.predict(0.05), 0.0);
        assert_eq!(fitted.predict(0.45), 1.0);
        assert!((fitted.predict(0.35) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_calibrated_model_estimates_its_own_accuracy() {
        // Probabilities that are right: the truth is positive with probability p.
        let mut rng = super::super::tests::Rng(9);
        let mut confidence = Confidence::default();
        let (mut right, mut n) = (0u64, 0u64);
        for i in 0..20_000 {
            let p = rng.next();
            let truth = rng.next() < p;
            let label = p >= 0.5;
            confidence.push(label, p);
            if i % 4 == 0 {
                confidence.push_labelled(label, p, truth, &i.to_string());
            }
            right += u64::from(label == truth);
            n += 1;
        }
        let estimate = confidence.estimate().unwrap();
        let realised = right as f64 / n as f64;
        assert!((estimate.accuracy - realised).abs() < 0.01, "{} vs {realised}", estimate.accuracy);
        assert!(estimate.error.unwrap().abs() < 0.02);
    }
}
