//! The report as a table for people: what `gauntlet report` prints.

use std::fmt::Write as _;

use super::report::Report;

impl Report {
    /// A table for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({}): {} paired records, {} with ground truth",
            self.model, self.task, self.records, self.labelled_records
        );
        if let Some(snapshot) = &self.snapshot {
            let _ = writeln!(
                out,
                "the cluster's figures, by its analyst {} at {} ({:.1} s ago)",
                snapshot.analyst, snapshot.as_of, snapshot.age_s
            );
        }
        let _ = writeln!(out);
        let metric_header =
            if self.task == "classification" { "accuracy  log_loss  brier" } else { "     mae      rmse" };
        let _ = writeln!(
            out,
            "{:<8} {:>8} {:>7} {:>6} {:>6} {:>8} {:>6} {:>9} {:>9} {:>8}  {}",
            "version",
            "records",
            "ok",
            "error",
            "panic",
            "timeout",
            "shed",
            "p50 ms",
            "p99 ms",
            "labelled",
            metric_header
        );
        for m in &self.models {
            let metrics = if self.task == "classification" {
                format!("{:>8}  {:>8}  {:>5}", opt(m.accuracy, 4), opt(m.log_loss, 4), opt(m.brier, 4))
            } else {
                format!("{:>8}  {:>8}", opt(m.mae, 3), opt(m.rmse, 3))
            };
            let _ = writeln!(
                out,
                "{:<8} {:>8} {:>7} {:>6} {:>6} {:>8} {:>6} {:>9} {:>9} {:>8}  {}",
                m.version,
                m.records,
                m.ok,
                m.errors,
                m.panics,
                m.timeouts,
                m.shed,
                opt(m.latency_p50_ms, 3),
                opt(m.latency_p99_ms, 3),
                m.labelled_rows,
                metrics
            );
        }
        for m in self.models.iter().filter(|m| m.estimated_accuracy.is_some()) {
            let _ = writeln!(
                out,
                "version {} label-free (CBPE): estimated accuracy {} over every record; on the labelled ones {} (realised {}, error {}); calibration: {}",
                m.version,
                opt(m.estimated_accuracy, 4),
                opt(m.estimated_accuracy_labelled, 4),
                opt(m.accuracy, 4),
                opt(m.estimate_error, 4),
                m.estimate_calibration.as_deref().unwrap_or("-")
            );
        }
        if !self.pairs.is_empty() && !self.correction.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "alpha {} for each champion's challengers together: {}", self.alpha, self.correction);
        }
        for p in &self.pairs {
            let _ = writeln!(out);
            let _ = writeln!(out, "champion {} vs challenger {}: {}", p.champion, p.challenger, p.verdict);
            let _ = writeln!(
                out,
                "  coverage {}  agreement {} over {} rows{}  divergence {} ({})",
                opt(p.coverage, 4),
                opt(p.agreement, 4),
                p.compared_rows,
                p.correlation.map_or(String::new(), |r| format!("  correlation {r:.4}")),
                opt(p.divergence, 4),
                p.divergence_measure
            );
            let _ = writeln!(
                out,
                "  {} labelled pairs: {} {}, sequential p = {} (adjusted {})",
                p.labelled_pairs,
                p.metric,
                paired(
                    [p.champion_metric, p.challenger_metric],
                    p.improvement,
                    p.improvement_ci,
                    &p.test,
                    [p.p_value, p.adjusted_p_value]
                ),
                p_value(p.sequential_p_value),
                p_value(p.adjusted_sequential_p_value)
            );
            if let Some(more) = p.more_pairs_needed.filter(|m| *m > 0) {
                let _ =
                    writeln!(out, "  about {more} more labelled pairs would show whether the current effect is real");
            }
            for s in &p.slices {
                let _ = writeln!(
                    out,
                    "  slice {:<16} {:>6} labelled: {}: {}{}",
                    s.slice,
                    s.labelled_pairs,
                    paired(
                        [s.champion_metric, s.challenger_metric],
                        s.improvement,
                        s.improvement_ci,
                        &s.test,
                        [s.p_value, s.adjusted_p_value]
                    ),
                    s.verdict,
                    if s.flagged { "  << WORSE HERE, better overall" } else { "" }
                );
            }
        }
        if let Some(policy) = &self.policy {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "policy replayed: started with champion {}, ends with {} (challengers {})",
                policy.started_with.as_deref().unwrap_or("-"),
                policy.champion.as_deref().unwrap_or("-"),
                policy.challengers.join(", ")
            );
            if policy.decisions.is_empty() {
                let _ = writeln!(out, "  no decision");
            }
            for d in &policy.decisions {
                let _ = writeln!(
                    out,
                    "  {} {}: {} {} over {} labelled pairs since the last change, improvement {:.4}, sequential p = {} (adjusted {})",
                    d.at.as_deref().unwrap_or("-"),
                    d.from,
                    d.action,
                    d.version,
                    d.labelled_pairs,
                    d.evidence.improvement,
                    p_value(d.evidence.sequential_p_value),
                    p_value(d.evidence.adjusted_sequential_p_value)
                );
            }
        }
        out
    }
}

/// A figure to `digits` places, or "-".
fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// "champion vs challenger, improvement (95% CI), test p = (adjusted)": how a pair and a slice print.
fn paired(
    metrics: [Option<f64>; 2],
    improvement: Option<f64>,
    ci: Option<[f64; 2]>,
    test: &str,
    p: [Option<f64>; 2],
) -> String {
    format!(
        "{} vs {}, improvement {} (95% CI {}), {test} p = {} (adjusted {})",
        opt(metrics[0], 4),
        opt(metrics[1], 4),
        opt(improvement, 4),
        ci.map_or("-".into(), |[lo, hi]| format!("{lo:.4} .. {hi:.4}")),
        p[0].map_or("-".into(), p_value),
        p[1].map_or("-".into(), p_value),
    )
}

fn p_value(p: f64) -> String {
    if p < 1e-4 { format!("{p:.1e}") } else { format!("{p:.4}") }
}
