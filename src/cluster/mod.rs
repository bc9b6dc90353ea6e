//! Many replicas, one deployment: each model's champion, challengers and sampling shared through
//! PostgreSQL (`[cluster] database_url`). Without it the gateway is one node with files on disk.
//!
//! The store is in the middle of every change, never of a request:
//! - A change made on any replica goes through the registry's one path (load → validate → warm up)
//!   and is saved with a compare-and-set on the model's revision (`PgStore`); of two changes made
//!   from the same revision one wins and the other is refused (409, naming the revision).
//! - The commit notifies every replica (`NOTIFY`); each one's follower thread reads the row and
//!   applies it through the same loading path (`Registry::follow`). It also reads every row on
//!   (re)connect and every `poll_interval_ms`, so a lost notification costs seconds, not
//!   correctness.
//! - A replica that cannot apply a revision (a version missing from its disk) keeps serving what it
//!   had, says so in its heartbeat row, a metric and `/admin/cluster`, and tries again.
//! - With the database down every replica serves what it last applied; changes answer 503. A
//!   replica that starts without having read the store is not ready until it has.
//!
//! `schema` creates and migrates the tables (under an advisory lock, only adding), `store` is the
//! `DeploymentStore` and the connection, `follower` the thread that keeps a replica in step.

mod follower;
mod forward;
mod schema;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use self::schema::SCHEMA_VERSION;
pub use self::store::{Connect, Connector, PgStore, chain};

use crate::registry::{Registry, StoreError};
use crate::secret::Secret;

/// `[cluster]`: where the replicas meet. All optional; without `database_url`, one node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `postgres://user:password@host:port/database?sslmode=require` (a libpq URL or key=value
    /// string). Set it from a secret: `GAUNTLET_CLUSTER__DATABASE_URL`.
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// The schema the cluster's tables live in: two clusters can share one database.
    #[serde(default = "defaults::name")]
    pub name: String,
    /// This replica's name in the store; unset: the host name and the listen port.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// PEM file of the certificate authorities the store's TLS certificate is checked against, on
    /// top of the public ones (a managed database's own CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Every replica reads every deployment this often, notification or not.
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How often a replica writes its heartbeat row (what it has applied, whether it converged).
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Connecting to the store gives up after this (a change then answers 503).
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Records and labels not yet in the store (the local outcome log is the spool) beyond which
    /// the oldest are given up on (they stay on disk; counted).
    #[serde(default = "defaults::spool_bytes")]
    pub spool_bytes: u64,
    /// Days of records and labels the store keeps (daily partitions are dropped after).
    #[serde(default = "defaults::retention_days")]
    pub retention_days: u32,
    /// The analyst writes a checkpoint of its comparison after this long with new rows read, or
    /// after `checkpoint_rows` of them, whichever comes first: a successor reads at most about that
    /// much again.
    #[serde(default = "defaults::checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    #[serde(default = "defaults::checkpoint_rows")]
    pub checkpoint_rows: u64,
}

mod defaults {
    pub fn name() -> String {
        "gauntlet".to_owned()
    }
    pub fn poll_interval_ms() -> u64 {
        3000
    }
    pub fn heartbeat_interval_ms() -> u64 {
        1000
    }
    pub fn connect_timeout_ms() -> u64 {
        2000
    }
    pub fn spool_bytes() -> u64 {
        1 << 30
    }
    pub fn retention_days() -> u32 {
        30
    }
    pub fn checkpoint_interval_ms() -> u64 {
        5000
    }
    pub fn checkpoint_rows() -> u64 {
        50_000
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        toml::Value::Table(toml::Table::new()).try_into().expect("the defaults are valid")
    }
}

impl ClusterSettings {
    /// The key at fault and why, if any.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        let identifier = |s: &str| {
            let mut chars = s.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && s.len() <= 63
        };
        if !identifier(&self.name) {
            return Some(("name", format!("'{}' is not a schema name: lower-case letters, digits and _", self.name)));
        }
        if self.replica_id.as_deref().is_some_and(str::is_empty) {
            return Some(("replica_id", "must not be empty".into()));
        }
        for (key, value) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("spool_bytes", self.spool_bytes),
            ("retention_days", u64::from(self.retention_days)),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("checkpoint_rows", self.checkpoint_rows),
        ] {
            if value == 0 {
                return Some((key, "must be greater than 0".into()));
            }
        }
        None
    }
}

/// Why the cluster store stopped startup.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid config key `cluster.{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("the cluster store {store} refused this replica (`cluster.database_url`): {message}")]
    Refused { store: String, message: String },
    #[error(
        "the cluster store {store} has schema version {found}, newer than this binary knows ({known}): upgrade this replica's binary"
    )]
    SchemaTooNew { store: String, found: i32, known: i32 },
    #[error("migrating the cluster store {store}: {message}")]
    Migration { store: String, message: String },
}

/// What the replicas share about this one, and the follower that keeps it in step.
pub struct Cluster {
    connector: Arc<Connector>,
    shared: Arc<Shared>,
    /// The follower and the forwarder.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// State the follower writes and the HTTP side reads.
#[derive(Default)]
struct Shared {
    /// The store has been read, and every model has a revision from it: ready to serve.
    synced: AtomicBool,
    /// The follower's connection is up.
    store_up: AtomicBool,
    closing: AtomicBool,
    /// Why a model is not at the store's revision, by model.
    problems: Mutex<BTreeMap<String, String>>,
}

impl Cluster {
    /// Connects once, creates or migrates the schema, and returns the cluster and the store the
    /// registry saves through. An unreachable database is not an error (the replica starts not
    /// ready); a bad URL, refused credentials, a missing database or a schema newer than this
    /// binary are.
    pub fn open(settings: &ClusterSettings) -> Result<(Self, PgStore), ClusterError> {
        if let Some((key, message)) = settings.invalid() {
            return Err(ClusterError::Config { key, message });
        }
        let connector = Arc::new(Connector::new(settings)?);
        let store = PgStore::open(Arc::clone(&connector))?;
        let cluster = Self { connector, shared: Arc::default(), threads: Mutex::new(Vec::new()) };
        Ok((cluster, store))
    }

    /// Starts the follower for the replica serving at `address` (the bound listen address), and
    /// the forwarder of the outcome log in `outcomes` (its spool) to the store.
    pub fn start(&self, registry: Arc<Registry>, address: SocketAddr, outcomes: PathBuf) {
        let address = advertised(address);
        let id = self.connector.settings().replica_id.clone().unwrap_or_else(|| address.clone());
        self.connector.set_replica(&id);
        tracing::info!(replica = %id, store = %self.connector.location(), "joining the cluster");
        let (connector, shared) = (Arc::clone(&self.connector), Arc::clone(&self.shared));
        let forwarder = forward::Forwarder::new(Arc::clone(&connector), Arc::clone(&shared), outcomes, id.clone());
        let follower = follower::Follower::new(connector, shared, registry, id, address);
        let mut threads = self.threads.lock();
        threads.push(
            std::thread::Builder::new()
                .name("gauntlet-cluster".into())
                .spawn(move || follower.run())
                .expect("spawning the cluster follower"),
        );
        threads.push(
            std::thread::Builder::new()
                .name("gauntlet-forward".into())
                .spawn(move || forwarder.run())
                .expect("spawning the outcome forwarder"),
        );
    }

    /// Whether this replica has read the store and serves a revision of every model from it.
    pub fn is_ready(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    pub fn location(&self) -> String {
        self.connector.location()
    }

    /// How to reach the store (for the analyst's own connection).
    pub fn connector(&self) -> Arc<Connector> {
        Arc::clone(&self.connector)
    }

    /// The analyst's latest drift report of model `name` (the cluster's alert state) as JSON, and
    /// which analyst wrote it when; `None` before it wrote one. Blocking.
    pub fn drift(&self, name: &str) -> Result<Option<(serde_json::Value, crate::compare::Snapshot)>, StoreError> {
        self.connector.snapshot(SnapshotTable::Drift, name)
    }

    /// The analyst's latest report of model `name`, with its age; `None` before it wrote one.
    /// Blocking.
    pub fn report(&self, name: &str) -> Result<Option<crate::compare::Report>, StoreError> {
        self.connector.report(name)
    }

    /// Model `name`'s history points taken at or after `since`, oldest first, the newest `limit`.
    /// Blocking.
    pub fn history(
        &self,
        name: &str,
        since: Option<std::time::SystemTime>,
        limit: usize,
    ) -> Result<Vec<crate::compare::history::Point>, StoreError> {
        self.connector.history(name, since, limit)
    }

    /// Every replica's heartbeat and each model's revision, read from the store. Blocking.
    pub fn status(&self) -> Result<ClusterView, StoreError> {
        let stale_after = Duration::from_millis(3 * self.connector.settings().heartbeat_interval_ms + 2000);
        self.connector.status(stale_after)
    }

    /// Stops the follower and takes this replica's row out of the store; the forwarder sends what
    /// the outcome log holds (call it after the log is closed), for a few seconds at most. Blocking.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        for handle in self.threads.lock().drain(..) {
            let _ = handle.join();
        }
        self.connector.disconnect();
    }
}

/// Every record and label in a cluster's store, in time order (a record before a label of the same
/// instant), as the outcome log's lines: what `gauntlet report --database` reads. Returns where
/// it read from (without the password). Blocking.
pub fn read_outcomes(
    url: &str,
    schema: &str,
    each: &mut dyn FnMut(Option<crate::outcomes::reader::Line>),
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use postgres::fallible_iterator::FallibleIterator;
    let settings = ClusterSettings {
        database_url: Some(Secret::from(url.to_owned())),
        name: schema.to_owned(),
        ..ClusterSettings::default()
    };
    if let Some((key, message)) = settings.invalid() {
        anyhow::bail!("--schema: {key}: {message}");
    }
    let connector = Connector::new(&settings)?;
    let location = connector.location();
    let mut client = connector.connect().with_context(|| format!("connecting to {location}"))?;
    let query = lines_in_time_order(schema);
    let mut rows =
        client.query_raw(&query, std::iter::empty::<i32>()).with_context(|| format!("reading {location}"))?;
    while let Some(row) = rows.next().with_context(|| format!("reading {location}"))? {
        let text: String = row.get(0);
        each(serde_json::from_str(&text).ok());
    }
    Ok(location)
}

/// The query of every record and label line of schema `s` as text, in time order (a record before
/// a label of the same instant): the offline report's and a new analyst's read.
pub fn lines_in_time_order(s: &str) -> String {
    format!(
        "SELECT line FROM (SELECT at, 0 AS kind, coalesce(line::text, record::text) AS line FROM {s}.records \
         UNION ALL SELECT at, 1, coalesce(line::text, label::text) FROM {s}.labels) t ORDER BY at, kind"
    )
}

/// Which of the analyst's snapshots (`Cluster::report`, `Cluster::drift` read them).
#[derive(Clone, Copy, Debug)]
pub enum SnapshotTable {
    Reports,
    Drift,
}

impl SnapshotTable {
    fn name(self) -> &'static str {
        match self {
            Self::Reports => "reports",
            Self::Drift => "drift",
        }
    }
}

/// Writes `analyst`'s snapshot `report` of `model` into `table` of schema `s`, replacing the last.
pub fn write_snapshot(
    client: &mut postgres::Client,
    s: &str,
    table: SnapshotTable,
    model: &str,
    report: &serde_json::Value,
    analyst: &str,
) -> Result<(), postgres::Error> {
    let table = table.name();
    client.execute(
        &format!(
            "INSERT INTO {s}.{table} (model, report, at, analyst) VALUES ($1, $2, now(), $3) \
             ON CONFLICT (model) DO UPDATE SET report = EXCLUDED.report, at = now(), analyst = EXCLUDED.analyst"
        ),
        &[&model, report, &analyst],
    )?;
    Ok(())
}

/// Adds `point` to model `model`'s history and deletes what is beyond the newest `keep`.
pub fn write_history(
    client: &mut postgres::Client,
    s: &str,
    model: &str,
    point: &crate::compare::history::Point,
    keep: usize,
) -> Result<(), postgres::Error> {
    let text = serde_json::to_string(point).unwrap_or_default();
    client.execute(
        &format!(
            "INSERT INTO {s}.history (model, at, point) VALUES ($1, now(), $2::text::json) ON CONFLICT DO NOTHING"
        ),
        &[&model, &text],
    )?;
    client.execute(
        &format!(
            "DELETE FROM {s}.history WHERE model = $1 AND at < \
             (SELECT at FROM {s}.history WHERE model = $1 ORDER BY at DESC OFFSET $2 LIMIT 1)"
        ),
        &[&model, &(keep.saturating_sub(1) as i64)],
    )?;
    Ok(())
}

/// The address other replicas and operators reach this one at: the listen address, with the host
/// name in place of an unspecified IP (`0.0.0.0:8000` in a container).
fn advertised(address: SocketAddr) -> String {
    if address.ip().is_unspecified() { format!("{}:{}", hostname(), address.port()) } else { address.to_string() }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `GET /admin/cluster`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The store, without credentials.
    pub store: String,
    /// Each model's revision in the store.
    pub deployments: BTreeMap<String, u64>,
    /// Every replica with a heartbeat row, by id.
    pub replicas: Vec<ReplicaView>,
    /// The replica that joins labels and runs the policies for the cluster (not yet: null).
    pub analyst: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    pub id: String,
    /// Its listen address, host:port.
    pub address: String,
    #[serde(with = "crate::json::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: SystemTime,
    #[serde(with = "crate::json::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub heartbeat_at: SystemTime,
    /// No heartbeat for three intervals: the replica is gone or cut off.
    pub stale: bool,
    /// The revision of each model it serves.
    pub applied: BTreeMap<String, u64>,
    /// It serves the store's revision of every model it has, and its heartbeat is fresh.
    pub converged: bool,
    /// Why it is not converged, when it knows.
    pub problem: Option<String>,
    /// Its binary's version.
    pub version: String,
}
