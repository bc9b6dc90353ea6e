//! What the remote sources (object storage, MLflow) share: the cache of fetched versions and the
//! runtime their clients run on, called from blocking contexts only.
//!
//! Invariants: the cache holds model files by sha256, verified before they are kept and again
//! when read; it is bounded in bytes, least recently used first, never a pinned (loaded) file;
//! its manifests let a restart serve with the source out of reach.

use std::collections::BTreeSet;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{MANIFEST_FILE, RepositoryError, VersionId};

/// The names that hold at least one version, sorted: a remote listing names prefixes or registered
/// models that may hold none (`NoModel`), which are not models.
pub(super) fn with_versions(
    names: Vec<String>,
    versions: impl Fn(&str) -> Result<Vec<VersionId>, RepositoryError>,
) -> Result<Vec<String>, RepositoryError> {
    let mut models = Vec::new();
    for name in names {
        match versions(&name) {
            Ok(_) => models.push(name),
            Err(RepositoryError::NoModel(_)) => {}
            Err(error) => return Err(error),
        }
    }
    models.sort();
    models.dedup();
    Ok(models)
}

/// A client's own runtime: its calls are made and awaited here, whoever calls (`Option`: taken
/// when dropped).
pub(super) struct Worker {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Worker {
    pub(super) fn new(name: &str) -> Result<Self, RepositoryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| RepositoryError::Io { path: PathBuf::from(name), source: e })?;
        Ok(Self { runtime: Some(runtime) })
    }

    /// Runs `work` here and waits for it (from any thread). Work that panicked inside the client is
    /// the source's failure (`None`), not the caller's panic.
    pub(super) fn block<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if let Some(runtime) = &self.runtime {
            runtime.spawn(async move {
                let _ = tx.send(work.await);
            });
        }
        rx.recv().ok()
    }

    /// Runs `work` here without waiting for it.
    pub(super) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(work);
        }
    }
}

impl Drop for Worker {
    /// The gateway may be dropped on an async worker, where a runtime cannot wait for its threads.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Fetched model files by sha256 (`<dir>/<sha256>.onnx`) and the manifests they came with
/// (`<dir>/manifests/<model>/<version>/manifest.json`), bounded in bytes.
pub(super) struct Cache {
    pub(super) dir: PathBuf,
    bytes: u64,
    pub(super) pinned: Mutex<BTreeSet<String>>,
}

impl Cache {
    pub(super) fn open(dir: &Path, bytes: u64) -> Result<Self, RepositoryError> {
        fs::create_dir_all(dir.join("manifests"))
            .map_err(|e| RepositoryError::Io { path: dir.to_owned(), source: e })?;
        Ok(Self { dir: dir.to_owned(), bytes, pinned: Mutex::new(BTreeSet::new()) })
    }

    fn file(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{}.onnx", sha256.to_ascii_lowercase()))
    }

    /// The cached file of this sha256, if it is there and still hashes to it (its use time touched).
    pub(super) fn model(&self, sha256: &str) -> Option<PathBuf> {
        let path = self.file(sha256);
        let bytes = fs::read(&path).ok()?;
        if !hex::encode(Sha256::digest(&bytes)).eq_ignore_ascii_case(sha256) {
            tracing::warn!(path = %path.display(), "a cached model file no longer matches its sha256: fetched again");
            let _ = fs::remove_file(&path);
            return None;
        }
        let _ = fs::File::options().append(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        Some(path)
    }

    /// Keeps verified bytes (temporary file, fsync, rename), then evicts to the bound.
    pub(super) fn put(&self, sha256: &str, bytes: &[u8]) -> Result<PathBuf, RepositoryError> {
        let path = self.file(sha256);
        write_atomically(&path, bytes)?;
        self.evict(sha256);
        Ok(path)
    }

    /// The least recently used files first, until the cache is within its bound; never a pinned one
    /// nor the one just fetched.
    fn evict(&self, keep: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(SystemTime, u64, PathBuf, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".onnx")?.to_owned();
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path(), name))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        let pinned = self.pinned.lock().clone();
        for (_, len, path, sha) in files {
            if total <= self.bytes {
                break;
            }
            if sha.eq_ignore_ascii_case(keep) || pinned.iter().any(|p| p.eq_ignore_ascii_case(&sha)) {
                continue;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
                crate::metrics::repository_evicted();
            }
        }
    }

    fn manifest_path(&self, model: &str, version: &VersionId) -> PathBuf {
        self.dir.join("manifests").join(model).join(version.as_str()).join(MANIFEST_FILE)
    }

    pub(super) fn manifest(&self, model: &str, version: &VersionId) -> Option<String> {
        fs::read_to_string(self.manifest_path(model, version)).ok()
    }

    pub(super) fn put_manifest(&self, model: &str, version: &VersionId, text: &str) -> Result<(), RepositoryError> {
        let path = self.manifest_path(model, version);
        if fs::read_to_string(&path).is_ok_and(|kept| kept == text) {
            return Ok(());
        }
        write_atomically(&path, text.as_bytes())
    }

    pub(super) fn models(&self) -> Vec<String> {
        names(&self.dir.join("manifests"))
    }

    pub(super) fn versions(&self, model: &str) -> Vec<VersionId> {
        let dir = self.dir.join("manifests").join(model);
        names(&dir).into_iter().filter(|v| dir.join(v).join(MANIFEST_FILE).is_file()).map(VersionId::new).collect()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(Result::ok).filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect()
}

pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RepositoryError> {
    let io = |e| RepositoryError::Io { path: path.to_owned(), source: e };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let temporary = path.with_extension(format!("partial-{}", std::process::id()));
    let mut file = fs::File::create(&temporary).map_err(io)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
    fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_cache_evicts_the_least_recently_used_but_never_a_pinned_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 250).unwrap();
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        let (a, b, c) = ([1u8; 100], [2u8; 100], [3u8; 100]);
        cache.put(&sha(&a), &a).unwrap();
        cache.put(&sha(&b), &b).unwrap();
        *cache.pinned.lock() = [sha(&a)].into();
        // Older by its time, pinned all the same; b goes.
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options().append(true).open(cache.file(&sha(&a))).unwrap().set_modified(old).unwrap();
        cache.put(&sha(&c), &c).unwrap();
        assert!(cache.model(&sha(&a)).is_some());
        assert!(cache.model(&sha(&b)).is_none());
        assert!(cache.model(&sha(&c)).is_some());
    }
}
