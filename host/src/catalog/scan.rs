//! The plugins directory as files: which files are plugins, what each looks like on disk
//! (so an unchanged file is not read again), and reading one with its sidecar.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::plugin::{LoadedPlugin, OperatorPlugin, PluginError, PolicyPlugin, Runtime, sha256_hex};
use crate::sidecar::{self, Sidecar, SidecarError};

/// The most a ConfigMap holds: a larger plugin cannot have come from one intact.
const CONFIGMAP_LIMIT: usize = 1 << 20;

/// The `*.wasm` files of `dir` (symlinks followed), sorted by name: the one scanner of the
/// plugins directory.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The plugins of a directory loaded once, for the one-shot commands (`wasmop rbac`, `crd`,
/// `inspect`); a running operator follows the directory through the [`super::Catalog`].
#[derive(Default)]
pub struct PluginSet {
    /// Operator plugins, in file-name order.
    pub operators: Vec<OperatorPlugin>,
    /// Policy plugins, in file-name order (the order they review in).
    pub policies: Vec<PolicyPlugin>,
    /// Files that could not be loaded, with why. They are reported, never fatal.
    pub failures: Vec<(PathBuf, PluginError)>,
}

/// Loads every `*.wasm` in `dir` (sorted by name) once. A file that fails to load is logged
/// and listed in [`PluginSet::failures`]; the others still load.
pub fn load_dir(rt: &Runtime, dir: &Path) -> std::io::Result<PluginSet> {
    let mut set = PluginSet::default();
    for path in plugin_files(dir)? {
        match rt.load(&path) {
            Ok(LoadedPlugin::Operator(p)) => set.operators.push(p),
            Ok(LoadedPlugin::Policy(p)) => set.policies.push(p),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "plugin not loaded");
                set.failures.push((path, e));
            }
        }
    }
    Ok(set)
}

/// What a plugin file and its sidecar look like on disk, without reading them: size, change
/// time, inode and device (of the target, through symlinks, so the `..data` swap of a mounted
/// ConfigMap changes it). Equal stamps mean the files were not written since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    wasm: Option<FileStamp>,
    sidecar: Option<FileStamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    inode: (u64, u64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            inode: (m.dev(), m.ino()),
        })
    }
}

impl Stamp {
    /// The stamp of plugin file `path` and its sidecar now.
    pub(super) fn of(path: &Path) -> Stamp {
        Stamp { wasm: FileStamp::of(path), sidecar: FileStamp::of(&sidecar::path_for(path)) }
    }

    /// Whether either file changed so recently that a second write may not move its times
    /// (the kernel stamps files with a coarse clock): such a stamp proves nothing, and the
    /// file is read again on the next scan (git calls this "racily clean").
    pub(super) fn is_recent(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let recent = |f: &FileStamp| u64::try_from(f.mtime.0).map_or(true, |t| t + RACY_SECONDS >= now);
        self.wasm.iter().chain(&self.sidecar).any(recent)
    }
}

/// How long after a write a file's stamp is not trusted (see [`Stamp::is_recent`]).
const RACY_SECONDS: u64 = 2;

/// A plugin file and its sidecar, read once.
pub(super) struct Read {
    wasm: Result<Vec<u8>, String>,
    sidecar: Result<Sidecar, SidecarError>,
    fingerprint: String,
}

/// Reads `path` and its sidecar.
pub(super) fn read(path: &Path) -> Read {
    let wasm = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let sidecar = sidecar::read(path);
    let wasm_sha = wasm.as_ref().map_or_else(|e| format!("unreadable:{e}"), |b| sha256_hex(b));
    let sidecar_sha = sidecar.as_ref().map_or_else(|e| format!("invalid:{e}"), |s| sha256_hex(&s.bytes));
    Read { wasm, sidecar, fingerprint: format!("{wasm_sha}:{sidecar_sha}") }
}

impl Read {
    /// sha256 of the plugin's bytes and of its sidecar's (or why either is unreadable).
    pub(super) fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The plugin's bytes and sidecar, or why they cannot be used.
    pub(super) fn into_parts(self) -> Result<(Vec<u8>, Sidecar), String> {
        let sidecar = self.sidecar.map_err(|e| e.to_string())?;
        Ok((self.wasm?, sidecar))
    }
}

/// Why a plugin of `size` bytes cannot be used from `dir`: a directory mounted from a
/// ConfigMap (it has `..data`) cannot hold more than 1 MiB intact.
pub(super) fn over_configmap_limit(dir: &Path, size: usize) -> Option<String> {
    (size > CONFIGMAP_LIMIT && dir.join("..data").exists()).then(|| over_limit_message(size))
}

fn over_limit_message(size: usize) -> String {
    format!(
        "{size} bytes ({:.2} MiB) is over the 1048576 bytes (1 MiB) a ConfigMap can hold, and this directory is \
         mounted from one (it has ..data); ship a plugin this large in the image, or gzip it into a WasmPlugin's \
         ConfigMap source once that exists",
        size as f64 / f64::from(1 << 20)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configmap_refusal_gives_the_exact_size() {
        let message = over_limit_message(1_300_000);
        assert!(message.starts_with("1300000 bytes (1.24 MiB) is over the 1048576 bytes (1 MiB)"), "{message}");
    }

    #[test]
    fn only_a_configmap_mounted_directory_refuses_large_plugins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(over_configmap_limit(dir.path(), 2 << 20), None);
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        assert_eq!(over_configmap_limit(dir.path(), 1 << 20), None);
        assert!(over_configmap_limit(dir.path(), (1 << 20) + 1).is_some());
    }

    #[test]
    fn a_stamp_changes_with_a_write_and_not_with_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        std::fs::write(&path, b"one").unwrap();
        let before = Stamp::of(&path);
        assert!(before.is_recent(), "a file written just now is racily clean");
        let _ = read(&path);
        assert_eq!(Stamp::of(&path), before);
        std::fs::write(&path, b"three").unwrap();
        assert_ne!(Stamp::of(&path), before);
        std::fs::write(sidecar::path_for(&path), "[settings]\n").unwrap();
        assert_ne!(Stamp::of(&path).sidecar, None);
    }
}
