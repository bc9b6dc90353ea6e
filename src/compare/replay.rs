//! The promotion policy replayed on history: `gauntlet report --log … --policy` (and `--database`).
//!
//! The logged records and labels are fed in time order to the same `OfflineComparison` the report
//! uses, and after each label that joins (when the live join consults the policy) the model's
//! policy is asked, as `Promotion` asks it live, what it would do. A decision is applied to a
//! simulated deployment, as `Registry::apply` would apply it (the replaced champion keeps
//! shadowing), and from then on the records are read with that champion: every version scored
//! each shadowed request, so the log says what the new pairs would have seen. On a log written
//! with the policy live, the replay's decisions are the live ones. Pure: no file is opened here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::offline::{OfflineComparison, ReadSummary};
use super::policy::{self, Decision, Evidence, PolicySettings};
use super::{CompareSettings, Comparison};
use crate::outcomes::reader::Line;
use crate::registry::Role;
use crate::repository::VersionId;

/// What the policy would have decided for one model, in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Replayed {
    /// The deployment the log began with, and the one the decisions lead to.
    pub started_with: Option<String>,
    pub champion: Option<String>,
    pub challengers: Vec<String>,
    pub decisions: Vec<ReplayedDecision>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplayedDecision {
    /// "promote" or "rollback".
    pub action: String,
    pub version: String,
    /// The champion it replaced.
    pub from: String,
    /// Labelled pairs it rests on (joined since the champion last changed).
    pub labelled_pairs: u64,
    /// The time of the log line that brought the label it was decided on.
    pub at: Option<String>,
    pub evidence: Evidence,
}

struct Simulated {
    champion: VersionId,
    challengers: Vec<VersionId>,
    previous: Vec<VersionId>,
    replayed: Replayed,
}

/// The replay of every model's policy over log lines fed in time order.
pub struct PolicyReplay {
    offline: OfflineComparison,
    policies: BTreeMap<String, PolicySettings>,
    models: BTreeMap<String, Simulated>,
}

impl PolicyReplay {
    /// `policies`: each model's policy as configured; it is replayed whether `enabled` or not
    /// (trying one before switching it on is the point), and a dry run decides as a live one would.
    pub fn new(settings: CompareSettings, policies: BTreeMap<String, PolicySettings>) -> Self {
        Self { offline: OfflineComparison::new(settings), policies, models: BTreeMap::new() }
    }

    pub fn line(&mut self, line: Option<Line>) {
        let Some(line) = line else {
            self.offline.line(None);
            return;
        };
        let (model, at) = (line.model.clone(), line.timestamp.clone());
        // The deployment as the first record of the model shows it.
        if !self.models.contains_key(&model)
            && line.kind.as_deref() != Some("feedback")
            && let Some(champion) = line.results.iter().find(|r| r.role == Role::Champion)
        {
            let challengers: Vec<VersionId> =
                line.results.iter().filter(|r| r.role == Role::Challenger).map(|r| r.version.clone()).collect();
            let replayed = Replayed { started_with: Some(champion.version.to_string()), ..Replayed::default() };
            let simulated = Simulated { champion: champion.version.clone(), challengers, previous: vec![], replayed };
            self.models.insert(model.clone(), simulated);
        }
        if !self.offline.line(Some(line)) {
            return;
        }
        let (Some(settings), Some(simulated), Some(comparison)) =
            (self.policies.get(&model), self.models.get_mut(&model), self.offline.comparison(&model))
        else {
            return;
        };
        if let Some(version) = consult(comparison, simulated, settings, at) {
            self.offline.set_champion(&model, version);
        }
    }

    /// Each model's replayed decisions, the comparisons they were made on, and what the lines held.
    pub fn finish(self, files: usize) -> (BTreeMap<String, Replayed>, BTreeMap<String, Comparison>, ReadSummary) {
        let replayed = self
            .models
            .into_iter()
            .map(|(model, mut s)| {
                s.replayed.champion = Some(s.champion.to_string());
                s.replayed.challengers = s.challengers.iter().map(ToString::to_string).collect();
                (model, s.replayed)
            })
            .collect();
        let (comparisons, summary) = self.offline.finish(files);
        (replayed, comparisons, summary)
    }
}

/// Asks the policy, and applies its decision to the simulated deployment as the registry applies
/// a promotion (keeping the replaced champion as a challenger) or a rollback; the new champion.
fn consult(
    comparison: &Comparison,
    simulated: &mut Simulated,
    settings: &PolicySettings,
    at: Option<String>,
) -> Option<VersionId> {
    let decision =
        policy::decide(comparison, &simulated.champion, &simulated.challengers, simulated.previous.last(), settings)?;
    let from = simulated.champion.clone();
    let (action, version) = match &decision {
        Decision::Promote { version, .. } => {
            simulated.previous.push(from.clone());
            ("promote", version.clone())
        }
        Decision::Rollback { version, .. } => {
            simulated.previous.pop();
            ("rollback", version.clone())
        }
        // A held promotion changes nothing (the live policy audits it once).
        Decision::Hold { .. } => return None,
    };
    simulated.challengers.retain(|c| *c != version);
    simulated.challengers.insert(0, from.clone());
    simulated.champion = version.clone();
    let evidence = decision.evidence().clone();
    simulated.replayed.decisions.push(ReplayedDecision {
        action: action.to_owned(),
        version: version.to_string(),
        from: from.to_string(),
        labelled_pairs: evidence.labelled_pairs,
        at,
        evidence,
    });
    Some(version)
}
