//! Spool, then forward: in a cluster, paired records and labels still go to the local outcome log
//! first (the same bounded writer, the same JSON lines: the spool), and this thread loads them into
//! the store's `records` and `labels` tables, in file order, from a checkpoint kept beside the files
//! (`.forwarded.json`, written after each commit). An outage only grows the spool; the thread goes on
//! from its checkpoint when the store is back, and a batch sent twice (a crash between commit and
//! checkpoint) is stored once (the tables are idempotent on model, request id and time). A spool
//! past `spool_bytes` loses its oldest lines to the store (they stay on disk), counted.
//!
//! It also keeps the tables' daily partitions: the next days made ahead, those past
//! `retention_days` dropped.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use metrics::{counter, gauge};
use postgres::Client;
use postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};
use serde::{Deserialize, Serialize};

use super::Shared;
use super::store::{Connect, Connector};
use crate::background::{Priority, lower_priority};
use crate::metrics as names;

const CHECKPOINT: &str = ".forwarded.json";
/// Bytes read from the spool per transaction.
const CHUNK: usize = 4 << 20;
/// How often the thread looks at the spool when it is caught up.
const IDLE: Duration = Duration::from_millis(200);
/// How long a closing replica spends forwarding what is left (the rest goes at the next start).
const FINAL_PASS: Duration = Duration::from_secs(5);

/// Where forwarding has got to: everything before `offset` in `file`, and every earlier file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    file: String,
    offset: u64,
}

pub struct Forwarder {
    connector: Arc<Connector>,
    shared: Arc<Shared>,
    dir: PathBuf,
    replica: String,
    checkpoint: Checkpoint,
    partitions_at: Option<Instant>,
}

/// One batch of rows, column by column, as `unnest` takes them, borrowing the chunk's lines.
#[derive(Default)]
struct Rows<'a> {
    records: Columns<'a>,
    labels: Columns<'a>,
    unreadable: u64,
}

/// Columns of `records` or `labels` (`answered_by` empty for labels). Each line goes as it is in
/// the log into a `json` column: parsed here only for the columns, never rebuilt.
#[derive(Default)]
struct Columns<'a> {
    model: Vec<Cow<'a, str>>,
    request_id: Vec<Cow<'a, str>>,
    at: Vec<SystemTime>,
    answered_by: Vec<Cow<'a, str>>,
    line: Vec<JsonText<'a>>,
}

/// A line sent to a `json` column as the text it is (json's binary form is its text), so nothing
/// is printed again on this side.
#[derive(Debug)]
struct JsonText<'a>(&'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    accepts!(JSON);
    to_sql_checked!();
}

impl Columns<'_> {
    fn len(&self) -> usize {
        self.model.len()
    }
}

/// What the forwarder reads of a line; the rest is skipped over.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    request_id: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(default, borrow)]
    answered_by: Option<Cow<'a, str>>,
}

impl Forwarder {
    pub fn new(connector: Arc<Connector>, shared: Arc<Shared>, dir: PathBuf, replica: String) -> Self {
        let checkpoint = fs::read(dir.join(CHECKPOINT))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self { connector, shared, dir, replica, checkpoint, partitions_at: None }
    }

    pub fn run(mut self) {
        lower_priority(Priority::Low);
        let mut backoff = Duration::from_millis(100);
        let mut client: Option<Client> = None;
        let mut closing_since: Option<Instant> = None;
        loop {
            if self.shared.closing.load(Ordering::Acquire) {
                // One last pass over what the writer flushed as it closed, then stop.
                let since = *closing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > FINAL_PASS {
                    break;
                }
            }
            let connected = match client.take() {
                Some(c) => Ok(c),
                None => self.connector.connect_migrated(),
            };
            let mut c = match connected {
                Ok(c) => c,
                Err(failure) => {
                    if closing_since.is_some() {
                        break;
                    }
                    let message = match failure {
                        Connect::Down(e) => e.to_string(),
                        Connect::Fatal(e) => e.to_string(),
                    };
                    tracing::debug!(error = %message, "forwarder: the cluster store is out of reach; spooling");
                    self.spool_gauge();
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            match self.pass(&mut c) {
                Ok(more) => {
                    client = Some(c);
                    if !more {
                        if closing_since.is_some() {
                            break;
                        }
                        std::thread::sleep(IDLE);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "forwarder: lost the cluster store; spooling");
                    std::thread::sleep(backoff);
                }
            }
        }
    }

    /// Forwards one chunk; returns whether there is more to forward now.
    fn pass(&mut self, client: &mut Client) -> Result<bool, postgres::Error> {
        if self.partitions_at.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
            self.partitions_at = Some(Instant::now());
            if let Err(error) = self.keep_partitions(client) {
                // Most likely the lock timeout: tried again in a minute, forwarding goes on.
                tracing::warn!(error = %super::chain(&error), "cluster: partition upkeep did not run; trying again in a minute");
                self.partitions_at = Some(Instant::now() - Duration::from_secs(3540));
            }
        }
        self.enforce_spool_limit();
        let files = self.files();
        let Some((index, name)) = files.iter().enumerate().find(|(_, name)| **name >= self.checkpoint.file) else {
            return Ok(false);
        };
        let offset = if *name == self.checkpoint.file { self.checkpoint.offset } else { 0 };
        let (chunk, complete) = match read_lines(&self.dir.join(name), offset) {
            Ok(read) => read,
            Err(error) => {
                // Rotated away or unreadable: logged, and tried again next pass.
                tracing::warn!(file = %name, %error, "forwarder: cannot read the spool");
                return Ok(false);
            }
        };
        let last = index + 1 == files.len();
        if chunk.is_empty() {
            // An older file has nothing more to give (a torn tail stays behind): go on to the next.
            if !last {
                self.checkpoint = Checkpoint { file: files[index + 1].clone(), offset: 0 };
                self.save_checkpoint();
                return Ok(true);
            }
            self.spool_gauge();
            return Ok(false);
        }
        let rows = parse(&chunk);
        write(client, self.connector.schema(), &self.replica, &rows)?;
        counter!(names::CLUSTER_FORWARDED, "kind" => "record").increment(rows.records.len() as u64);
        counter!(names::CLUSTER_FORWARDED, "kind" => "label").increment(rows.labels.len() as u64);
        if rows.unreadable > 0 {
            counter!(names::CLUSTER_FORWARDED, "kind" => "unreadable").increment(rows.unreadable);
        }
        self.checkpoint = Checkpoint { file: name.clone(), offset: offset + chunk.len() as u64 };
        self.save_checkpoint();
        self.spool_gauge();
        Ok(!complete || !last)
    }

    /// Daily partitions from yesterday to two days ahead; those past retention dropped, and the
    /// default partition's rows past it deleted. Another replica doing the same at once is harmless.
    /// Making or dropping a partition locks the parent table against inserts (and `DETACH …
    /// CONCURRENTLY` is refused while a default partition exists), so it waits for that lock at most
    /// `lock_timeout`: writers (the forwarders, off the request path) are held at most that long,
    /// once a day; a timeout leaves it for the next try. The analyst's checkpoints hold positions,
    /// not rows, so a dropped day leaves them valid.
    fn keep_partitions(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let s = self.connector.schema();
        let days = self.connector.settings().retention_days;
        // SET LOCAL: a failure rolls the setting back with the transaction.
        let mut tx = client.transaction()?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '200ms';
             DO $$
             DECLARE d date; t text; part text;
             BEGIN
               FOR d IN SELECT generate_series(current_date - 1, current_date + 2, interval '1 day')::date LOOP
                 FOREACH t IN ARRAY ARRAY['records', 'labels'] LOOP
                   part := t || '_' || to_char(d, 'YYYYMMDD');
                   BEGIN
                     EXECUTE format('CREATE TABLE IF NOT EXISTS {s}.%I PARTITION OF {s}.%I FOR VALUES FROM (%L) TO (%L)',
                                    part, t, d, d + 1);
                   EXCEPTION WHEN others THEN NULL;  -- made by another replica, or rows in the default
                   END;
                 END LOOP;
               END LOOP;
               FOR part IN
                 SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                 JOIN pg_namespace n ON n.oid = p.relnamespace
                 WHERE n.nspname = '{s}' AND p.relname IN ('records', 'labels')
                   AND c.relname ~ '_[0-9]{{8}}$'
                   AND to_date(right(c.relname, 8), 'YYYYMMDD') < current_date - {days}
               LOOP
                 EXECUTE format('DROP TABLE IF EXISTS {s}.%I', part);
               END LOOP;
               DELETE FROM {s}.records_default WHERE at < now() - interval '{days} days';
               DELETE FROM {s}.labels_default WHERE at < now() - interval '{days} days';
             END $$;"
        ))?;
        tx.commit()
    }

    /// The spool's files, in name (time) order.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".jsonl") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Bytes not yet forwarded.
    fn backlog(&self) -> u64 {
        self.files()
            .iter()
            .filter(|n| **n >= self.checkpoint.file)
            .map(|n| {
                let size = fs::metadata(self.dir.join(n)).map_or(0, |m| m.len());
                if *n == self.checkpoint.file { size.saturating_sub(self.checkpoint.offset) } else { size }
            })
            .sum()
    }

    fn spool_gauge(&self) {
        gauge!(names::CLUSTER_SPOOL_BYTES).set(self.backlog() as f64);
    }

    /// Past the limit, the oldest unforwarded files are given up (whole files: the lines stay on
    /// disk, the store does not get them), counted by line.
    fn enforce_spool_limit(&mut self) {
        let limit = self.connector.settings().spool_bytes;
        while self.backlog() > limit {
            let files = self.files();
            let Some(index) = files.iter().position(|n| *n >= self.checkpoint.file) else { return };
            if index + 1 >= files.len() {
                return;
            }
            let name = &files[index];
            let offset = if *name == self.checkpoint.file { self.checkpoint.offset } else { 0 };
            let lost = read_lines(&self.dir.join(name), offset).map_or(0, |(chunk, _)| count_lines(&chunk));
            counter!(names::CLUSTER_SPOOL_DROPPED).increment(lost);
            tracing::error!(file = %name, lines = lost, limit, "the spool is past cluster.spool_bytes: its oldest file will not reach the store");
            self.checkpoint = Checkpoint { file: files[index + 1].clone(), offset: 0 };
            self.save_checkpoint();
        }
    }

    fn save_checkpoint(&self) {
        let result = (|| {
            let tmp = self.dir.join(format!("{CHECKPOINT}.tmp"));
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(&self.checkpoint)?)?;
            file.sync_data()?;
            fs::rename(&tmp, self.dir.join(CHECKPOINT))
        })();
        if let Err(error) = result {
            tracing::warn!(%error, "could not save the forwarder's checkpoint; lines may be sent again (stored once)");
        }
    }
}

/// Inserts a chunk's rows in one transaction (idempotent: a row stored before is skipped).
fn write(client: &mut Client, s: &str, replica: &str, rows: &Rows) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    let r = &rows.records;
    if r.len() > 0 {
        tx.execute(
            &format!(
                "INSERT INTO {s}.records (model, request_id, at, answered_by, replica, line) \
                 SELECT m, r, a, b, $5, j FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $6::json[]) \
                 AS t(m, r, a, b, j) ON CONFLICT DO NOTHING"
            ),
            &[&r.model, &r.request_id, &r.at, &r.answered_by, &replica, &r.line],
        )?;
    }
    let l = &rows.labels;
    if l.len() > 0 {
        tx.execute(
            &format!(
                "INSERT INTO {s}.labels (model, request_id, at, replica, line) \
                 SELECT m, r, a, $4, j FROM unnest($1::text[], $2::text[], $3::timestamptz[], $5::json[]) \
                 AS t(m, r, a, j) ON CONFLICT DO NOTHING"
            ),
            &[&l.model, &l.request_id, &l.at, &replica, &l.line],
        )?;
    }
    tx.commit()
}

/// Whole lines from `offset`, about `CHUNK` bytes of them (at least one, however long), and
/// whether that reached the end of what the file holds (an unfinished last line stays behind).
fn read_lines(path: &Path, offset: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let mut chunk = Vec::with_capacity(64 << 10);
    loop {
        let before = chunk.len();
        if reader.read_until(b'\n', &mut chunk)? == 0 {
            return Ok((chunk, true));
        }
        if chunk.last() != Some(&b'\n') {
            chunk.truncate(before);
            return Ok((chunk, true));
        }
        if chunk.len() >= CHUNK {
            return Ok((chunk, false));
        }
    }
}

fn count_lines(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|&&b| b == b'\n').count() as u64
}

/// The rows of a chunk of whole lines.
fn parse(chunk: &[u8]) -> Rows<'_> {
    let mut rows = Rows::default();
    for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        // Reading the head scans the whole object (every other field is skipped over, not
        // stored), so a line that parses here is whole JSON for the store.
        let parsed = std::str::from_utf8(line).ok().and_then(|text| {
            let head: Head = serde_json::from_str(text).ok()?;
            let at = humantime::parse_rfc3339_weak(&head.timestamp).ok()?;
            Some((text, head, at))
        });
        let Some((text, head, at)) = parsed else {
            rows.unreadable += 1;
            continue;
        };
        let columns = match head.kind.as_deref() {
            Some("feedback") => &mut rows.labels,
            _ => &mut rows.records,
        };
        columns.model.push(head.model);
        columns.request_id.push(head.request_id);
        columns.at.push(at);
        columns.answered_by.push(head.answered_by.unwrap_or_default());
        columns.line.push(JsonText(text));
    }
    rows
}
