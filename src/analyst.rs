//! The cluster's one analyst: the replica holding a PostgreSQL advisory lock (on a connection of
//! its own, so the lock goes when the replica or its connection dies) joins the store's labels with
//! its records, keeps the comparison of every model, runs the promotion policy on it (through the
//! registry's compare-and-set path, as an operator would) and writes report snapshots that every
//! replica serves. The other replicas' threads wait for the lock.
//!
//! Nothing is lost or counted twice across a failover: a replica that takes the lock rebuilds the
//! comparison from every row in the tables, in one snapshot, and marks them `seen`; after that each
//! pass marks the unseen rows seen in a transaction and feeds them only once it has committed. A
//! pass that fails feeds nothing; an analyst that dies after a commit leaves the rows to the next
//! one's rebuild.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use crate::background::{Priority, lower_priority, sleep_unless};
use crate::cluster::{Connector, SnapshotTable, lines_in_time_order, write_snapshot};
use crate::compare::CompareSettings;
use crate::compare::offline::OfflineComparison;
use crate::join::Listener;
use crate::outcomes::reader::Line;

/// Rows taken from each table per pass.
const BATCH: i64 = 5000;
/// How often the analyst looks for new rows when there were none.
const IDLE: Duration = Duration::from_millis(200);
/// How often a waiting replica asks for the lock, and the analyst writes its snapshots.
const EVERY: Duration = Duration::from_millis(500);

/// The analyst's thread, on every replica (only the lock holder works).
pub struct Analyst {
    closing: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Analyst {
    /// Starts the thread, keeping at most `capacity` records waiting for labels (and labels for
    /// records) per the join's bound; `listeners` hear of every comparison it updates (the policy),
    /// `holding` is true while this replica is the analyst (drift alerts go out only then), and
    /// `drift` gives this replica's drift reports by model, as JSON, for the cluster's snapshot.
    pub fn start(
        connector: Arc<Connector>,
        (settings, capacity): (CompareSettings, usize),
        listeners: Vec<Box<dyn Listener>>,
        holding: Arc<AtomicBool>,
        drift: DriftReports,
    ) -> std::io::Result<Self> {
        let closing = Arc::new(AtomicBool::new(false));
        let work = Work { connector, settings, capacity, listeners, closing: Arc::clone(&closing), holding, drift };
        let thread = std::thread::Builder::new().name("gauntlet-analyst".into()).spawn(move || work.run())?;
        Ok(Self { closing, thread: Mutex::new(Some(thread)) })
    }

    /// Stops the thread; the lock is released with its connection. Blocking.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

struct Work {
    connector: Arc<Connector>,
    settings: CompareSettings,
    capacity: usize,
    listeners: Vec<Box<dyn Listener>>,
    closing: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
    drift: DriftReports,
}

/// This replica's drift reports, by model, as JSON.
pub type DriftReports = Box<dyn Fn() -> Vec<(String, serde_json::Value)> + Send>;

impl Work {
    fn run(mut self) {
        lower_priority(Priority::Low);
        let mut backoff = Duration::from_millis(200);
        while !self.closing() {
            let mut client = match self.connector.connect_migrated() {
                Ok(client) => client,
                Err(_) => {
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            let served = self.serve(&mut client);
            // The lock went with the connection (or was given back).
            self.holding.store(false, Ordering::Release);
            match served {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, "analyst: lost the cluster store"),
            }
        }
    }

    /// Waits for the lock, then works until closing (`Ok`) or the connection fails.
    fn serve(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        let s = self.connector.schema().to_owned();
        let key = format!("gauntlet-analyst:{s}");
        loop {
            if self.closing() {
                return Ok(());
            }
            let held: bool = client.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])?.get(0);
            if held {
                break;
            }
            self.sleep(EVERY);
        }
        let replica = self.connector.replica().to_owned();
        client.execute(
            &format!(
                "INSERT INTO {s}.analyst (id, since, heartbeat_at) VALUES ($1, now(), now()) \
                 ON CONFLICT (one) DO UPDATE SET id = EXCLUDED.id, since = now(), heartbeat_at = now()"
            ),
            &[&replica],
        )?;
        self.holding.store(true, Ordering::Release);
        let started = Instant::now();
        let (mut offline, rows) = self.rebuild(client)?;
        tracing::info!(
            rows,
            took_ms = started.elapsed().as_millis() as u64,
            "this replica is the cluster's analyst: the comparison is rebuilt from the store"
        );
        let mut changed: BTreeSet<String> = offline.models().map(str::to_owned).collect();
        let mut last_snapshot = Instant::now() - EVERY;
        loop {
            if self.closing() {
                client.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key])?;
                return Ok(());
            }
            let (lines, models) = self.pass(client)?;
            // As the live join does: the listeners (the policy) after every label that joins, so a
            // replay of the store (`report --database … --policy`) decides at the same labels.
            for line in lines {
                let model = line.as_ref().map(|l| l.model.clone());
                if offline.line(line)
                    && let Some(model) = model
                    && let Some(comparison) = offline.comparison(&model)
                {
                    for listener in &mut self.listeners {
                        listener.compared(&model, comparison);
                    }
                }
            }
            let idle = models.is_empty();
            changed.extend(models);
            if last_snapshot.elapsed() >= EVERY {
                self.snapshot(client, &offline, &mut changed, &replica)?;
                last_snapshot = Instant::now();
            }
            if idle {
                self.sleep(IDLE);
            }
        }
    }

    /// Every row of both tables, in time order, in one snapshot that also marks them seen.
    fn rebuild(&self, client: &mut Client) -> Result<(OfflineComparison, u64), postgres::Error> {
        let s = self.connector.schema();
        let mut offline = OfflineComparison::bounded(self.settings, self.capacity);
        let mut tx = client.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start()?;
        let query = lines_in_time_order(s);
        let mut rows = 0;
        {
            let mut lines = tx.query_raw(&query, std::iter::empty::<i32>())?;
            while let Some(row) = lines.next()? {
                let text: String = row.get(0);
                offline.line(serde_json::from_str::<Line>(&text).ok());
                rows += 1;
            }
        }
        tx.batch_execute(&format!(
            "UPDATE {s}.records SET seen = true WHERE NOT seen; UPDATE {s}.labels SET seen = true WHERE NOT seen;"
        ))?;
        tx.commit()?;
        Ok((offline, rows))
    }

    /// The rows not seen yet (a batch of each table), marked seen; returned only once that has
    /// committed, in time order, with the models they touch.
    fn pass(&self, client: &mut Client) -> Result<(Vec<Option<Line>>, BTreeSet<String>), postgres::Error> {
        let s = self.connector.schema();
        let mut tx = client.transaction()?;
        let mut rows: Vec<(SystemTime, u8, String, String)> = Vec::new();
        for (kind, table, column) in [(0u8, "records", "record"), (1, "labels", "label")] {
            let taken = tx.query(
                &format!(
                    "UPDATE {s}.{table} t SET seen = true \
                     FROM (SELECT model, request_id, at FROM {s}.{table} WHERE NOT seen ORDER BY at LIMIT $1) n \
                     WHERE t.model = n.model AND t.request_id = n.request_id AND t.at = n.at \
                     RETURNING t.at, t.model, t.{column}::text"
                ),
                &[&BATCH],
            )?;
            rows.extend(taken.iter().map(|r| (r.get(0), kind, r.get(1), r.get(2))));
        }
        tx.commit()?;
        rows.sort_by_key(|r| (r.0, r.1));
        let models = rows.iter().map(|r| r.2.clone()).collect();
        let lines = rows.into_iter().map(|r| serde_json::from_str::<Line>(&r.3).ok()).collect();
        Ok((lines, models))
    }

    /// The reports of the models that changed, and the analyst's heartbeat.
    fn snapshot(
        &self,
        client: &mut Client,
        offline: &OfflineComparison,
        changed: &mut BTreeSet<String>,
        replica: &str,
    ) -> Result<(), postgres::Error> {
        let s = self.connector.schema();
        for model in std::mem::take(changed) {
            let Some(comparison) = offline.comparison(&model) else { continue };
            let Ok(report) = serde_json::to_value(comparison.report()) else { continue };
            write_snapshot(client, s, SnapshotTable::Reports, &model, &report, replica)?;
        }
        // The drift state the cluster alerts on is the analyst's: every replica shows it.
        for (model, report) in (self.drift)() {
            write_snapshot(client, s, SnapshotTable::Drift, &model, &report, replica)?;
        }
        client.execute(&format!("UPDATE {s}.analyst SET heartbeat_at = now() WHERE id = $1"), &[&replica])?;
        Ok(())
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn sleep(&self, total: Duration) {
        sleep_unless(&self.closing, total, Duration::from_millis(100));
    }
}
