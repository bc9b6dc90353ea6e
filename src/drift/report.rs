//! What the drift monitor says about one deployment: served at `/admin/models/{name}/drift`,
//! printed by `gauntlet report`, and the body of the webhook's events.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::{DriftSettings, Thresholds};
use crate::registry::ModelVersion;
use crate::repository::profile::SeriesKind;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftReport {
    pub model: String,
    /// The champion version whose training profile is the reference (drift restarts with a new one).
    pub version: Option<String>,
    /// False when that version's manifest has no profile: nothing to compare with.
    pub profile: bool,
    pub state: State,
    /// Entered when a judged window has a series at the alert threshold; left only when every judged
    /// window is back under the warn threshold (so a series hovering at the threshold does not flap).
    pub alerting: bool,
    pub thresholds: Thresholds,
    /// Rows a window needs before it is judged.
    pub min_rows: usize,
    /// Evaluations since the reference version started.
    pub evaluations: u64,
    /// Rows observed since the reference version started.
    pub rows_seen: u64,
    /// Series at the alert level in a judged window, then those at warn (and not alert).
    pub drifted: Vec<String>,
    pub warned: Vec<String>,
    pub windows: Vec<WindowReport>,
    /// The champion's accuracy (classification) or mean absolute error (regression) over labelled
    /// rows, per window, beside its holdout figure from the manifest.
    pub concept: Vec<ConceptReport>,
    /// In a cluster: the analyst's report this is (the cluster's alert state), and how old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<crate::compare::Snapshot>,
}

/// A deployment's drift, worst series first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = DriftState)]
pub enum State {
    /// No window has `min_rows` rows yet (or there is no profile).
    InsufficientData,
    Ok,
    Warn,
    Alert,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = DriftLevel)]
pub enum Level {
    Ok,
    Warn,
    Alert,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Alert => "alert",
        }
    }

    pub fn of(psi: f64, thresholds: &Thresholds) -> Self {
        if psi >= thresholds.psi_alert {
            Self::Alert
        } else if psi >= thresholds.psi_warn {
            Self::Warn
        } else {
            Self::Ok
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowReport {
    /// `rows` (the last `window_rows` rows) or `time` (the rows of the last `window_s` seconds).
    pub window: String,
    pub limit: String,
    pub rows: u64,
    /// Whether it has `min_rows` rows, so its levels count.
    pub judged: bool,
    pub series: Vec<SeriesDrift>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeriesDrift {
    pub name: String,
    pub kind: SeriesKind,
    pub psi: Option<f64>,
    /// None for a categorical series.
    pub ks: Option<f64>,
    pub level: Level,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConceptReport {
    pub window: String,
    pub labelled_rows: u64,
    /// `accuracy` or `mae`.
    pub metric: String,
    pub value: Option<f64>,
    pub holdout: Option<f64>,
}

// === impl DriftReport ===

impl DriftReport {
    /// The report of a deployment whose champion has had no evaluation yet.
    pub fn empty(champion: &ModelVersion, settings: &DriftSettings, thresholds: Thresholds) -> Self {
        Self {
            model: champion.name().to_owned(),
            version: Some(champion.version().to_string()),
            profile: champion.manifest().profile.is_some(),
            state: State::InsufficientData,
            alerting: false,
            thresholds,
            min_rows: settings.min_rows,
            evaluations: 0,
            rows_seen: 0,
            drifted: Vec::new(),
            warned: Vec::new(),
            windows: Vec::new(),
            concept: Vec::new(),
            snapshot: None,
        }
    }

    /// A plain-text table: the state, then each window's series with a PSI at warn or above, or all
    /// of them when `all`.
    pub fn to_table(&self, all: bool) -> String {
        let mut out = String::new();
        let version = self.version.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "drift of {} (reference: version {version}'s training profile): {}{}",
            self.model,
            state_label(self.state),
            if self.alerting { ", alerting" } else { "" }
        );
        if !self.profile {
            let _ =
                writeln!(out, "  version {version} has no profile in its manifest: retrain it with models/train.py");
            return out;
        }
        let _ = writeln!(
            out,
            "  thresholds: PSI {} warn, {} alert; a window is judged from {} rows; {} rows seen",
            self.thresholds.psi_warn, self.thresholds.psi_alert, self.min_rows, self.rows_seen
        );
        for window in &self.windows {
            let judged = if window.judged { "" } else { ", not judged yet" };
            let _ = writeln!(out, "  {} ({} rows{judged})", window.limit, window.rows);
            let shown: Vec<&SeriesDrift> = window.series.iter().filter(|s| all || s.level > Level::Ok).collect();
            if shown.is_empty() {
                let _ = writeln!(out, "    every series under the warn threshold");
                continue;
            }
            let _ = writeln!(out, "    {:<32} {:<10} {:>8} {:>8}  level", "series", "kind", "psi", "ks");
            for s in shown {
                let kind = match s.kind {
                    SeriesKind::Feature => "feature",
                    SeriesKind::Prediction => "prediction",
                };
                let _ = writeln!(
                    out,
                    "    {:<32} {kind:<10} {:>8} {:>8}  {}",
                    s.name,
                    number(s.psi),
                    number(s.ks),
                    s.level.label()
                );
            }
        }
        for c in &self.concept {
            let _ = writeln!(
                out,
                "  champion {} over the {} window: {} ({} labelled rows; holdout {})",
                c.metric,
                c.window,
                number(c.value),
                c.labelled_rows,
                number(c.holdout)
            );
        }
        out
    }
}

fn state_label(state: State) -> &'static str {
    match state {
        State::InsufficientData => "insufficient data",
        State::Ok => "ok",
        State::Warn => "warn",
        State::Alert => "alert",
    }
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}
