//! The connection to the cluster's PostgreSQL, and `PgStore`: the registry's `DeploymentStore`
//! there, each save a compare-and-set on the model's revision that notifies every replica.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use postgres::Client;
use postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::schema;
use super::{ClusterError, ClusterSettings, ClusterView, ReplicaView, SnapshotTable};
use crate::registry::{AuditEntry, DeploymentState, DeploymentStore, Saved, StoreError};

/// How to reach the store: the parsed URL, TLS, timeouts and the schema.
pub struct Connector {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    settings: ClusterSettings,
    /// The URL without its password, for messages.
    location: String,
    replica: OnceLock<String>,
    /// The connection the registry's saves and the admin API's reads share (one at a time: the
    /// registry saves only under its change lock).
    client: Mutex<Option<Client>>,
}

impl Connector {
    pub fn new(settings: &ClusterSettings) -> Result<Self, ClusterError> {
        let invalid = |message: String| ClusterError::Config { key: "database_url", message };
        let url = settings.database_url.as_ref().ok_or_else(|| invalid("is not set".into()))?;
        let mut config: postgres::Config =
            url.expose().parse().map_err(|e| invalid(format!("not a PostgreSQL connection URL: {e}")))?;
        let timeout = Duration::from_millis(settings.connect_timeout_ms);
        config
            .connect_timeout(timeout)
            // A store that stops answering (a partition, not a refusal) is noticed, not waited on.
            .tcp_user_timeout(timeout.max(Duration::from_secs(5)))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("gauntlet");
        }
        let location = describe(&config, &settings.name);
        let tls = tls(settings).map_err(|message| ClusterError::Config { key: "ca_file", message })?;
        Ok(Self {
            config,
            tls,
            settings: settings.clone(),
            location,
            replica: OnceLock::new(),
            client: Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// `postgres://user@host:port/database (schema gauntlet)`: where, never the password.
    pub fn location(&self) -> String {
        self.location.clone()
    }

    pub fn schema(&self) -> &str {
        &self.settings.name
    }

    /// The channel every replica listens on.
    pub fn channel(&self) -> String {
        format!("{}_deployments", self.settings.name)
    }

    pub(super) fn set_replica(&self, id: &str) {
        let _ = self.replica.set(id.to_owned());
    }

    pub fn replica(&self) -> &str {
        self.replica.get().map_or("starting", String::as_str)
    }

    /// A new connection, with the schema migrated (cheap when it is current).
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        let mut client = self.config.connect(self.tls.clone())?;
        // UTC: the tables' daily partitions are UTC days.
        client.batch_execute("SET statement_timeout = '10s'; SET TIME ZONE 'UTC'")?;
        Ok(client)
    }

    /// A connection, the schema migrated, with a fatal refusal told apart from an outage.
    pub fn connect_migrated(&self) -> Result<Client, Connect> {
        let mut client = self.connect().map_err(|e| self.classify(e))?;
        schema::migrate(&mut client, self.schema()).map_err(|e| match e {
            schema::MigrateError::TooNew { found, known } => {
                Connect::Fatal(ClusterError::SchemaTooNew { store: self.location(), found, known })
            }
            schema::MigrateError::Sql(e) => self.classify(e),
        })?;
        Ok(client)
    }

    fn classify(&self, error: postgres::Error) -> Connect {
        let fatal = [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ];
        match error.code() {
            Some(code) if fatal.contains(code) => {
                Connect::Fatal(ClusterError::Refused { store: self.location(), message: chain(&error) })
            }
            _ => Connect::Down(self.unavailable(&error)),
        }
    }

    fn unavailable(&self, error: &postgres::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "the cluster store {} cannot be reached ({}); this replica serves what it last applied, and changes wait for the store",
            self.location,
            chain(error)
        ))
    }

    /// Runs `f` on the shared connection, connecting first if there is none; a failed connection
    /// is dropped, for the next call to make anew.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreFailure>) -> Result<T, StoreError> {
        let mut slot = self.client.lock();
        // The blocking client notices a dropped connection only when it next talks: ask first
        // (one round trip; these calls are changes and admin reads, rare), so the first change
        // after the database came back does not fail on the connection from before.
        if let Some(client) = &mut *slot
            && client.is_valid(Duration::from_millis(self.settings.connect_timeout_ms)).is_err()
        {
            *slot = None;
        }
        let client = match &mut *slot {
            Some(client) => client,
            None => slot.insert(self.connect_migrated().map_err(|e| match e {
                Connect::Down(e) => e,
                Connect::Fatal(e) => StoreError::Unavailable(e.to_string()),
            })?),
        };
        match f(client) {
            Ok(value) => Ok(value),
            Err(StoreFailure::Store(error)) => Err(error),
            Err(StoreFailure::Sql(error)) => {
                *slot = None;
                Err(self.unavailable(&error))
            }
        }
    }

    /// Every replica's row and each model's revision.
    pub(super) fn status(&self, stale_after: Duration) -> Result<ClusterView, StoreError> {
        let s = self.schema().to_owned();
        let (deployments, rows) = self.with(|client| {
            let deployments: BTreeMap<String, u64> = client
                .query(&format!("SELECT model, revision FROM {s}.deployments"), &[])?
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1) as u64))
                .collect();
            let rows = client.query(
                &format!(
                    "SELECT id, address, started_at, heartbeat_at, applied, converged, problem, binary_version, \
                     extract(epoch from now() - heartbeat_at)::float8 FROM {s}.replicas ORDER BY id"
                ),
                &[],
            )?;
            Ok((deployments, rows))
        })?;
        let replicas = rows
            .iter()
            .map(|row| {
                let applied: BTreeMap<String, u64> =
                    serde_json::from_value(row.get::<_, serde_json::Value>(4)).unwrap_or_default();
                let stale = row.get::<_, f64>(8) > stale_after.as_secs_f64();
                let current = applied.iter().all(|(model, r)| deployments.get(model).is_none_or(|d| d == r));
                ReplicaView {
                    id: row.get(0),
                    address: row.get(1),
                    started_at: row.get(2),
                    heartbeat_at: row.get(3),
                    stale,
                    converged: row.get::<_, bool>(5) && current && !stale,
                    applied,
                    problem: row.get(6),
                    version: row.get(7),
                }
            })
            .collect();
        let analyst = self.with(|client| {
            let row = client.query_opt(
                &format!("SELECT id FROM {s}.analyst WHERE heartbeat_at > now() - $1::float8 * interval '1 second'"),
                &[&stale_after.as_secs_f64()],
            )?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        })?;
        Ok(ClusterView { store: self.location(), deployments, replicas, analyst })
    }

    pub(super) fn report(&self, name: &str) -> Result<Option<crate::compare::Report>, StoreError> {
        let Some((value, snapshot)) = self.snapshot(SnapshotTable::Reports, name)? else { return Ok(None) };
        let mut report: crate::compare::Report = serde_json::from_value(value).map_err(|e| {
            StoreError::Unavailable(format!("the store's report of {name} is not one this binary reads: {e}"))
        })?;
        report.snapshot = Some(snapshot);
        Ok(Some(report))
    }

    pub(super) fn history(
        &self,
        name: &str,
        since: Option<std::time::SystemTime>,
        limit: usize,
    ) -> Result<Vec<crate::compare::history::Point>, StoreError> {
        let s = self.schema().to_owned();
        let since = since.unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with(|client| {
            Ok(client.query(
                &format!(
                    "SELECT point::text FROM (SELECT point, at FROM {s}.history WHERE model = $1 AND at >= $2 \
                     ORDER BY at DESC LIMIT $3) newest ORDER BY at"
                ),
                &[&name, &since, &limit],
            )?)
        })?;
        Ok(rows.iter().filter_map(|row| serde_json::from_str(row.get::<_, &str>(0)).ok()).collect())
    }

    /// Model `name`'s row of the analyst's snapshot `table`, and which analyst wrote it when.
    pub(super) fn snapshot(
        &self,
        table: SnapshotTable,
        name: &str,
    ) -> Result<Option<(serde_json::Value, crate::compare::Snapshot)>, StoreError> {
        let (s, table) = (self.schema().to_owned(), table.name());
        let row = self.with(|client| {
            Ok(client.query_opt(
                &format!(
                    "SELECT report, at, analyst, extract(epoch from now() - at)::float8 FROM {s}.{table} WHERE model = $1"
                ),
                &[&name],
            )?)
        })?;
        Ok(row.map(|row| {
            let snapshot = crate::compare::Snapshot {
                analyst: row.get(2),
                as_of: humantime::format_rfc3339_millis(row.get::<_, std::time::SystemTime>(1)).to_string(),
                age_s: row.get::<_, f64>(3).max(0.0),
            };
            (row.get(0), snapshot)
        }))
    }
}

impl Connector {
    /// Closes the shared connection (the follower closes its own).
    pub(super) fn disconnect(&self) {
        let client = self.client.lock().take();
        drop_blocking(client);
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        drop_blocking(self.client.get_mut().take());
    }
}

/// Drops a blocking client where that may block: closing it runs its own runtime, which tokio
/// refuses on a thread that drives async tasks (the gateway is often dropped on one).
fn drop_blocking(client: Option<Client>) {
    let Some(client) = client else { return };
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::spawn(move || drop(client)).join();
    } else {
        drop(client);
    }
}

/// How a connection attempt failed.
pub enum Connect {
    /// Out of reach for now: try again.
    Down(StoreError),
    /// Refused for good (credentials, database, schema): stop.
    Fatal(ClusterError),
}

/// A failure inside `Connector::with`: the store's own answer, or the connection's.
enum StoreFailure {
    Store(StoreError),
    Sql(postgres::Error),
}

impl From<postgres::Error> for StoreFailure {
    fn from(error: postgres::Error) -> Self {
        Self::Sql(error)
    }
}

/// The registry's deployments in the cluster's store.
pub struct PgStore {
    connector: Arc<Connector>,
}

impl PgStore {
    /// Connects once to migrate the schema and check the credentials: an outage is reported by
    /// `load`, a refusal stops startup here.
    pub(super) fn open(connector: Arc<Connector>) -> Result<Self, ClusterError> {
        match connector.connect_migrated() {
            Ok(client) => *connector.client.lock() = Some(client),
            Err(Connect::Fatal(error)) => return Err(error),
            Err(Connect::Down(error)) => tracing::warn!(%error, "starting without the cluster store"),
        }
        Ok(Self { connector })
    }
}

impl DeploymentStore for PgStore {
    fn load(&self) -> Result<BTreeMap<String, Saved>, StoreError> {
        let s = self.connector.schema().to_owned();
        let rows = self
            .connector
            .with(|client| Ok(client.query(&format!("SELECT model, revision, spec FROM {s}.deployments"), &[])?))?;
        let mut saved = BTreeMap::new();
        for row in rows {
            let model: String = row.get(0);
            match serde_json::from_value::<DeploymentState>(row.get(2)) {
                Ok(state) => {
                    saved.insert(model, Saved { state, revision: row.get::<_, i64>(1) as u64 });
                }
                Err(error) => {
                    tracing::error!(model, %error, "the store's deployment row is not one this binary reads; ignored")
                }
            }
        }
        Ok(saved)
    }

    /// In one transaction: the row written if it is still at `base` (inserted if `base` is 0),
    /// and a notification to every replica, sent when it commits.
    fn save(
        &self,
        name: &str,
        state: &DeploymentState,
        base: u64,
        _all: &BTreeMap<String, DeploymentState>,
    ) -> Result<u64, StoreError> {
        let s = self.connector.schema().to_owned();
        let spec = serde_json::to_value(state).map_err(|e| StoreError::Io(e.into()))?;
        let replica = self.connector.replica().to_owned();
        let channel = self.connector.channel();
        self.connector.with(|client| {
            let mut tx = client.transaction()?;
            let written = if base == 0 {
                tx.query_opt(
                    &format!(
                        "INSERT INTO {s}.deployments (model, revision, spec, updated_by) VALUES ($1, 1, $2, $3) \
                         ON CONFLICT (model) DO NOTHING RETURNING revision"
                    ),
                    &[&name, &spec, &replica],
                )?
            } else {
                tx.query_opt(
                    &format!(
                        "UPDATE {s}.deployments SET revision = revision + 1, spec = $2, updated_by = $3, updated_at = now() \
                         WHERE model = $1 AND revision = $4 RETURNING revision"
                    ),
                    &[&name, &spec, &replica, &(base as i64)],
                )?
            };
            let Some(row) = written else {
                let now = tx.query_opt(&format!("SELECT revision FROM {s}.deployments WHERE model = $1"), &[&name])?;
                let revision = now.map_or(0, |r| r.get::<_, i64>(0) as u64);
                return Err(StoreFailure::Store(StoreError::Conflict { model: name.to_owned(), base, revision }));
            };
            let revision = row.get::<_, i64>(0) as u64;
            tx.execute("SELECT pg_notify($1, $2)", &[&channel, &name])?;
            tx.commit()?;
            Ok(revision)
        })
    }

    /// Into the audit table; when the store cannot take it, into the log, so it is on record.
    fn audit(&self, entry: &AuditEntry<'_>) {
        let s = self.connector.schema().to_owned();
        let Ok(value) = serde_json::to_value(entry) else { return };
        let replica = self.connector.replica().to_owned();
        let result = self.connector.with(|client| {
            client.execute(
                &format!("INSERT INTO {s}.audit (replica, model, entry) VALUES ($1, $2, $3)"),
                &[&replica, &entry.model, &value],
            )?;
            Ok(())
        });
        if let Err(error) = result {
            tracing::error!(%error, entry = %value, "could not write the audit entry to the cluster store");
        }
    }

    fn history(&self, name: &str, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let s = self.connector.schema().to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.connector.with(|client| {
            let rows = client.query(
                &format!("SELECT entry FROM {s}.audit WHERE model = $1 ORDER BY id DESC LIMIT $2"),
                &[&name, &limit],
            )?;
            Ok(rows.iter().map(|row| row.get::<_, serde_json::Value>(0)).collect())
        })
    }

    fn location(&self) -> Option<String> {
        Some(self.connector.location())
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// The TLS client: webpki's roots, and `ca_file`'s.
fn tls(settings: &ClusterSettings) -> Result<MakeRustlsConnect, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = &settings.ca_file {
        let certificates = CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for certificate in certificates {
            let certificate = certificate.map_err(|e| format!("{}: {e}", path.display()))?;
            roots.add(certificate).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn describe(config: &postgres::Config, schema: &str) -> String {
    use postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config.get_ports().get(i).or(config.get_ports().first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let database = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{database} (schema {schema})", hosts.join(","))
}

/// An error and its causes, on one line (a connection refused is two levels down).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
