//! One node's checkpoint of the join: every model's index and comparison with the number of the
//! last line the join stamped, in `state_dir/comparison.checkpoint` (the one before it kept as
//! `….previous`, for a file that does not decode). At start the join reads the newest that decodes
//! and takes the log's stamped lines after its number, through the same code as live lines.
//!
//! The stamp is the line's last key, `,"seq":N}`, written by the join thread alone, so the log's
//! stamped lines are in the join's order and a file's first stamp tells where a resume starts
//! reading: the cost of a restart is one checkpoint and the lines since it, whatever the log holds.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::JoinThread;
use super::index::{IndexState, ModelIndex, SavedIndex};
use crate::compare::offline::observation_of;
use crate::compare::{CompareSettings, Truth};
use crate::outcomes::reader::Line;
use crate::outcomes::{read_checkpoint, write_checkpoint};

const FILE: &str = "comparison.checkpoint";
const PREVIOUS: &str = "comparison.checkpoint.previous";
/// The version of what `write` writes; a checkpoint of another is refused, named in the log.
const FORMAT: i32 = 1;

#[derive(Serialize)]
struct Saved<'a> {
    seq: u64,
    written_at: String,
    models: Vec<(&'a str, SavedIndex<'a>)>,
}

#[derive(Deserialize)]
struct State {
    seq: u64,
    models: Vec<(String, IndexState)>,
}

/// `line` (a JSON object and its newline) with `"seq": seq` as its last key.
pub(super) fn stamp(mut line: Vec<u8>, seq: u64) -> Vec<u8> {
    if let Some(end) = line.iter().rposition(|&b| b == b'}') {
        // The tail (`}` and the newline) moved up and the stamp written before it: no splice,
        // whose iterator chain cost more than the line's other bookkeeping in the join thread.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(seq).as_bytes();
        let (key, len) = (b",\"seq\":", line.len());
        let grow = key.len() + digits.len();
        line.resize(len + grow, 0);
        line.copy_within(end..len, end + grow);
        line[end..end + key.len()].copy_from_slice(key);
        line[end + key.len()..end + grow].copy_from_slice(digits);
    }
    line
}

/// The stamp of a line, if it has one: `,"seq":<digits>}` at its very end. (Inside a JSON string
/// a quote is escaped, so no field's value can end a line this way.)
fn stamp_of(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n").unwrap_or(line).strip_suffix(b"}")?;
    let digits = line.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (head, number) = line.split_at(line.len() - digits);
    if digits == 0 || !head.ends_with(b",\"seq\":") {
        return None;
    }
    std::str::from_utf8(number).ok()?.parse().ok()
}

/// Writes the checkpoint (the current one kept as the previous).
/// Returns its size.
pub(super) fn write(
    dir: &Path,
    seq: u64,
    models: &BTreeMap<String, ModelIndex>,
    now: Instant,
) -> std::io::Result<usize> {
    let saved = Saved {
        seq,
        written_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        models: models.iter().map(|(name, index)| (name.as_str(), index.save(now))).collect(),
    };
    write_checkpoint(&dir.join(FILE), FORMAT, &saved, Some(&dir.join(PREVIOUS)))
}

/// The newest checkpoint in `dir` that decodes, into `join`; then the stamped lines of the log in
/// `log_dir` after it. Without a readable checkpoint every stamped line of the log is taken.
pub(super) fn resume(join: &mut JoinThread, dir: &Path, log_dir: &Path, compare: CompareSettings) {
    let started = Instant::now();
    let mut after = 0;
    let mut from = "no checkpoint".to_owned();
    for name in [FILE, PREVIOUS] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        match read_checkpoint::<State>(&path, FORMAT) {
            Ok(state) => {
                let now = Instant::now();
                for (model, index) in state.models {
                    // A model no longer configured is dropped; one new since starts empty.
                    if let Some(live) = join.models.get_mut(&model) {
                        *live = ModelIndex::restore(index, now);
                        live.comparison.set_settings(compare);
                    }
                }
                after = state.seq;
                from = path.display().to_string();
                break;
            }
            Err(error) => tracing::error!(
                checkpoint = %path.display(),
                %error,
                "the comparison's checkpoint cannot be read; trying the one before it"
            ),
        }
    }
    let (lines, last) = match replay(join, log_dir, after) {
        Ok(read) => read,
        Err(error) => {
            tracing::error!(%error, dir = %log_dir.display(), "the outcome log after the checkpoint cannot be read");
            (0, after)
        }
    };
    join.seq = last.max(after);
    join.saved_seq = after;
    tracing::info!(
        checkpoint = %from,
        seq = after,
        lines_after_it = lines,
        took_ms = started.elapsed().as_millis() as u64,
        "the comparison resumed"
    );
}

/// Takes the stamped lines numbered after `after`, in order; returns how many, and the last number.
fn replay(join: &mut JoinThread, log_dir: &Path, after: u64) -> std::io::Result<(u64, u64)> {
    let files = log_files(log_dir)?;
    // The newest file whose first stamp is at most `after + 1` holds the first line to take: every
    // later stamp is in it or after it.
    let mut start = 0;
    for (i, file) in files.iter().enumerate().rev() {
        if first_stamp(file)?.is_some_and(|first| first <= after + 1) {
            start = i;
            break;
        }
    }
    let (mut taken, mut last) = (0, after);
    for file in &files[start..] {
        let mut reader = BufReader::new(File::open(file)?);
        let mut line = Vec::new();
        while {
            line.clear();
            reader.read_until(b'\n', &mut line)? > 0
        } {
            let Some(seq) = stamp_of(&line).filter(|seq| *seq > after) else { continue };
            last = last.max(seq);
            taken += 1;
            take(join, &line);
        }
    }
    Ok((taken, last))
}

/// One logged line through the join, as it was taken live (but not logged again).
fn take(join: &mut JoinThread, line: &[u8]) {
    let Ok(line) = serde_json::from_slice::<Line>(line) else { return };
    if line.kind.as_deref() == Some("feedback") {
        let Some(task) = join.models.get(&line.model).map(|index| index.comparison.task().clone()) else { return };
        let Some(truth) = line.truth.as_ref().and_then(|t| Truth::parse(t, &task).ok()) else { return };
        let model = line.model.clone();
        join.truth(&model, line.request_id, truth);
    } else if let Some((model, observation)) = observation_of(line) {
        join.record(&model, observation);
    }
}

fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(error) => return Err(error),
    };
    files.sort();
    Ok(files)
}

/// The first stamp in a file (lines before it may be unstamped).
fn first_stamp(path: &Path) -> std::io::Result<Option<u64>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    while {
        line.clear();
        reader.read_until(b'\n', &mut line)? > 0
    } {
        if let Some(seq) = stamp_of(&line) {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_the_last_key_and_reads_back() {
        let line = b"{\"kind\":\"feedback\",\"truth\":1}\n".to_vec();
        let stamped = stamp(line, 42);
        assert_eq!(stamped, b"{\"kind\":\"feedback\",\"truth\":1,\"seq\":42}\n");
        assert_eq!(stamp_of(&stamped), Some(42));
        let value: serde_json::Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(value["seq"], 42);
    }

    #[test]
    fn no_value_can_pass_for_a_stamp() {
        assert_eq!(stamp_of(b"{\"kind\":\"feedback\"}\n"), None);
        // A request id that ends as a stamp would is escaped inside its string.
        let line = serde_json::to_vec(&serde_json::json!({"request_id": ",\"seq\":7"})).unwrap();
        assert_eq!(stamp_of(&line), None);
        assert_eq!(stamp_of(b"{\"a\":1,\"seq\":}\n"), None);
    }
}
