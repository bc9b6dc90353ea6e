//! The promotion policy: promote a challenger that is better with evidence that stays valid under
//! continuous monitoring, and roll back a promotion that turns out worse.
//!
//! The evidence is each pair's mixture sequential probability ratio (`stats::sequential`): under
//! "no difference" it is a martingale, so by Ville's inequality the chance it *ever* reaches
//! `1/alpha` is at most `alpha`, however often it is looked at. A fixed-sample p-value checked
//! after every label would cross `alpha` far more often. Checked here after every label batch.
//!
//! Invariant: pure. `decide` reads a `Comparison` and the deployment's ids and returns what to do;
//! the caller (the live join) applies it through the registry.

use serde::{Deserialize, Serialize};

use super::Comparison;
use crate::registry::Status;
use crate::repository::VersionId;

/// One deployment's policy (`models.<name>.policy`); off unless `enabled`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    pub enabled: bool,
    /// Decide and record (log and audit), but change nothing.
    pub dry_run: bool,
    /// Labelled pairs of champion and challenger before any decision.
    pub min_labelled_pairs: u64,
    /// The sequential test's level: the chance of promoting a challenger that is no better.
    pub alpha: f64,
    /// Smallest improvement worth a promotion: accuracy (0.01 = one point) or MAE saved per row.
    pub min_improvement: f64,
    /// The challenger's p99 model latency must stay within this.
    pub max_p99_ms: Option<f64>,
    /// The challenger's share of failed results (error, panic, timeout) must stay within this.
    pub max_error_rate: f64,
    /// After a promotion, return to the replaced champion (which keeps shadowing) if it proves better.
    pub rollback: bool,
    /// Refuse a promotion while the challenger is significantly worse than the champion on any
    /// slice (`[models.<name>.slices]`; the report's `worse_slices`), whatever it does overall.
    pub guard_slices: bool,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            dry_run: false,
            min_labelled_pairs: 200,
            alpha: 0.05,
            min_improvement: 0.0,
            max_p99_ms: None,
            max_error_rate: 0.01,
            rollback: true,
            guard_slices: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Decision {
    /// Make `version` the champion.
    Promote { version: VersionId, evidence: Evidence },
    /// Return to `version`, the champion the current one replaced.
    Rollback { version: VersionId, evidence: Evidence },
    /// `version` would be promoted, but it is significantly worse on these slices
    /// (`guard_slices`): nothing changes, and the audit says why.
    Hold { version: VersionId, evidence: Evidence, worse_slices: Vec<super::SliceReport> },
}

/// The figures behind a decision, for the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub champion: String,
    pub challenger: String,
    /// Labelled pairs since the champion last changed: the only ones the decision rests on.
    pub labelled_pairs: u64,
    /// Challenger's improvement over those pairs: accuracy gained, or absolute error saved per row.
    pub improvement: f64,
    /// The always-valid p-value over those pairs, `1 / max Λ`.
    pub sequential_p_value: f64,
    /// `family` times it: the decision is taken when this is at most `alpha`.
    pub adjusted_sequential_p_value: f64,
    pub alpha: f64,
    /// Challengers tested together (the family `alpha` holds for).
    pub family: usize,
    /// Champion changes the comparison's records show before this decision: the evidence is what
    /// joined after the last of them.
    pub changes_before: u32,
    pub challenger_p99_ms: Option<f64>,
    pub challenger_error_rate: f64,
}

impl Decision {
    pub fn evidence(&self) -> &Evidence {
        match self {
            Self::Promote { evidence, .. } | Self::Rollback { evidence, .. } | Self::Hold { evidence, .. } => evidence,
        }
    }
}

/// What the policy would do now, if anything: the challenger with the largest qualifying
/// improvement is promoted; if it is the champion's predecessor, that is a rollback.
pub fn decide(
    comparison: &Comparison,
    champion: &VersionId,
    challengers: &[VersionId],
    previous: Option<&VersionId>,
    settings: &PolicySettings,
) -> Option<Decision> {
    let family = challengers.len().max(1);
    let threshold = (family as f64 / settings.alpha).ln();
    let mut best: Option<(VersionId, Evidence)> = None;
    for challenger in challengers {
        let Some(pair) = comparison.pair(champion, challenger) else { continue };
        let fresh = &pair.fresh;
        let improvement = if fresh.labelled == 0 { 0.0 } else { fresh.d_sum / fresh.labelled as f64 };
        // Cheap tests first: this runs after every label.
        if fresh.labelled < settings.min_labelled_pairs
            || fresh.max_ln_ratio < threshold
            || improvement <= settings.min_improvement.max(0.0)
            || best.as_ref().is_some_and(|(_, e)| e.improvement >= improvement)
        {
            continue;
        }
        let Some(stats) = comparison.models.get(challenger) else { continue };
        let p99 = (!stats.latency_us.is_empty()).then(|| stats.latency_us.value_at_quantile(0.99) as f64 / 1e3);
        let failed =
            [Status::Error, Status::Panic, Status::Timeout].iter().map(|s| stats.statuses[s.index()]).sum::<u64>();
        let error_rate = if stats.records == 0 { 0.0 } else { failed as f64 / stats.records as f64 };
        if settings.max_p99_ms.is_some_and(|max| p99.is_none_or(|p| p > max)) || error_rate > settings.max_error_rate {
            continue;
        }
        let sequential_p_value = (-fresh.max_ln_ratio).exp().min(1.0);
        let evidence = Evidence {
            champion: champion.to_string(),
            challenger: challenger.to_string(),
            labelled_pairs: fresh.labelled,
            improvement,
            sequential_p_value,
            adjusted_sequential_p_value: (sequential_p_value * family as f64).min(1.0),
            alpha: settings.alpha,
            family,
            changes_before: comparison.changes,
            challenger_p99_ms: p99,
            challenger_error_rate: error_rate,
        };
        best = Some((challenger.clone(), evidence));
    }
    let (version, evidence) = best?;
    if previous == Some(&version) {
        return settings.rollback.then_some(Decision::Rollback { version, evidence });
    }
    if settings.guard_slices {
        // The report's slice verdicts, adjusted over the champion's family: read only when a
        // promotion is otherwise due, which is rare.
        let report = comparison.report();
        let pair = report.pairs.iter().find(|p| p.champion == champion.as_str() && p.challenger == version.as_str());
        let worse_slices: Vec<super::SliceReport> = pair
            .map(|p| p.slices.iter().filter(|s| s.verdict == super::Verdict::Worse).cloned().collect())
            .unwrap_or_default();
        if !worse_slices.is_empty() {
            return Some(Decision::Hold { version, evidence, worse_slices });
        }
    }
    Some(Decision::Promote { version, evidence })
}
