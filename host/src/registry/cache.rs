//! A size-bounded on-disk cache of pulled artifacts, keyed by manifest digest, so a restart
//! serves with the registry down. Each entry is the component's bytes and the sha256 they had
//! when stored; a read checks them again, and an entry that no longer matches is dropped.
//! The least recently used entries go first when the cache is over its size.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::sha256;

/// The on-disk artifact cache. Cheap to clone; every clone uses the same directory.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl ArtifactCache {
    /// A cache in `dir` (created on first store) holding at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> ArtifactCache {
        ArtifactCache { dir, max_bytes }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, digest: &str) -> Option<(PathBuf, PathBuf)> {
        let hex = digest.strip_prefix("sha256:")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some((self.dir.join(format!("{hex}.wasm")), self.dir.join(format!("{hex}.sha256"))))
    }

    /// The bytes of the artifact with manifest digest `digest`, if cached and intact.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let (bytes_path, sum_path) = self.paths(digest)?;
        let bytes = std::fs::read(&bytes_path).ok()?;
        let expected = std::fs::read_to_string(&sum_path).ok()?;
        if sha256(&bytes) != expected.trim() {
            tracing::warn!(digest, path = %bytes_path.display(), "cached artifact does not match its checksum; dropped");
            let _ = std::fs::remove_file(&bytes_path);
            let _ = std::fs::remove_file(&sum_path);
            return None;
        }
        // Recently used: last to be evicted.
        if let Ok(file) = std::fs::File::options().append(true).open(&bytes_path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// Stores the artifact (atomically: a reader sees all of it or none), then evicts the
    /// least recently used others while the cache is over its size. Failing to store is
    /// logged: the artifact still serves, only a restart without the registry cannot.
    pub fn put(&self, digest: &str, bytes: &[u8]) {
        let Some((bytes_path, sum_path)) = self.paths(digest) else { return };
        let result = std::fs::create_dir_all(&self.dir)
            .and_then(|()| write_atomic(&bytes_path, bytes))
            .and_then(|()| write_atomic(&sum_path, sha256(bytes).as_bytes()));
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), digest, error = %e,
                "cannot store the artifact in the plugin cache; a restart will need the registry");
            return;
        }
        self.evict(&bytes_path);
    }

    /// Removes the least recently used entries (never `keep`) while over the size.
    fn evict(&self, keep: &Path) {
        let Ok(read) = std::fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = read
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            tracing::info!(path = %path.display(), "plugin cache over its size; evicted the least recently used artifact");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(path.with_extension("sha256"));
            total -= len;
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_and_a_corrupted_one_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().join("c"), 1 << 20);
        let digest = sha256(b"manifest");
        assert!(cache.get(&digest).is_none());
        cache.put(&digest, b"component");
        assert_eq!(cache.get(&digest).as_deref(), Some(&b"component"[..]));
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::write(dir.path().join("c").join(format!("{hex}.wasm")), b"tampered").unwrap();
        assert!(cache.get(&digest).is_none());
        assert!(cache.get("sha256:../../etc/passwd").is_none());
    }

    #[test]
    fn the_least_recently_used_entry_goes_when_over_size() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), 25);
        let (a, b, c) = (sha256(b"a"), sha256(b"b"), sha256(b"c"));
        cache.put(&a, &[1; 10]);
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        let path = |d: &str| dir.path().join(format!("{}.wasm", d.strip_prefix("sha256:").unwrap()));
        std::fs::File::options().append(true).open(path(&a)).unwrap().set_modified(old).unwrap();
        cache.put(&b, &[2; 10]);
        std::fs::File::options().append(true).open(path(&b)).unwrap().set_modified(old).unwrap();
        // Reading a makes b the least recently used.
        assert!(cache.get(&a).is_some());
        cache.put(&c, &[3; 10]);
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&c).is_some());
    }
}
