//! What survives a restart: each model's champion, challengers, sampling and rollback history, and
//! the audit log of every change, behind `DeploymentStore`. The embedded default is `StateFiles`:
//! `deployments.json`, replaced atomically, and `audit.jsonl`, appended and synced. A cluster's
//! store (`cluster::PgStore`) is shared by every replica: each save is a compare-and-set on the
//! model's revision, so of two changes made from the same revision one wins and one is refused.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::repository::VersionId;

pub const STATE_FILE: &str = "deployments.json";
pub const AUDIT_FILE: &str = "audit.jsonl";

/// One model's deployment as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentState {
    pub champion: VersionId,
    pub challengers: Vec<VersionId>,
    pub shadow_sample_rate: f64,
    /// Every loaded version (champion and challengers included).
    pub versions: Vec<VersionId>,
    /// Earlier champions, most recent last: what `rollback` returns to.
    #[serde(default)]
    pub previous: Vec<VersionId>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    models: BTreeMap<String, DeploymentState>,
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    #[serde(serialize_with = "crate::json::rfc3339::serialize")]
    pub timestamp: SystemTime,
    pub model: &'a str,
    pub action: &'a str,
    /// Who: the name of the token that made the call (`crate::auth`), `loopback` without one,
    /// `policy` or `repository` for the gateway's own changes.
    pub actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
    pub from: &'a DeploymentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a DeploymentState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// "ok", or "refused" with `error`.
    pub result: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Figures behind a policy decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<&'a serde_json::Value>,
}

/// One model's saved deployment and its revision: 1 for the first save, one more for each after.
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    pub state: DeploymentState,
    pub revision: u64,
}

/// Why a store did not save (or load).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another change was saved first: the model is at `revision` now, not at the one this change
    /// was worked out from.
    #[error(
        "another change was saved first: {model} is at revision {revision} now, not {base}; nothing changed here (look at the deployment again and retry)"
    )]
    Conflict { model: String, base: u64, revision: u64 },
    /// The store cannot be reached now; it names itself.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where deployments are saved and changes audited. The registry saves before it swaps, so a swap
/// that happened is in the store; it calls the store only while it holds its change lock.
pub trait DeploymentStore: Send + Sync {
    /// The saved deployments by model; empty when nothing was saved.
    fn load(&self) -> Result<BTreeMap<String, Saved>, StoreError>;
    /// Saves `state` as model `name`'s deployment if the store still has it at revision `base`
    /// (0: it has none yet), and returns the new revision. `all` is every model's state with
    /// `name`'s replaced, for stores that keep them together.
    fn save(
        &self,
        name: &str,
        state: &DeploymentState,
        base: u64,
        all: &BTreeMap<String, DeploymentState>,
    ) -> Result<u64, StoreError>;
    /// Appends one entry to the audit log; a failure is logged, not returned (the change stands).
    fn audit(&self, entry: &AuditEntry<'_>);
    /// Model `name`'s audit entries, newest first, at most `limit`.
    fn history(&self, name: &str, limit: usize) -> Result<Vec<serde_json::Value>, StoreError>;
    /// Where the saved deployments are, for messages; `None` when nothing is kept.
    fn location(&self) -> Option<String>;
    /// Whether other replicas share this store: its deployments may then name a version this
    /// replica cannot load yet, which it reports (not converged) instead of refusing to start.
    fn is_shared(&self) -> bool {
        false
    }
}

/// The state directory; `None` keeps nothing (changes last until restart).
#[derive(Debug)]
pub struct StateFiles {
    dir: Option<PathBuf>,
}

impl StateFiles {
    pub fn open(dir: Option<&Path>) -> io::Result<Self> {
        if let Some(dir) = dir {
            fs::create_dir_all(dir)?;
        }
        Ok(Self { dir: dir.map(Path::to_owned) })
    }

    pub fn state_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(STATE_FILE))
    }
}

impl DeploymentStore for StateFiles {
    /// The persisted deployments, if any were saved. One process owns the directory, so
    /// revisions are not kept: each saved model starts at 1.
    fn load(&self) -> Result<BTreeMap<String, Saved>, StoreError> {
        let Some(path) = self.state_path() else { return Ok(BTreeMap::new()) };
        match fs::read(&path) {
            Ok(bytes) => {
                let file: StateFile = serde_json::from_slice(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
                Ok(file.models.into_iter().map(|(name, state)| (name, Saved { state, revision: 1 })).collect())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the state file: write a temporary file, sync it, rename it over, sync the directory.
    /// The registry's change lock is the only writer, so the revision needs no check.
    fn save(
        &self,
        _name: &str,
        _state: &DeploymentState,
        base: u64,
        all: &BTreeMap<String, DeploymentState>,
    ) -> Result<u64, StoreError> {
        let (Some(dir), Some(path)) = (&self.dir, self.state_path()) else { return Ok(base + 1) };
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        serde_json::to_writer_pretty(&mut file, &StateFile { models: all.clone() }).map_err(io::Error::from)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(base + 1)
    }

    /// Appends one audit line and syncs it: changes are rare, and each must be on record.
    fn audit(&self, entry: &AuditEntry<'_>) {
        let Some(dir) = &self.dir else { return };
        let result = (|| {
            let mut file = OpenOptions::new().create(true).append(true).open(dir.join(AUDIT_FILE))?;
            let mut line = serde_json::to_vec(entry)?;
            line.push(b'\n');
            file.write_all(&line)?;
            file.sync_data()
        })();
        if let Err(error) = result {
            tracing::error!(%error, "could not append to the audit log");
        }
    }

    /// Read through once, keeping only the newest `limit` of the model's lines.
    fn history(&self, name: &str, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let Some(dir) = &self.dir else { return Ok(Vec::new()) };
        let file = match fs::File::open(dir.join(AUDIT_FILE)) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut newest = std::collections::VecDeque::with_capacity(limit.min(1024));
        for line in io::BufRead::lines(io::BufReader::new(file)) {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line?) else { continue };
            if entry["model"] == name && limit > 0 {
                if newest.len() == limit {
                    newest.pop_front();
                }
                newest.push_back(entry);
            }
        }
        Ok(newest.into_iter().rev().collect())
    }

    fn location(&self) -> Option<String> {
        self.state_path().map(|path| path.display().to_string())
    }
}
