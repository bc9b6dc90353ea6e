//! The thread that keeps one replica in step with the store: it listens for the deployments'
//! notifications, reads every row on each one, on (re)connect and every `poll_interval_ms`,
//! applies newer revisions through `Registry::follow`, seeds the models the store has not got,
//! and writes this replica's heartbeat. It is the only code that waits on the store's answers
//! without a caller waiting on it; requests never do.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use metrics::{counter, gauge};
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::Shared;
use super::store::{Connect, Connector};
use crate::background::{Priority, lower_priority, sleep_unless};
use crate::metrics as names;
use crate::registry::{ChangeError, DeploymentState, Registry, StoreError};

/// The longest the thread waits without looking at `closing`.
const TICK: Duration = Duration::from_millis(200);
/// Rows of replicas silent this long are removed (a replica that died without saying goodbye).
const FORGET_AFTER: &str = "10 minutes";

pub struct Follower {
    connector: Arc<Connector>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    id: String,
    address: String,
    started_at: SystemTime,
    /// The store's revision of each model, as last read.
    latest: BTreeMap<String, u64>,
}

impl Follower {
    pub fn new(
        connector: Arc<Connector>,
        shared: Arc<Shared>,
        registry: Arc<Registry>,
        id: String,
        address: String,
    ) -> Self {
        Self { connector, shared, registry, id, address, started_at: SystemTime::now(), latest: BTreeMap::new() }
    }

    pub fn run(mut self) {
        // Applying a change loads and warms up models: below the request threads.
        lower_priority(Priority::Low);
        let mut backoff = Duration::from_millis(100);
        let mut was_down = false;
        while !self.closing() {
            let mut client = match self.connector.connect_migrated() {
                Ok(client) => client,
                Err(failure) => {
                    let message = match failure {
                        Connect::Down(error) => error.to_string(),
                        Connect::Fatal(error) => error.to_string(),
                    };
                    self.set_up(false);
                    if !was_down {
                        tracing::warn!(error = %message, "the cluster store is out of reach; retrying");
                        was_down = true;
                    }
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if was_down {
                tracing::info!(store = %self.connector.location(), "the cluster store is back");
            }
            backoff = Duration::from_millis(100);
            self.set_up(true);
            match self.follow(&mut client) {
                Ok(()) => {
                    self.goodbye(&mut client);
                    return;
                }
                Err(error) => {
                    self.set_up(false);
                    tracing::warn!(%error, "lost the cluster store; reconnecting");
                    was_down = true;
                }
            }
        }
    }

    /// Listens and keeps in step until closing (`Ok`) or the connection fails.
    fn follow(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        client.batch_execute(&format!("LISTEN {}", self.connector.channel()))?;
        let poll = Duration::from_millis(self.connector.settings().poll_interval_ms);
        let beat = Duration::from_millis(self.connector.settings().heartbeat_interval_ms);
        let (mut next_sync, mut next_beat) = (Instant::now(), Instant::now());
        while !self.closing() {
            let now = Instant::now();
            if now >= next_sync {
                if self.sync(client)? {
                    // Something failed to apply, or a seed lost its race: look again soon.
                    next_sync = now + poll.min(Duration::from_secs(1));
                } else {
                    next_sync = now + poll;
                }
                // Say at once what was just applied: `/admin/cluster` shows convergence promptly.
                next_beat = now;
            }
            if now >= next_beat {
                self.heartbeat(client)?;
                next_beat = now + beat;
            }
            let wait = next_sync.min(next_beat).saturating_duration_since(Instant::now()).min(TICK);
            let mut notifications = client.notifications();
            let mut heard = notifications.timeout_iter(wait).next()?.is_some();
            // Several changes at once: one read covers them all.
            while notifications.iter().next()?.is_some() {
                heard = true;
            }
            if heard {
                next_sync = Instant::now();
            }
        }
        Ok(())
    }

    /// Reads every deployment row and applies what is newer; seeds the models without one.
    /// Returns whether to look again soon.
    fn sync(&mut self, client: &mut Client) -> Result<bool, postgres::Error> {
        let s = self.connector.schema().to_owned();
        let rows = client.query(&format!("SELECT model, revision, spec FROM {s}.deployments"), &[])?;
        let mut again = false;
        let mut in_store = BTreeSet::new();
        for row in rows {
            let model: String = row.get(0);
            let revision = row.get::<_, i64>(1) as u64;
            in_store.insert(model.clone());
            let Some(served) = self.registry.model(&model) else { continue };
            self.latest.insert(model.clone(), revision);
            if served.revision() >= revision {
                self.solved(&model);
                continue;
            }
            let state: DeploymentState = match serde_json::from_value(row.get(2)) {
                Ok(state) => state,
                Err(error) => {
                    self.problem(&model, format!("revision {revision} is not a deployment this binary reads: {error}"));
                    continue;
                }
            };
            match self.registry.follow(&model, &state, revision) {
                Ok(_) => self.solved(&model),
                Err(error) => {
                    counter!(names::CLUSTER_FOLLOW_FAILURES, "model" => model.clone()).increment(1);
                    tracing::error!(model, revision, %error, "cannot apply the store's deployment; serving what was there");
                    self.problem(&model, format!("cannot apply revision {revision}: {error}"));
                    again = true;
                }
            }
        }
        let unseeded: Vec<String> =
            self.registry.models().map(|m| m.name().to_owned()).filter(|m| !in_store.contains(m)).collect();
        for model in unseeded {
            match self.registry.seed(&model) {
                Ok(revision) => {
                    if let Some(revision) = revision {
                        self.latest.insert(model, revision);
                    }
                }
                // Another replica seeded it first: its row is read next time round.
                Err(ChangeError::Persist(StoreError::Conflict { .. })) => again = true,
                Err(error) => {
                    self.problem(&model, format!("cannot seed the store: {error}"));
                    again = true;
                }
            }
        }
        for model in self.registry.models() {
            gauge!(names::CLUSTER_REVISION, "model" => model.name().to_owned()).set(model.revision() as f64);
        }
        if self.registry.models().all(|m| m.revision() > 0) && !self.shared.synced.swap(true, Ordering::AcqRel) {
            tracing::info!("in step with the cluster store: ready");
        }
        gauge!(names::CLUSTER_CONVERGED).set(if self.converged() { 1.0 } else { 0.0 });
        Ok(again)
    }

    /// This replica serves the store's latest revision of every model it has.
    fn converged(&self) -> bool {
        self.shared.problems.lock().is_empty()
            && self.registry.models().all(|m| self.latest.get(m.name()).is_some_and(|&r| m.revision() == r))
    }

    fn heartbeat(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let s = self.connector.schema();
        let applied: BTreeMap<&str, u64> = self.registry.models().map(|m| (m.name(), m.revision())).collect();
        let applied = serde_json::to_value(applied).expect("a map of numbers");
        let problems = self.shared.problems.lock().iter().map(|(m, p)| format!("{m}: {p}")).collect::<Vec<_>>();
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        client.execute(
            &format!(
                "INSERT INTO {s}.replicas (id, address, started_at, heartbeat_at, applied, converged, problem, binary_version) \
                 VALUES ($1, $2, $3, now(), $4, $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, started_at = EXCLUDED.started_at, \
                 heartbeat_at = now(), applied = EXCLUDED.applied, converged = EXCLUDED.converged, \
                 problem = EXCLUDED.problem, binary_version = EXCLUDED.binary_version"
            ),
            &[
                &self.id,
                &self.address,
                &self.started_at,
                &applied,
                &self.converged(),
                &problem,
                &env!("CARGO_PKG_VERSION"),
            ],
        )?;
        client.execute(
            &format!("DELETE FROM {s}.replicas WHERE heartbeat_at < now() - interval '{FORGET_AFTER}'"),
            &[],
        )?;
        Ok(())
    }

    /// A replica that stops takes its row out: the cluster's view is of replicas that serve.
    fn goodbye(&self, client: &mut Client) {
        let s = self.connector.schema();
        if let Err(error) = client.execute(&format!("DELETE FROM {s}.replicas WHERE id = $1"), &[&self.id]) {
            tracing::warn!(%error, "could not remove this replica's row from the cluster store");
        }
    }

    fn problem(&self, model: &str, problem: String) {
        self.shared.problems.lock().insert(model.to_owned(), problem);
    }

    fn solved(&self, model: &str) {
        self.shared.problems.lock().remove(model);
    }

    fn set_up(&self, up: bool) {
        self.shared.store_up.store(up, Ordering::Release);
        gauge!(names::CLUSTER_STORE_UP).set(if up { 1.0 } else { 0.0 });
    }

    fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    fn sleep(&self, total: Duration) {
        sleep_unless(&self.shared.closing, total, TICK);
    }
}
