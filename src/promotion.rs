//! The promotion policy at work: when a model's comparison gains labels, `compare::policy::decide`
//! looks at it, and a decision to promote or roll back is applied through `Registry::apply`, as an
//! operator's change would be (load → validate → warm up → save → swap → audit).
//!
//! Invariants: the policy acts only through the registry, and every decision (a dry run's too) is
//! audited with its evidence; a dry run records each distinct decision once, not after every label.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::compare::Comparison;
use crate::compare::policy::{self, Decision, PolicySettings};
use crate::join::Listener;
use crate::registry::{Change, Origin, Registry};

/// Each model's policy, acting on its comparison as the join keeps it.
pub struct Promotion {
    registry: Arc<Registry>,
    policies: BTreeMap<String, PolicySettings>,
    /// The last decision a dry-run policy recorded per model (action, champion, version), so each is
    /// recorded once rather than after every label.
    dry_run_noted: BTreeMap<String, (&'static str, String, String)>,
    /// The last hold audited per model (champion, challenger and slices), so it is audited once.
    held_noted: BTreeMap<String, (&'static str, String, String)>,
}

impl Promotion {
    pub fn new(registry: Arc<Registry>, policies: BTreeMap<String, PolicySettings>) -> Self {
        Self { registry, policies, dry_run_noted: BTreeMap::new(), held_noted: BTreeMap::new() }
    }
}

impl Listener for Promotion {
    /// Lets the model's policy, if enabled, act on the comparison as it now stands.
    fn compared(&mut self, model: &str, comparison: &Comparison) {
        let Some(settings) = self.policies.get(model).filter(|p| p.enabled) else { return };
        let Some(served) = self.registry.model(model) else { return };
        let deployment = served.deployment();
        let champion = deployment.champion().version().clone();
        let challengers: Vec<_> = deployment.challengers().iter().map(|c| c.version().clone()).collect();
        let Some(decision) =
            policy::decide(comparison, &champion, &challengers, deployment.previous().last(), settings)
        else {
            return;
        };
        let evidence = serde_json::to_value(decision.evidence()).ok();
        let (change, version, reason) = match &decision {
            Decision::Promote { version, .. } => (
                Change::Promote { version: version.clone(), keep_previous: true },
                version,
                "the challenger is better by the sequential test",
            ),
            Decision::Rollback { version, .. } => {
                (Change::Rollback, version, "the champion it replaced is better by the sequential test")
            }
            Decision::Hold { version, worse_slices, .. } => {
                // Audited once per champion, challenger and set of slices: it holds after every label.
                let names: Vec<&str> = worse_slices.iter().map(|s| s.slice.as_str()).collect();
                let key = ("hold", champion.to_string(), format!("{version}:{}", names.join(",")));
                if self.held_noted.get(model) != Some(&key) {
                    let mut evidence = serde_json::to_value(decision.evidence()).unwrap_or_default();
                    evidence["worse_slices"] = serde_json::to_value(worse_slices).unwrap_or_default();
                    let reason = format!(
                        "better by the sequential test, but significantly worse on slice {} (guard_slices)",
                        names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                    );
                    tracing::warn!(model, version = %version, slices = ?names, "the policy holds a promotion: worse on a slice");
                    let origin = Origin { actor: "policy", reason: Some(&reason), evidence: Some(&evidence) };
                    self.registry.record_decision(model, "promote", version, origin, "refused");
                    self.held_noted.insert(model.to_owned(), key);
                }
                return;
            }
        };
        let origin = Origin { actor: "policy", reason: Some(reason), evidence: evidence.as_ref() };
        if settings.dry_run {
            let key = (change.action(), champion.to_string(), version.to_string());
            if self.dry_run_noted.get(model) != Some(&key) {
                tracing::info!(model, action = change.action(), version = %version, ?evidence, "policy (dry run) would act");
                self.registry.record_decision(model, change.action(), version, origin, "dry_run");
                self.dry_run_noted.insert(model.to_owned(), key);
            }
            return;
        }
        if let Err(error) = self.registry.apply(model, &change, origin) {
            tracing::error!(model, %error, "the policy's change was refused");
        }
    }
}
