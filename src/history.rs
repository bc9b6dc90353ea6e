//! The comparison's history on one node: a point per model (`compare::history::Point`) every
//! `comparison.history_interval_s` while labels join, appended to
//! `<state_dir>/history/<model>.jsonl`, and read back by `GET /admin/models/{name}/history`. In a
//! cluster the analyst writes the same points to the store's `history` table instead.
//!
//! Invariants: bounded, at most `comparison.history_points` per model (older points go when the
//! file passes a quarter over, rewritten to a temporary file and renamed); written on the join
//! thread, never on the request path; a write that fails is logged and the next one tried.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::compare::history::Point;
use crate::compare::{CompareSettings, Comparison};
use crate::join::Listener;

/// Appends the points of one node's comparisons.
pub struct HistoryFiles {
    dir: PathBuf,
    interval: Duration,
    max_points: usize,
    /// Per model: when its last point was taken, and how many points its file holds.
    models: HashMap<String, (Instant, usize)>,
}

impl HistoryFiles {
    pub fn new(state_dir: &Path, settings: &CompareSettings) -> Self {
        Self {
            dir: dir(state_dir),
            interval: Duration::from_secs(settings.history_interval_s.max(1)),
            max_points: settings.history_points.max(1),
            models: HashMap::new(),
        }
    }

    fn append(&mut self, model: &str, point: &Point) -> std::io::Result<()> {
        let path = file(&self.dir, model);
        let held = match self.models.get(model) {
            Some((_, held)) => *held,
            None => count(&path),
        };
        fs::create_dir_all(&self.dir)?;
        let mut line = serde_json::to_vec(point).map_err(std::io::Error::other)?;
        line.push(b'\n');
        fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(&line)?;
        let mut held = held + 1;
        if held > self.max_points + self.max_points / 4 {
            trim(&path, self.max_points)?;
            held = self.max_points;
        }
        self.models.insert(model.to_owned(), (Instant::now(), held));
        Ok(())
    }
}

impl Listener for HistoryFiles {
    fn compared(&mut self, model: &str, comparison: &Comparison) {
        if self.models.get(model).is_some_and(|(last, _)| last.elapsed() < self.interval) {
            return;
        }
        let point = Point::of(&comparison.report(), SystemTime::now());
        if let Err(error) = self.append(model, &point) {
            tracing::warn!(model, %error, dir = %self.dir.display(), "writing the comparison's history failed");
            // Not again until the interval has passed.
            let held = self.models.get(model).map_or(0, |(_, held)| *held);
            self.models.insert(model.to_owned(), (Instant::now(), held));
        }
    }
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("history")
}

fn file(dir: &Path, model: &str) -> PathBuf {
    dir.join(format!("{model}.jsonl"))
}

fn count(path: &Path) -> usize {
    fs::File::open(path).map_or(0, |f| std::io::BufReader::new(f).lines().count())
}

/// Keeps the newest `keep` lines of `path`.
fn trim(path: &Path, keep: usize) -> std::io::Result<()> {
    let lines: Vec<String> = std::io::BufReader::new(fs::File::open(path)?).lines().collect::<Result<_, _>>()?;
    let start = lines.len().saturating_sub(keep);
    let temporary = path.with_extension("jsonl.partial");
    let mut out = std::io::BufWriter::new(fs::File::create(&temporary)?);
    for line in &lines[start..] {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&temporary, path)
}

/// Model `model`'s points taken at or after `since`, oldest first, at most `limit` (the newest).
/// A line that does not read (a write cut short) is skipped. Blocking.
pub fn read(state_dir: &Path, model: &str, since: Option<SystemTime>, limit: usize) -> std::io::Result<Vec<Point>> {
    let path = file(&dir(state_dir), model);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let since = since.map(|t| humantime::format_rfc3339_millis(t).to_string());
    let mut points: Vec<Point> = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Point>(&line).ok())
        // RFC 3339 in UTC with milliseconds sorts as text.
        .filter(|p| since.as_ref().is_none_or(|s| p.at.as_str() >= s.as_str()))
        .collect();
    let start = points.len().saturating_sub(limit);
    Ok(points.split_off(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at: u64) -> Point {
        Point {
            at: humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_secs(at)).to_string(),
            records: at,
            labelled_records: at,
            pairs: Vec::new(),
        }
    }

    #[test]
    fn the_history_is_bounded_read_back_from_a_time_and_survives_a_new_writer() {
        let state = tempfile::tempdir().unwrap();
        let settings = CompareSettings { history_points: 8, ..CompareSettings::default() };
        let mut files = HistoryFiles::new(state.path(), &settings);
        for at in 0..20 {
            files.append("m", &point(1_000 + at)).unwrap();
        }
        let all = read(state.path(), "m", None, usize::MAX).unwrap();
        assert!(all.len() <= 10 && all.len() >= 8, "{}", all.len());
        assert_eq!(all.last().unwrap().records, 1_019);
        // A new writer (a restart) counts what the file holds and goes on.
        let mut again = HistoryFiles::new(state.path(), &settings);
        again.append("m", &point(2_000)).unwrap();
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_018);
        let recent: Vec<u64> =
            read(state.path(), "m", Some(since), usize::MAX).unwrap().iter().map(|p| p.records).collect();
        assert_eq!(recent, [1_018, 1_019, 2_000]);
        assert_eq!(read(state.path(), "m", None, 2).unwrap().len(), 2);
        assert!(read(state.path(), "other", None, 10).unwrap().is_empty());
    }
}
