//! Counting the opens of a directory's files from outside the process, through inotify.

use std::path::{Path, PathBuf};

use super::cluster::eventually;

/// Opens of the files of a directory, seen from outside through inotify, as strace would.
pub struct Opens {
    events: std::sync::Arc<std::sync::Mutex<Vec<notify::Event>>>,
    dir: PathBuf,
    _watcher: notify::RecommendedWatcher,
}

impl Opens {
    /// Starts counting.
    pub fn watch(dir: &Path) -> Opens {
        use notify::Watcher;
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if let Ok(e) = e {
                sink.lock().unwrap().push(e);
            }
        })
        .unwrap();
        watcher.watch(dir, notify::RecursiveMode::NonRecursive).unwrap();
        Opens { events, dir: dir.to_path_buf(), _watcher: watcher }
    }

    /// Times `file` was opened so far.
    pub fn count(&self, file: &str) -> usize {
        let path = self.dir.join(file);
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| matches!(e.kind, notify::EventKind::Access(notify::event::AccessKind::Open(_))))
            .filter(|e| e.paths.contains(&path))
            .count()
    }

    /// Waits until every open made before now has been seen: inotify keeps order, so once a
    /// file created now is seen, so is everything before it.
    pub async fn fence(&self, name: &str) {
        let path = self.dir.join(name);
        std::fs::write(&path, "").unwrap();
        eventually("the fence file seen", || async {
            self.events.lock().unwrap().iter().any(|e| e.paths.contains(&path))
        })
        .await;
    }
}

/// Sets the modification time of `files` in `dir` a minute back: a file written just now is read
/// again on the next scan (its stamp is not trusted), which a read count must not include.
pub fn written_a_minute_ago(dir: &Path, files: &[&str]) {
    let minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for file in files {
        std::fs::File::options().write(true).open(dir.join(file)).unwrap().set_modified(minute_ago).unwrap();
    }
}
