//! The comparison as figures: what `GET /admin/models/{name}/comparison`, `gauntlet report` and
//! the gauges show (`table` prints it for people).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Comparison, ModelStats, PairStats, stats};
use crate::repository::Task;

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub model: String,
    /// "classification" or "regression".
    pub task: String,
    /// Paired records seen, and how many of them have ground truth.
    pub records: u64,
    pub labelled_records: u64,
    pub mismatched_truths: u64,
    pub alpha: f64,
    pub min_labelled_pairs: u64,
    /// How `alpha` is held for all of a champion's challengers together: the paired tests' p-values
    /// Holm-adjusted, the sequential ones Bonferroni-adjusted (their ratios are e-processes), each
    /// over the challengers compared with the same champion. Verdicts use the adjusted values.
    #[serde(default)]
    pub correction: String,
    pub models: Vec<ModelReport>,
    pub pairs: Vec<PairReport>,
    /// In a cluster: the analyst's snapshot this is, and how old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// `report --policy`: what the policy would have decided over these records and labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<super::replay::Replayed>,
}

/// Where a cluster's report came from: the analyst replica that computed it, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub analyst: String,
    /// RFC 3339.
    pub as_of: String,
    /// Seconds between `as_of` and the answer.
    pub age_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelReport {
    pub version: String,
    pub records: u64,
    pub ok: u64,
    pub errors: u64,
    pub panics: u64,
    pub timeouts: u64,
    pub shed: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// The latency distribution: `[upper bound in ms, results]` per bucket, bounds doubling from
    /// 16 µs, up to the slowest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Vec<f64>>)]
    pub latency_histogram_ms: Vec<[f64; 2]>,
    /// Share of its predicted rows per class (classification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_shares: Vec<f64>,
    pub labelled_rows: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brier: Option<f64>,
    /// Label-free (CBPE, binary classifiers with probabilities): the accuracy estimated from the
    /// version's own probabilities on every record, labelled or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_accuracy: Option<f64>,
    /// The same estimate over the labelled records only, and minus their realised accuracy: how
    /// far off the estimate is where it can be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_accuracy_labelled: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_error: Option<f64>,
    /// The calibration the estimate used, or why none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_calibration: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Better,
    Worse,
    NoSignificantDifference,
    NotEnoughData,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Better => "better",
            Self::Worse => "worse",
            Self::NoSignificantDifference => "no significant difference",
            Self::NotEnoughData => "not enough data",
        })
    }
}

/// Champion against one challenger, on the requests both scored.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PairReport {
    pub champion: String,
    pub challenger: String,
    /// Share of records with both where both answered (the challenger may be shed, fail, time out).
    pub coverage: Option<f64>,
    /// Rows both scored; share of them where they agree (same class, or within the tolerance).
    pub compared_rows: u64,
    pub agreement: Option<f64>,
    /// Regression: Pearson correlation of the two predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<f64>,
    /// Divergence of the prediction distributions: Jensen–Shannon (bits) of the class shares, or
    /// the KS statistic of the predicted values.
    pub divergence: Option<f64>,
    pub divergence_measure: String,
    pub labelled_pairs: u64,
    /// "accuracy" (higher is better) or "mae" (lower is better), on the labelled pairs.
    pub metric: String,
    pub champion_metric: Option<f64>,
    pub challenger_metric: Option<f64>,
    /// Challenger's improvement (accuracy gained, or absolute error saved per row) with its 95% interval.
    pub improvement: Option<f64>,
    #[schema(value_type = Option<Vec<f64>>)]
    pub improvement_ci: Option<[f64; 2]>,
    /// "mcnemar_exact" or "wilcoxon_signed_rank", and its two-sided p-value.
    pub test: String,
    /// The paired test's own p-value, and Holm's adjustment over the champion's challengers.
    pub p_value: Option<f64>,
    #[serde(default)]
    pub adjusted_p_value: Option<f64>,
    /// Always-valid p-value of the mixture SPRT: valid however often it is looked at; and times
    /// the number of the champion's challengers (capped at 1).
    pub sequential_p_value: f64,
    #[serde(default)]
    pub adjusted_sequential_p_value: f64,
    /// From the adjusted p-value.
    pub verdict: Verdict,
    /// Labelled pairs still needed to detect the current effect (power as configured), if it is not 0.
    pub more_pairs_needed: Option<u64>,
    /// The same pairs per slice of the requests (`[models.<name>.slices]`), in the order the
    /// slices first came; none when the records are not sliced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<SliceReport>,
    /// The slices where the challenger is significantly worse while it is better overall (by
    /// its improvement): what a promotion must not hide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worse_slices: Vec<String>,
}

/// Champion against one challenger on the labelled pairs of one slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SliceReport {
    pub slice: String,
    pub labelled_pairs: u64,
    pub champion_metric: Option<f64>,
    pub challenger_metric: Option<f64>,
    /// As the pair's: accuracy gained, or absolute error saved per row, with its 95% interval.
    pub improvement: Option<f64>,
    #[schema(value_type = Option<Vec<f64>>)]
    pub improvement_ci: Option<[f64; 2]>,
    /// "mcnemar_exact" (classification) or "paired_t" (regression), and its two-sided p-value.
    pub test: String,
    pub p_value: Option<f64>,
    /// Holm's adjustment over every (challenger, slice) of the champion.
    pub adjusted_p_value: Option<f64>,
    pub verdict: Verdict,
    /// Significantly worse here while better overall.
    pub flagged: bool,
}

impl Comparison {
    pub fn report(&self) -> Report {
        let classification = matches!(self.task, Task::Classification { .. });
        Report {
            model: self.model.clone(),
            task: if classification { "classification" } else { "regression" }.into(),
            records: self.records,
            labelled_records: self.labelled_records,
            mismatched_truths: self.mismatched_truths,
            alpha: self.settings.alpha,
            min_labelled_pairs: self.settings.min_labelled_pairs,
            correction: CORRECTION.into(),
            models: self.models.iter().map(|(v, s)| model_report(v.as_str(), s)).collect(),
            pairs: self.pair_reports(),
            snapshot: None,
            policy: None,
        }
    }

    /// The report's pairs alone, adjusted for the family as the report adjusts them.
    pub fn pair_reports(&self) -> Vec<PairReport> {
        let classification = matches!(self.task, Task::Classification { .. });
        adjusted(
            self.sorted_pairs()
                .into_iter()
                .map(|((a, b), pair)| self.pair_report(a.as_str(), b.as_str(), pair, classification))
                .collect(),
            &self.settings,
        )
    }

    /// Each version's headline metric as its report gives it: `("accuracy", …)` for a classifier,
    /// `("mae", …)` for a regression, once it has labelled rows. Without the rest of the report:
    /// the gauges read this every few seconds, and the latency histograms a report walks cost
    /// about 0.3M instructions a version (issue 33).
    pub fn headline_metrics(&self) -> impl Iterator<Item = (&str, &'static str, f64)> {
        self.models.iter().filter_map(|(version, stats)| {
            let (metric, value) =
                if stats.class_counts.is_empty() { ("mae", stats.mae()) } else { ("accuracy", stats.accuracy()) };
            value.map(|v| (version.as_str(), metric, v))
        })
    }

    fn sorted_pairs(&self) -> Vec<&((crate::repository::VersionId, crate::repository::VersionId), PairStats)> {
        let mut pairs: Vec<_> = self.pairs.iter().collect();
        pairs.sort_by(|x, y| x.0.cmp(&y.0));
        pairs
    }

    fn pair_report(&self, champion: &str, challenger: &str, pair: &PairStats, classification: bool) -> PairReport {
        let settings = &self.settings;
        let n = pair.labelled;
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let difference = stats::PairedDifference::from_sums(n, pair.d_sum, pair.d_squares, 0.95);
        let (metric, champion_metric, challenger_metric, test, p_value, needed) = if classification {
            let p = (n > 0).then(|| stats::mcnemar_exact(pair.only_champion, pair.only_challenger));
            let psi = ratio(pair.only_champion + pair.only_challenger, n);
            let delta = ratio(pair.only_challenger, n).zip(ratio(pair.only_champion, n)).map(|(c, b)| c - b);
            let needed = psi
                .zip(delta)
                .and_then(|(psi, delta)| stats::mcnemar_sample_size(psi, delta, settings.alpha, settings.power));
            ("accuracy", ratio(pair.champion_right, n), ratio(pair.challenger_right, n), "mcnemar_exact", p, needed)
        } else {
            let p = stats::wilcoxon(&pair.differences.values()).map(|(_, p)| p).or((n > 0).then_some(1.0));
            let mean = |sum: f64| (n > 0).then(|| sum / n as f64);
            let needed =
                difference.and_then(|d| stats::paired_sample_size(d.mean, d.sd, settings.alpha, settings.power));
            ("mae", mean(pair.champion_abs_error), mean(pair.challenger_abs_error), "wilcoxon_signed_rank", p, needed)
        };
        let improvement = (n > 0).then(|| pair.d_sum / n as f64);
        let more_pairs_needed =
            needed.map(|needed| (needed.ceil() as u64).max(settings.min_labelled_pairs).saturating_sub(n));
        let (divergence, divergence_measure) = if classification {
            (
                stats::jensen_shannon(&to_f64(&pair.champion_classes), &to_f64(&pair.challenger_classes)),
                "jensen_shannon_bits",
            )
        } else {
            (stats::ks_statistic(&pair.champion_values.values(), &pair.challenger_values.values()), "ks_statistic")
        };
        PairReport {
            champion: champion.into(),
            challenger: challenger.into(),
            coverage: ratio(pair.complete, pair.records),
            compared_rows: pair.rows,
            agreement: ratio(pair.agree, pair.rows),
            correlation: if classification { None } else { pair.correlation.correlation() },
            divergence,
            divergence_measure: divergence_measure.into(),
            labelled_pairs: n,
            metric: metric.into(),
            champion_metric,
            challenger_metric,
            improvement,
            improvement_ci: difference.map(|d| [d.ci_low, d.ci_high]),
            test: test.into(),
            p_value,
            adjusted_p_value: p_value,
            sequential_p_value: (-pair.max_ln_ratio).exp().min(1.0),
            adjusted_sequential_p_value: (-pair.max_ln_ratio).exp().min(1.0),
            // Judged in `adjusted`, once every pair's p-value is known.
            verdict: Verdict::NotEnoughData,
            more_pairs_needed,
            slices: pair.slices.iter().map(|(key, slice)| slice_report(key, slice, classification)).collect(),
            worse_slices: Vec::new(),
        }
    }
}

/// One slice's figures; judged in `adjusted`.
fn slice_report(key: &str, slice: &super::SliceStats, classification: bool) -> SliceReport {
    let n = slice.labelled;
    let ratio = |a: u64| (n > 0).then(|| a as f64 / n as f64);
    let mean = |sum: f64| (n > 0).then(|| sum / n as f64);
    let difference = stats::PairedDifference::from_sums(n, slice.d_sum, slice.d_squares, 0.95);
    let (champion_metric, challenger_metric, test, p_value) = if classification {
        let p = (n > 0).then(|| stats::mcnemar_exact(slice.only_champion, slice.only_challenger));
        (ratio(slice.champion_right), ratio(slice.challenger_right), "mcnemar_exact", p)
    } else {
        // Sums only, no sample kept per slice: a paired t-test (the pair's own test is Wilcoxon's).
        let p = difference.map(|d| d.t_p);
        (mean(slice.champion_abs_error), mean(slice.challenger_abs_error), "paired_t", p)
    };
    SliceReport {
        slice: key.to_owned(),
        labelled_pairs: n,
        champion_metric,
        challenger_metric,
        improvement: mean(slice.d_sum),
        improvement_ci: difference.map(|d| [d.ci_low, d.ci_high]),
        test: test.into(),
        p_value,
        adjusted_p_value: p_value,
        verdict: Verdict::NotEnoughData,
        flagged: false,
    }
}

const CORRECTION: &str = "holm (paired tests), bonferroni (sequential), over each champion's challengers; \
                          slices: holm over every (challenger, slice) of the champion";

/// The pairs with their p-values adjusted over each champion's challengers, then judged.
fn adjusted(mut pairs: Vec<PairReport>, settings: &super::CompareSettings) -> Vec<PairReport> {
    let champions: std::collections::BTreeSet<String> = pairs.iter().map(|p| p.champion.clone()).collect();
    for champion in champions {
        let family: Vec<usize> = (0..pairs.len()).filter(|&i| pairs[i].champion == champion).collect();
        let k = family.len() as f64;
        for &i in &family {
            pairs[i].adjusted_sequential_p_value = (pairs[i].sequential_p_value * k).min(1.0);
        }
        // Holm: the i-th smallest of m p-values times (m - i), kept monotone, capped at 1.
        let mut tested: Vec<(usize, f64)> = family.iter().filter_map(|&i| Some((i, pairs[i].p_value?))).collect();
        tested.sort_by(|a, b| a.1.total_cmp(&b.1));
        let m = tested.len();
        let mut running: f64 = 0.0;
        for (rank, (i, p)) in tested.into_iter().enumerate() {
            running = running.max((p * (m - rank) as f64).min(1.0));
            pairs[i].adjusted_p_value = Some(running);
        }
        // Slices: one family of every (challenger, slice) of this champion, Holm again. Holm holds
        // the family's error rate whatever the dependence between the tests, and a "worse" flag is
        // what blocks a promotion, so its false alarms are what the family bounds.
        let mut tested: Vec<(usize, usize, f64)> = family
            .iter()
            .flat_map(|&i| pairs[i].slices.iter().enumerate().filter_map(move |(j, s)| Some((i, j, s.p_value?))))
            .collect();
        tested.sort_by(|a, b| a.2.total_cmp(&b.2));
        let m = tested.len();
        let mut running: f64 = 0.0;
        for (rank, (i, j, p)) in tested.into_iter().enumerate() {
            running = running.max((p * (m - rank) as f64).min(1.0));
            pairs[i].slices[j].adjusted_p_value = Some(running);
        }
    }
    for pair in &mut pairs {
        pair.verdict = match (pair.adjusted_p_value, pair.improvement) {
            _ if pair.labelled_pairs < settings.min_labelled_pairs => Verdict::NotEnoughData,
            (Some(p), Some(d)) if p < settings.alpha && d > 0.0 => Verdict::Better,
            (Some(p), Some(d)) if p < settings.alpha && d < 0.0 => Verdict::Worse,
            _ if pair.more_pairs_needed.is_some_and(|more| more > 0) => Verdict::NotEnoughData,
            _ => Verdict::NoSignificantDifference,
        };
        if matches!(pair.verdict, Verdict::Better | Verdict::Worse) {
            pair.more_pairs_needed = None;
        }
        let better_overall = pair.improvement.is_some_and(|d| d > 0.0);
        for slice in &mut pair.slices {
            slice.verdict = match (slice.adjusted_p_value, slice.improvement) {
                _ if slice.labelled_pairs < settings.min_labelled_pairs => Verdict::NotEnoughData,
                (Some(p), Some(d)) if p < settings.alpha && d > 0.0 => Verdict::Better,
                (Some(p), Some(d)) if p < settings.alpha && d < 0.0 => Verdict::Worse,
                _ => Verdict::NoSignificantDifference,
            };
            slice.flagged = better_overall && slice.verdict == Verdict::Worse;
        }
        pair.worse_slices = pair.slices.iter().filter(|s| s.flagged).map(|s| s.slice.clone()).collect();
    }
    pairs
}

fn to_f64(counts: &[u64]) -> Vec<f64> {
    counts.iter().map(|&c| c as f64).collect()
}

fn histogram(latency_us: &hdrhistogram::Histogram<u64>) -> Vec<[f64; 2]> {
    if latency_us.is_empty() {
        return Vec::new();
    }
    latency_us
        .iter_log(16, 2.0)
        .map(|v| [v.value_iterated_to() as f64 / 1e3, v.count_since_last_iteration() as f64])
        .collect()
}

fn model_report(version: &str, stats: &ModelStats) -> ModelReport {
    let estimate = stats.confidence.as_ref().and_then(|c| c.estimate());
    let rows = stats.labelled_rows as f64;
    let per_row = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
    let latency = |q: f64| (!stats.latency_us.is_empty()).then(|| stats.latency_us.value_at_quantile(q) as f64 / 1e3);
    let predicted: u64 = stats.class_counts.iter().sum();
    let classification = !stats.class_counts.is_empty();
    ModelReport {
        version: version.into(),
        records: stats.records,
        ok: stats.statuses[0],
        errors: stats.statuses[1],
        panics: stats.statuses[2],
        timeouts: stats.statuses[3],
        shed: stats.statuses[4],
        latency_p50_ms: latency(0.5),
        latency_p99_ms: latency(0.99),
        latency_histogram_ms: histogram(&stats.latency_us),
        class_shares: if predicted > 0 {
            stats.class_counts.iter().map(|&c| c as f64 / predicted as f64).collect()
        } else {
            vec![]
        },
        labelled_rows: stats.labelled_rows,
        accuracy: if classification { stats.accuracy() } else { None },
        mae: if classification { None } else { stats.mae() },
        rmse: if classification { None } else { (rows > 0.0).then(|| (stats.squared_error / rows).sqrt()) },
        log_loss: per_row(stats.log_loss, stats.probability_rows),
        brier: per_row(stats.brier, stats.probability_rows),
        estimated_accuracy: estimate.as_ref().map(|e| e.accuracy),
        estimated_accuracy_labelled: estimate.as_ref().and_then(|e| e.labelled),
        estimate_error: estimate.as_ref().and_then(|e| e.error),
        estimate_calibration: estimate.map(|e| format!("{} ({} rows)", e.calibration, e.rows)),
    }
}
