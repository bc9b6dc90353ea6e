//! The outcome log writer: a bounded channel into one thread that batches records into JSON Lines
//! files, flushes them on an interval, and rotates by size and age.
//!
//! - A full channel drops the record and counts it: a request is never slowed by the log.
//! - `close` writes everything accepted before it, flushes and fsyncs: a graceful shutdown loses nothing.
//! - After a SIGKILL at most the last flush interval is lost, and the last line may be torn; at
//!   start `repair_torn_lines` cuts such a line so every file is valid JSON Lines again.
//! - A disk error is logged and counted, the file is dropped, and the next record opens a new one.
//!
//! Files are `outcomes-<UTC time>-<pid>-<seq>.jsonl`, so a glob lists them in time order.
//!
//! A written line's buffer goes back to a bounded pool (`LinePool`) for a later record's line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_queue::ArrayQueue;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::RecordSink;
use crate::background::{self, Closing, Priority, Work, Worker};

#[derive(Clone, Debug)]
pub struct WriterSettings {
    pub dir: PathBuf,
    /// Records waiting for the writer thread; beyond this they are dropped and counted.
    pub capacity: usize,
    pub flush_interval: Duration,
    pub rotate_bytes: u64,
    pub rotate_age: Duration,
}

/// The JSON Lines log, the embedded `RecordSink`.
pub struct OutcomeWriter {
    /// One serialised line each, newline included.
    worker: Worker<Vec<u8>>,
    /// Counted once a record under overload: the handle is looked up once.
    dropped: metrics::Counter,
}

/// How long the writer sleeps when its queue is empty: 2 ms, up to 16 ms while it stays empty. It
/// polls rather than blocks: a blocked receiver makes every sender (a shadow thread, per record)
/// pay a futex wake and the CPU a context switch; polling every `POLL` costs neither.
const POLL: Duration = Duration::from_millis(2);
const POLL_IDLE: Duration = Duration::from_millis(16);

impl OutcomeWriter {
    /// Creates the directory, repairs torn last lines, and starts the writer thread.
    pub fn start(settings: WriterSettings) -> io::Result<Self> {
        fs::create_dir_all(&settings.dir)?;
        let repaired = repair_torn_lines(&settings.dir)?;
        if repaired > 0 {
            tracing::warn!(files = repaired, dir = %settings.dir.display(), "cut torn last lines left by an abrupt stop");
            crate::metrics::outcome_files_repaired(repaired);
        }
        let thread = background::Settings {
            name: "outcome-writer",
            threads: 1,
            queue: settings.capacity,
            batch: 256,
            // The log is for later; answering is now. Under CPU saturation the queue fills and drops
            // (counted); a graceful shutdown still writes everything accepted.
            priority: Priority::Idle,
            poll: POLL,
            poll_idle: POLL_IDLE,
        };
        let worker = Worker::start_one(thread, Log::new(settings))?;
        Ok(Self { worker, dropped: crate::metrics::outcome_records_counter("dropped") })
    }
}

impl RecordSink for OutcomeWriter {
    fn offer(&self, line: Vec<u8>) -> bool {
        match self.worker.try_send(line) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.increment(1);
                false
            }
        }
    }

    /// Writes every record accepted so far, syncs the file and stops the thread. Blocking.
    fn close(&self) {
        self.worker.close();
    }
}

/// The writer thread's state: the open file, if any.
struct Log {
    settings: WriterSettings,
    file: Option<OpenFile>,
    last_flush: Instant,
    /// Counted once a record: the handle is looked up once.
    written: metrics::Counter,
}

struct OpenFile {
    path: PathBuf,
    out: BufWriter<File>,
    opened: Instant,
    bytes: u64,
    /// Records written into `out` since its last successful flush: lost if the flush fails.
    unflushed: u64,
}

static FILE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Buffers of lines the writer has written, for the next records' lines. A record's line is
/// allocated on a shadow thread and was freed on this one, so the allocator kept setting up fresh
/// pages for new lines, page faults included: about 5% of a shadow record's CPU time at 10k req/s
/// (`perf`); recycled, records/s at the default budget rose by a median 4.5% over seven paired
/// rounds (`benches/shadow-cost.sh`, issue 33). Bounded: at most `LinePool::KEPT` buffers of at most
/// `LinePool::MAX_BYTES` each (8 MiB); any other is freed as before.
pub(super) static LINES: LazyLock<LinePool> = LazyLock::new(|| LinePool::new(LinePool::KEPT));

pub(super) struct LinePool {
    buffers: ArrayQueue<Vec<u8>>,
}

impl LinePool {
    /// The records of four of a shadow thread's largest looks (256 jobs: 128 records with two
    /// challengers).
    const KEPT: usize = 512;
    /// A line of two challengers' results on 30 inputs is about 1.3 KiB; a much larger one is rare
    /// enough not to keep.
    const MAX_BYTES: usize = 16 << 10;

    fn new(kept: usize) -> Self {
        Self { buffers: ArrayQueue::new(kept) }
    }

    /// An empty line with room for `capacity` bytes: a recycled buffer when there is one.
    pub(super) fn take(&self, capacity: usize) -> Vec<u8> {
        match self.buffers.pop() {
            Some(mut line) => {
                line.clear();
                line.reserve(capacity);
                line
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps a written line's buffer for `take`, unless it is large or the pool is full.
    fn recycle(&self, line: Vec<u8>) {
        if line.capacity() <= Self::MAX_BYTES {
            let _ = self.buffers.push(line);
        }
    }
}

impl Work for Log {
    type Message = Vec<u8>;

    fn handle(&mut self, lines: &mut Vec<Vec<u8>>, _: &Closing) {
        for line in lines.drain(..) {
            self.write_line(&line);
            LINES.recycle(line);
        }
    }

    /// Flushes every `flush_interval` and closes a file older than `rotate_age`.
    fn tick(&mut self, now: Instant) -> Duration {
        let since = now.saturating_duration_since(self.last_flush);
        if since < self.settings.flush_interval {
            return self.settings.flush_interval - since;
        }
        self.flush();
        if self.file.as_ref().is_some_and(|f| f.opened.elapsed() >= self.settings.rotate_age) {
            self.close_file(false);
        }
        self.last_flush = now;
        self.settings.flush_interval
    }

    fn finish(&mut self) {
        self.close_file(true);
    }
}

impl Log {
    fn new(settings: WriterSettings) -> Self {
        Self {
            settings,
            file: None,
            last_flush: Instant::now(),
            written: crate::metrics::outcome_records_counter("written"),
        }
    }

    fn write_line(&mut self, line: &[u8]) {
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => match self.open() {
                Ok(file) => file,
                Err(error) => {
                    disk_error("opening an outcome file", &error);
                    crate::metrics::outcome_records("lost", 1);
                    return;
                }
            },
        };
        let full = match file.out.write_all(line) {
            Ok(()) => {
                file.bytes += line.len() as u64;
                file.unflushed += 1;
                file.bytes >= self.settings.rotate_bytes
            }
            Err(error) => {
                disk_error("writing an outcome record", &error);
                let lost = file.unflushed + 1;
                self.file = None;
                crate::metrics::outcome_records("lost", lost);
                return;
            }
        };
        self.written.increment(1);
        if full {
            self.close_file(false);
        }
    }

    fn open(&mut self) -> io::Result<&mut OpenFile> {
        let stamp: String = humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        let sequence = FILE_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = self.settings.dir.join(format!("outcomes-{stamp}-{}-{sequence:04}.jsonl", std::process::id()));
        let file = OpenOptions::new().create_new(true).append(true).open(&path)?;
        tracing::debug!(path = %path.display(), "outcome file opened");
        Ok(self.file.insert(OpenFile {
            path,
            out: BufWriter::with_capacity(256 << 10, file),
            opened: Instant::now(),
            bytes: 0,
            unflushed: 0,
        }))
    }

    fn flush(&mut self) {
        let Some(file) = self.file.as_mut() else { return };
        match file.out.flush() {
            Ok(()) => file.unflushed = 0,
            Err(error) => {
                disk_error("flushing the outcome log", &error);
                crate::metrics::outcome_records("lost", file.unflushed);
                self.file = None;
            }
        }
    }

    /// Flushes and closes the current file; `sync` also fsyncs it (at shutdown).
    fn close_file(&mut self, sync: bool) {
        self.flush();
        if let Some(file) = self.file.take()
            && sync
            && let Err(error) = file.out.get_ref().sync_all()
        {
            disk_error(&format!("syncing {}", file.path.display()), &error);
        }
    }
}

fn disk_error(what: &str, error: &io::Error) {
    tracing::error!(%error, "{what} failed; serving goes on");
    crate::metrics::outcome_write_error();
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the old file or the new one,
/// never a part: a temporary file beside it, synced, renamed over, the directory synced. With
/// `previous`, the file replaced is kept there (a checkpoint's fallback).
pub fn replace_file(path: &Path, bytes: &[u8], previous: Option<&Path>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    if let Some(previous) = previous
        && path.exists()
    {
        fs::rename(path, previous)?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// What a checkpoint file holds: its format first, then the state, in CBOR.
#[derive(Serialize)]
struct Envelope<'a, T> {
    format: i32,
    state: &'a T,
}

#[derive(Deserialize)]
struct Opened<T> {
    state: T,
}

/// Read first: a file of another format is refused by its number, before its state is decoded.
#[derive(Deserialize)]
struct Format {
    format: i32,
}

/// Writes `state` as a checkpoint file of `format` (through `replace_file`); returns its size.
pub fn write_checkpoint<T: Serialize>(
    path: &Path,
    format: i32,
    state: &T,
    previous: Option<&Path>,
) -> io::Result<usize> {
    let mut bytes = Vec::new();
    ciborium::into_writer(&Envelope { format, state }, &mut bytes).map_err(io::Error::other)?;
    replace_file(path, &bytes, previous)?;
    Ok(bytes.len())
}

/// The state of a checkpoint file written by `write_checkpoint` in `format`, or why not (the file
/// unreadable, of another format, or not decoding).
pub fn read_checkpoint<T: DeserializeOwned>(path: &Path, format: i32) -> Result<T, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let found: Format = ciborium::from_reader(&bytes[..]).map_err(|e| format!("does not decode: {e}"))?;
    if found.format != format {
        return Err(format!("is format {}, and this binary reads format {format}", found.format));
    }
    let opened: Opened<T> = ciborium::from_reader(&bytes[..]).map_err(|e| format!("does not decode: {e}"))?;
    Ok(opened.state)
}

/// Cuts a torn last line (no final newline) from every `*.jsonl` file in `dir`. Returns how many
/// files it changed.
pub fn repair_torn_lines(dir: &Path) -> io::Result<usize> {
    let mut repaired = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") && repair_file(&path)? {
            repaired += 1;
        }
    }
    Ok(repaired)
}

fn repair_file(path: &Path) -> io::Result<bool> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(false);
    }
    // Scan back for the last newline; everything after it is the torn line.
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    let keep = loop {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::{ModelResult, OutcomeRecord};
    use crate::registry::{Role, Status};
    use crate::repository::Task;

    static TASK: Task = Task::Regression { prediction_output: String::new() };

    fn record(id: &str) -> OutcomeRecord<'_> {
        OutcomeRecord {
            kind: "outcome",
            task: &TASK,
            task_json: None,
            request_id: id,
            timestamp: SystemTime::now(),
            model: "m",
            answered_by: "1",
            inputs: None,
            inputs_sha256: None,
            slice: None,
            results: vec![ModelResult {
                version: "1",
                role: Role::Champion,
                sha256: "x",
                status: Status::Ok,
                latency_ms: Some(Duration::from_micros(12)),
                batch: None,
                outputs: None,
                error: None,
            }],
        }
    }

    fn settings(dir: &Path, rotate_bytes: u64) -> WriterSettings {
        WriterSettings {
            dir: dir.to_owned(),
            capacity: 10_000,
            flush_interval: Duration::from_millis(50),
            rotate_bytes,
            rotate_age: Duration::from_secs(3600),
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn close_writes_every_accepted_record_in_order_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let writer = OutcomeWriter::start(settings(dir.path(), 4096)).unwrap();
        for i in 0..2000 {
            assert!(writer.offer(record(&format!("r{i}")).to_json_line()));
        }
        writer.close();
        let lines = lines(dir.path());
        assert_eq!(lines.len(), 2000);
        for (i, line) in lines.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["request_id"], format!("r{i}"), "glob order is write order");
        }
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert!(files > 10, "rotated by size into {files} files");
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), u64::MAX);
        s.capacity = 1;
        let writer = OutcomeWriter::start(s).unwrap();
        let accepted = (0..10_000).filter(|&i| writer.offer(record(&format!("r{i}")).to_json_line())).count();
        writer.close();
        assert!(accepted < 10_000, "some were dropped");
        assert_eq!(lines(dir.path()).len(), accepted, "every accepted record was written");
    }

    #[test]
    fn torn_last_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join("outcomes-a.jsonl");
        fs::write(&torn, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let whole = dir.path().join("outcomes-b.jsonl");
        fs::write(&whole, "{\"a\":1}\n").unwrap();
        let only_torn = dir.path().join("outcomes-c.jsonl");
        fs::write(&only_torn, "{\"c\":".repeat(50_000)).unwrap();
        assert_eq!(repair_torn_lines(dir.path()).unwrap(), 2);
        assert_eq!(fs::read_to_string(&torn).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(fs::read_to_string(&whole).unwrap(), "{\"a\":1}\n");
        assert_eq!(fs::read_to_string(&only_torn).unwrap(), "");
        assert_eq!(repair_torn_lines(dir.path()).unwrap(), 0);
    }

    #[test]
    fn a_disk_error_loses_records_but_not_the_writer() {
        // Driven synchronously (no thread) so the failure lands exactly where the test puts it.
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        let mut log = Log::new(settings(&log_dir, u64::MAX));
        let line = |i| format!("{}\n", serde_json::to_string(&record(&format!("r{i}"))).unwrap()).into_bytes();
        log.write_line(&line(0)); // the directory does not exist: lost, counted, logged
        assert!(log.file.is_none());
        fs::create_dir_all(&log_dir).unwrap();
        log.write_line(&line(1)); // the next record opens a new file
        log.close_file(true);
        let lines = lines(&log_dir);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("\"r1\""));
    }

    #[test]
    fn written_lines_are_reused_and_the_pool_is_bounded() {
        let pool = LinePool::new(2);
        let line = b"{\"kind\":\"outcome\"}\n".to_vec();
        let address = line.as_ptr();
        pool.recycle(line);
        let reused = pool.take(8);
        assert!(reused.is_empty(), "a recycled line comes back empty");
        assert_eq!(reused.as_ptr(), address, "with the same allocation");
        pool.recycle(reused);
        assert!(pool.take(4 << 10).capacity() >= 4 << 10, "grown to the room asked for");

        pool.recycle(Vec::with_capacity(LinePool::MAX_BYTES + 1));
        assert!(pool.buffers.is_empty(), "a large buffer is not kept");
        for _ in 0..3 {
            pool.recycle(Vec::with_capacity(64));
        }
        assert_eq!(pool.buffers.len(), 2, "at most its bound");
    }
}
