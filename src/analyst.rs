//! The cluster's one analyst: the replica holding a PostgreSQL advisory lock (on a connection of
//! its own, so the lock goes when the replica or its connection dies) joins the store's labels with
//! its records, keeps the comparison of every model, runs the promotion policy on it (through the
//! registry's compare-and-set path, as an operator would) and writes report snapshots that every
//! replica serves. The other replicas' threads wait for the lock.
//!
//! Rows are read by position, never marked: each row's position is (the id of the transaction
//! that wrote it, a number from one sequence), and the analyst reads pages in position order, only
//! below its snapshot's xmin. Every transaction below xmin has ended, so no row can later become
//! visible behind a position already read, however the writers' transactions interleave (a
//! sequence number alone would not do: it is taken at insert, not at commit). Every few seconds it
//! writes a checkpoint: its whole state (`OfflineComparison`: each model's comparison, the fresh
//! evidence the policy reads, the bounded join index) with the position it stands at, in one row,
//! so the state and the position can never disagree.
//!
//! Nothing is lost or counted twice across a failover: a new analyst loads the newest checkpoint it
//! can read (one that does not decode is skipped for the one before it, named in the log) and
//! reads only the rows after its position. What its predecessor read after its last checkpoint is
//! read again from there, by the successor alone. Failover therefore costs one checkpoint and the
//! rows since it, whatever the tables hold.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::Client;

use crate::background::{Priority, lower_priority, sleep_unless};
use crate::cluster::{Connector, SnapshotTable, chain, write_snapshot};
use crate::compare::CompareSettings;
use crate::compare::offline::{CHECKPOINT_FORMAT, OfflineComparison};
use crate::join::Listener;
use crate::outcomes::reader::Line;

/// Rows read per page (one statement, in position order).
const PAGE: i64 = 20_000;
/// How often the analyst looks for new rows when there were none.
const IDLE: Duration = Duration::from_millis(200);
/// How often a waiting replica asks for the lock, and the analyst writes its snapshots.
const EVERY: Duration = Duration::from_millis(500);
/// Checkpoints kept: the newest, and two before it for one that does not decode.
const CHECKPOINTS_KEPT: i64 = 3;

/// Where the analyst stands: every row at or before (`xid`, `position`) is in its comparison.
/// (0, 0) is the start; rows from before positions existed have (0, 0) and are read apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub xid: i64,
    pub position: i64,
}

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
        let work = Work {
            connector,
            settings,
            capacity,
            listeners,
            closing: Arc::clone(&closing),
            holding,
            drift,
            buffer: Vec::new(),
            history_at: None,
            history_pending: BTreeSet::new(),
        };
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
    /// The checkpoint's bytes, kept from one to the next.
    buffer: Vec<u8>,
    /// When the history's last points were written (`history_interval_s` apart), and the models
    /// whose comparison changed since.
    history_at: Option<Instant>,
    history_pending: BTreeSet<String>,
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
                Err(error) => tracing::warn!(error = %chain(&error), "analyst: lost the cluster store"),
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
        let (mut offline, mut at, resumed) = self.resume(client)?;
        let mut pages = Pages::start(&self.connector, at)?;
        let mut changed: BTreeSet<String> = offline.models().map(str::to_owned).collect();
        let mut last_snapshot: Option<Instant> = None;
        let mut last_checkpoint = Instant::now();
        let mut checkpoint_took = Duration::ZERO;
        let mut unsaved: u64 = 0;
        let mut caught_up = false;
        loop {
            if self.closing() {
                if unsaved > 0 {
                    self.checkpoint(client, &offline, at, &replica)?;
                }
                client.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key])?;
                return Ok(());
            }
            // Only a page shorter than a full one says the analyst has read everything there is;
            // no page within the wait says only that the reader is still reading.
            let (page, read_all) = match pages.next(IDLE) {
                Next::Page(page) => {
                    let page = page?;
                    let short = (page.len() as i64) < PAGE;
                    (page, short)
                }
                Next::Nothing => (Vec::new(), false),
                // The reader ended without a word (it cannot, but if it did): a new one from here.
                Next::Gone => {
                    pages = Pages::start(&self.connector, at)?;
                    (Vec::new(), false)
                }
            };
            unsaved += page.len() as u64;
            // As the live join does: the listeners (the policy) after every label that joins, so a
            // replay of the store (`report --database … --policy`) decides at the same labels.
            for row in page {
                at = row.at;
                let line = serde_json::from_str::<Line>(&row.line).ok();
                let model = line.as_ref().map(|l| l.model.clone());
                if let Some(model) = &model
                    && !changed.contains(model)
                {
                    changed.insert(model.clone());
                }
                if offline.line(line)
                    && let Some(model) = model
                    && let Some(comparison) = offline.comparison(&model)
                {
                    for listener in &mut self.listeners {
                        listener.compared(&model, comparison);
                    }
                }
            }
            if read_all && !caught_up {
                caught_up = true;
                tracing::info!(
                    resumed = %resumed,
                    position = ?at,
                    took_ms = started.elapsed().as_millis() as u64,
                    "this replica is the cluster's analyst: its comparison is current"
                );
            }
            // Due after `checkpoint_rows` rows, or `checkpoint_interval_ms` with any; but never
            // sooner than nine times the last one's own time after it, so checkpoints take at most
            // a tenth of the analyst. A checkpoint costs in proportion to the state (tens of MB at
            // full bounds), not to the rows since: measured on a read of 1M rows from the start,
            // one every `checkpoint_rows` took most of the analyst's time (perf: CBOR and the
            // buffer's pages), at 48k rows/s.
            let settings = self.connector.settings();
            let every = Duration::from_millis(settings.checkpoint_interval_ms);
            let since = last_checkpoint.elapsed();
            if (unsaved >= settings.checkpoint_rows || (unsaved > 0 && since >= every)) && since >= checkpoint_took * 9
            {
                let began = Instant::now();
                self.checkpoint(client, &offline, at, &replica)?;
                checkpoint_took = began.elapsed();
                last_checkpoint = Instant::now();
                unsaved = 0;
            }
            // The first snapshot as soon as the rows are read: what a failover is timed to.
            if last_snapshot.is_none_or(|t| t.elapsed() >= EVERY) && (caught_up || last_snapshot.is_some()) {
                self.snapshot(client, &offline, &mut changed, &replica)?;
                last_snapshot = Some(Instant::now());
            }
        }
    }

    /// The newest checkpoint that decodes, and its position; without one, the rows from before
    /// positions existed, read once in time order. Says which it did.
    fn resume(&self, client: &mut Client) -> Result<(OfflineComparison, Position, String), postgres::Error> {
        let s = self.connector.schema();
        let kept = client.query(
            &format!(
                "SELECT id, format, xid::text::bigint, position, rows, binary_version FROM {s}.checkpoints \
                 ORDER BY id DESC"
            ),
            &[],
        )?;
        for row in kept {
            let (id, format, xid, position, rows, version): (i64, i32, i64, i64, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
            let started = Instant::now();
            let state: Vec<u8> =
                client.query_one(&format!("SELECT state FROM {s}.checkpoints WHERE id = $1"), &[&id])?.get(0);
            match OfflineComparison::resume(format, &state, self.settings) {
                Ok(mut offline) => {
                    offline.bound_to(self.capacity);
                    let at = Position { xid, position };
                    tracing::info!(
                        checkpoint = id,
                        rows,
                        bytes = state.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "analyst: resumed from a checkpoint"
                    );
                    return Ok((offline, at, format!("checkpoint {id}")));
                }
                Err(error) => tracing::error!(
                    checkpoint = id,
                    written_by = %version,
                    %error,
                    "analyst: a checkpoint cannot be read; trying the one before it"
                ),
            }
        }
        // No checkpoint: the rows from before positions (an upgraded store), then all from (0, 0).
        let mut offline = OfflineComparison::bounded(self.settings, self.capacity);
        let mut tx = client.transaction()?;
        // Once, and only for rows older than positions: the one read not bounded by a page.
        tx.batch_execute("SET LOCAL statement_timeout = 0")?;
        let legacy = tx.query(
            &format!(
                "SELECT line::text FROM (SELECT at, 0 AS kind, record AS line FROM {s}.records WHERE xid = '0' \
                 UNION ALL SELECT at, 1, label FROM {s}.labels WHERE xid = '0') t ORDER BY at, kind"
            ),
            &[],
        )?;
        tx.commit()?;
        let rows = legacy.len();
        for row in legacy {
            let text: &str = row.get(0);
            offline.line(serde_json::from_str::<Line>(text).ok());
        }
        Ok((offline, Position::default(), format!("no checkpoint ({rows} rows from before positions)")))
    }

    /// Writes the whole state with its position in one transaction, and keeps the newest few.
    fn checkpoint(
        &mut self,
        client: &mut Client,
        offline: &OfflineComparison,
        at: Position,
        replica: &str,
    ) -> Result<(), postgres::Error> {
        let s = self.connector.schema();
        let began = Instant::now();
        let mut state = std::mem::take(&mut self.buffer);
        if let Err(error) = offline.checkpoint_into(&mut state) {
            tracing::error!(%error, "analyst: no checkpoint written");
            return Ok(());
        }
        let rows = offline.rows() as i64;
        let mut tx = client.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.checkpoints (analyst, binary_version, format, xid, position, rows, state) \
                 VALUES ($1, $2, $3, $4::bigint::text::xid8, $5, $6, $7)"
            ),
            &[&replica, &env!("CARGO_PKG_VERSION"), &CHECKPOINT_FORMAT, &at.xid, &at.position, &rows, &state],
        )?;
        tx.execute(
            &format!(
                "DELETE FROM {s}.checkpoints WHERE id NOT IN (SELECT id FROM {s}.checkpoints ORDER BY id DESC LIMIT $1)"
            ),
            &[&CHECKPOINTS_KEPT],
        )?;
        tx.commit()?;
        crate::metrics::checkpoint_written(state.len(), began.elapsed());
        self.buffer = state;
        Ok(())
    }

    /// The reports of the models that changed, and the analyst's heartbeat.
    fn snapshot(
        &mut self,
        client: &mut Client,
        offline: &OfflineComparison,
        changed: &mut BTreeSet<String>,
        replica: &str,
    ) -> Result<(), postgres::Error> {
        let s = self.connector.schema().to_owned();
        for model in std::mem::take(changed) {
            let Some(comparison) = offline.comparison(&model) else { continue };
            let Ok(report) = serde_json::to_value(comparison.report()) else { continue };
            write_snapshot(client, &s, SnapshotTable::Reports, &model, &report, replica)?;
            self.history_pending.insert(model);
        }
        // The history: a point for each model that changed since the last points, when they are due
        // (snapshots come more often than points, so a change is remembered until then).
        let every = Duration::from_secs(self.settings.history_interval_s.max(1));
        if !self.history_pending.is_empty() && self.history_at.is_none_or(|t| t.elapsed() >= every) {
            for model in std::mem::take(&mut self.history_pending) {
                let Some(comparison) = offline.comparison(&model) else { continue };
                let point = crate::compare::history::Point::of(&comparison.report(), std::time::SystemTime::now());
                crate::cluster::write_history(client, &s, &model, &point, self.settings.history_points.max(1))?;
            }
            self.history_at = Some(Instant::now());
        }
        // The drift state the cluster alerts on is the analyst's: every replica shows it.
        for (model, report) in (self.drift)() {
            write_snapshot(client, &s, SnapshotTable::Drift, &model, &report, replica)?;
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

/// One row as the analyst reads it: its position and its line.
pub struct Row {
    pub at: Position,
    pub line: String,
}

/// The next `PAGE` rows of both tables after `after`, in position order, only from transactions
/// below the snapshot's xmin (all ended): a row committed later by a transaction that began
/// earlier cannot fall behind a position read here. Each statement reads at most a page through
/// the `(xid, position)` indexes, so no read grows with the tables: the two tables' ordered scans
/// are merged as they are read, each row turned into text only if it is taken (the sort keys are
/// the subquery's columns: `ORDER BY xid` alone would name the output's bigint and sort every row
/// of both sides on disk, measured 2.7 times slower).
pub fn read_page(client: &mut Client, s: &str, after: Position) -> Result<Vec<Row>, postgres::Error> {
    let xmin: i64 = client.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint", &[])?.get(0);
    let rows = client.query(
        &format!(
            "SELECT xid::text::bigint, position, line FROM ( \
               (SELECT xid, position, coalesce(line::text, record::text) AS line FROM {s}.records \
                 WHERE (xid, position) > ($1::bigint::text::xid8, $2) AND xid < $3::bigint::text::xid8 \
                 ORDER BY xid, position LIMIT $4) \
               UNION ALL \
               (SELECT xid, position, coalesce(line::text, label::text) FROM {s}.labels \
                 WHERE (xid, position) > ($1::bigint::text::xid8, $2) AND xid < $3::bigint::text::xid8 \
                 ORDER BY xid, position LIMIT $4) \
             ) t ORDER BY t.xid, t.position LIMIT $4"
        ),
        &[&after.xid, &after.position, &xmin, &PAGE],
    )?;
    Ok(rows.into_iter().map(|r| Row { at: Position { xid: r.get(0), position: r.get(1) }, line: r.get(2) }).collect())
}

/// The analyst's reader: a thread with a connection of its own that reads the pages after a
/// position and hands them over one at a time, so the database produces the next page while the
/// analyst feeds this one (they took turns on one connection: measured, the database's backend
/// and the analyst thread were each idle half the time). Dropping it ends the thread after its
/// current read.
struct Pages {
    pages: std::sync::mpsc::Receiver<Result<Vec<Row>, postgres::Error>>,
}

enum Next {
    Page(Result<Vec<Row>, postgres::Error>),
    /// Nothing new within the wait.
    Nothing,
    Gone,
}

impl Pages {
    fn start(connector: &Connector, from: Position) -> Result<Self, postgres::Error> {
        let mut client = connector.connect()?;
        let schema = connector.schema().to_owned();
        // One page waiting at most: the reader stays one page ahead, no more.
        let (send, pages) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("gauntlet-analyst-read".into())
            .spawn(move || {
                lower_priority(Priority::Low);
                let mut at = from;
                loop {
                    let page = read_page(&mut client, &schema, at);
                    let (full, last) = match &page {
                        Ok(rows) => (rows.len() as i64 == PAGE, rows.last().map(|r| r.at)),
                        Err(_) => (false, None),
                    };
                    let failed = page.is_err();
                    if send.send(page).is_err() || failed {
                        return;
                    }
                    at = last.unwrap_or(at);
                    if !full {
                        std::thread::sleep(IDLE);
                    }
                }
            })
            .expect("spawning the analyst's reader");
        Ok(Self { pages })
    }

    /// The next page, waiting at most `wait` for it.
    fn next(&self, wait: Duration) -> Next {
        match self.pages.recv_timeout(wait) {
            Ok(page) => Next::Page(page),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Next::Nothing,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Next::Gone,
        }
    }
}
