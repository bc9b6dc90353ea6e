//! The comparison's history: a point per model every `history_interval_s`, each the figures a data
//! scientist looks back on (per pair: labelled pairs, both metrics, the improvement and its
//! interval, the sequential p, coverage, the verdict, the worse slices, both estimated accuracies). Pure: the one node's files
//! (`crate::history`) and the cluster's table keep the points.

use serde::{Deserialize, Serialize};

use super::{Report, Verdict};

/// The comparison at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Point {
    /// RFC 3339, when the point was taken.
    pub at: String,
    pub records: u64,
    pub labelled_records: u64,
    pub pairs: Vec<PointPair>,
}

/// One pair's figures at that moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PointPair {
    pub champion: String,
    pub challenger: String,
    pub labelled_pairs: u64,
    pub champion_metric: Option<f64>,
    pub challenger_metric: Option<f64>,
    pub improvement: Option<f64>,
    #[schema(value_type = Option<Vec<f64>>)]
    pub improvement_ci: Option<[f64; 2]>,
    pub sequential_p_value: f64,
    pub coverage: Option<f64>,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worse_slices: Vec<String>,
    /// Label-free (CBPE): each version's estimated accuracy, where the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_estimated: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenger_estimated: Option<f64>,
}

impl Point {
    /// The figures of `report`, taken at `at`.
    pub fn of(report: &Report, at: std::time::SystemTime) -> Self {
        let estimated =
            |version: &str| report.models.iter().find(|m| m.version == version).and_then(|m| m.estimated_accuracy);
        Self {
            at: humantime::format_rfc3339_millis(at).to_string(),
            records: report.records,
            labelled_records: report.labelled_records,
            pairs: report
                .pairs
                .iter()
                .map(|p| PointPair {
                    champion: p.champion.clone(),
                    challenger: p.challenger.clone(),
                    labelled_pairs: p.labelled_pairs,
                    champion_metric: p.champion_metric,
                    challenger_metric: p.challenger_metric,
                    improvement: p.improvement,
                    improvement_ci: p.improvement_ci,
                    sequential_p_value: p.sequential_p_value,
                    coverage: p.coverage,
                    verdict: p.verdict,
                    worse_slices: p.worse_slices.clone(),
                    champion_estimated: estimated(&p.champion),
                    challenger_estimated: estimated(&p.challenger),
                })
                .collect(),
        }
    }
}

/// A model's history as answered: its points from `since`, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    pub model: String,
    /// Seconds between points (`comparison.history_interval_s`), while labels join.
    pub interval_s: u64,
    pub points: Vec<Point>,
}
