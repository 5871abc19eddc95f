//! What the pipeline remembers between reconciles of one parent, keyed by the parent's UID so a
//! parent deleted and created again under the same name starts clean. See
//! `docs/architecture.md` ("State the pipeline keeps").

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries beyond the number of live parents kept before a sweep drops those of deleted ones.
const SWEEP_SLACK: usize = 256;

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Consecutive failed reconciles, for backoff.
    failures: u32,
    /// The generation whose spec the plugin called invalid: not retried until it changes.
    invalid_generation: Option<i64>,
}

/// Per-parent memory of one controller: consecutive failures (backoff) and the generation of a
/// spec the plugin called invalid. An entry is dropped when its parent reconciles successfully
/// and, for parents deleted meanwhile, by a sweep that keeps the map within a fixed slack of
/// the number of live parents.
#[derive(Debug, Default)]
pub struct ParentState {
    entries: Mutex<HashMap<String, Entry>>,
    /// Parents with a retry or requeue scheduled that has not started yet (`workqueue_depth`).
    scheduled: Mutex<HashSet<String>>,
    /// The status last written to each parent, until the cache shows the write.
    written: Mutex<HashMap<String, Written>>,
    /// Parents whose first status waits for the children just written: (generation, until).
    first_status: Mutex<HashMap<String, (i64, Instant)>>,
}

/// A status write the parent cache may not show yet.
#[derive(Debug)]
struct Written {
    /// The parent's resourceVersion the write was computed from: while the cache still shows
    /// it, the cache is behind by (at least) this write.
    before: String,
    /// The status written, as JSON text (smaller than a `Value`).
    status: String,
}

impl ParentState {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        match self.entries.lock() {
            Ok(mut map) => f(&mut map),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Counts one more consecutive failure of `uid`; returns how many in a row.
    pub fn record_failure(&self, uid: &str) -> u32 {
        self.with(|map| {
            let entry = map.entry(uid.to_string()).or_default();
            entry.failures = entry.failures.saturating_add(1);
            entry.failures
        })
    }

    /// Remembers that the plugin called generation `generation` of `uid` invalid.
    pub fn record_invalid(&self, uid: &str, generation: i64) {
        self.with(|map| map.entry(uid.to_string()).or_default().invalid_generation = Some(generation));
    }

    /// Whether the plugin already called this generation of `uid` invalid.
    pub fn is_reported_invalid(&self, uid: &str, generation: i64) -> bool {
        self.with(|map| map.get(uid).and_then(|e| e.invalid_generation) == Some(generation))
    }

    /// A retry or requeue of `uid` was scheduled.
    pub fn schedule(&self, uid: &str) {
        if let Ok(mut scheduled) = self.scheduled.lock() {
            scheduled.insert(uid.to_string());
        }
    }

    /// A reconcile of `uid` started.
    pub fn started(&self, uid: &str) {
        if let Ok(mut scheduled) = self.scheduled.lock() {
            scheduled.remove(uid);
        }
    }

    /// How many parents wait for a scheduled retry or requeue.
    pub fn scheduled(&self) -> usize {
        self.scheduled.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Forgets `uid`: it reconciled successfully, or it is gone.
    pub fn forget(&self, uid: &str) {
        self.with(|map| map.remove(uid));
    }

    /// Forgets everything about `uid`, its last status write too: it is gone.
    pub fn forget_all(&self, uid: &str) {
        self.forget(uid);
        if let Ok(mut written) = self.written.lock() {
            written.remove(uid);
        }
        self.first_status_done(uid);
    }

    /// Remembers that `status` was written to `uid`, whose cached copy had resourceVersion
    /// `before`.
    pub fn status_written(&self, uid: &str, before: &str, status: &serde_json::Value) {
        if let Ok(mut written) = self.written.lock() {
            written.insert(uid.into(), Written { before: before.into(), status: status.to_string() });
        }
    }

    /// The status last written to `uid` when the cache (showing resourceVersion `cached`) has
    /// not caught up with that write yet; `None` when it has (and the entry is dropped).
    pub fn unseen_status(&self, uid: &str, cached: &str) -> Option<serde_json::Value> {
        let mut written = self.written.lock().ok()?;
        match written.get(uid) {
            Some(w) if w.before == cached => serde_json::from_str(&w.status).ok(),
            Some(_) => {
                written.remove(uid);
                None
            }
            None => None,
        }
    }

    /// How much longer the first status of generation `generation` of `uid` may wait for its
    /// children: `start` (children were just written) opens a window of `grace` if none is
    /// open; later reconciles of the same generation honour it. `None` once it is over.
    pub fn first_status_wait(&self, uid: &str, generation: i64, start: bool, grace: Duration) -> Option<Duration> {
        let mut waiting = self.first_status.lock().ok()?;
        let now = Instant::now();
        let until = match waiting.get(uid) {
            Some((g, until)) if *g == generation => *until,
            _ if start => {
                waiting.insert(uid.into(), (generation, now + grace));
                now + grace
            }
            _ => return None,
        };
        until.checked_duration_since(now).filter(|wait| !wait.is_zero())
    }

    /// The first status of `uid` was written (or is not waited for any more).
    pub fn first_status_done(&self, uid: &str) {
        if let Ok(mut waiting) = self.first_status.lock() {
            waiting.remove(uid);
        }
    }

    /// Number of parents remembered.
    pub fn len(&self) -> usize {
        self.with(|map| map.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries of parents that no longer exist, when the map has grown past the live
    /// count plus a slack; `live` is asked for the live UIDs only then.
    pub fn sweep(&self, live_count: usize, live: impl FnOnce() -> HashSet<String>) {
        let written = self.written.lock().map(|w| w.len()).unwrap_or_default();
        let waiting = self.first_status.lock().map(|w| w.len()).unwrap_or_default();
        if self.len().max(written).max(waiting) <= live_count + SWEEP_SLACK {
            return;
        }
        let live = live();
        if let Ok(mut written) = self.written.lock() {
            written.retain(|uid, _| live.contains(uid));
        }
        if let Ok(mut waiting) = self.first_status.lock() {
            waiting.retain(|uid, _| live.contains(uid));
        }
        self.with(|map| map.retain(|uid, _| live.contains(uid)));
        if let Ok(mut scheduled) = self.scheduled.lock() {
            scheduled.retain(|uid| live.contains(uid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_per_uid_and_cleared_on_success() {
        let state = ParentState::default();
        state.record_invalid("uid-1", 1);
        assert!(state.is_reported_invalid("uid-1", 1));
        // The same name created again has a new UID: nothing carries over.
        assert!(!state.is_reported_invalid("uid-2", 1));
        assert_eq!(state.record_failure("uid-2"), 1);
        assert_eq!(state.record_failure("uid-2"), 2);
        state.forget("uid-2");
        assert_eq!(state.record_failure("uid-2"), 1);
    }

    #[test]
    fn churn_of_100k_deleted_parents_stays_bounded() {
        let state = ParentState::default();
        let mut live: HashSet<String> = HashSet::new();
        for i in 0..100_000 {
            let uid = format!("uid-{i}");
            live.insert(uid.clone());
            state.record_invalid(&uid, 1);
            state.sweep(live.len(), || live.clone());
            // Deleted right after its reconcile.
            live.remove(&uid);
        }
        assert!(state.len() <= SWEEP_SLACK + 1, "{} entries remembered", state.len());
    }

    #[test]
    fn a_status_write_counts_until_the_cache_shows_it() {
        let state = ParentState::default();
        let status = serde_json::json!({"observedGeneration": 1});
        state.status_written("uid-1", "10", &status);
        // The cache still shows the parent as it was before the write.
        assert_eq!(state.unseen_status("uid-1", "10"), Some(status));
        // It moved on: the cache is what counts again, and the entry is dropped.
        assert_eq!(state.unseen_status("uid-1", "11"), None);
        assert_eq!(state.unseen_status("uid-1", "10"), None);
        state.status_written("uid-2", "10", &serde_json::json!({}));
        state.forget_all("uid-2");
        assert_eq!(state.unseen_status("uid-2", "10"), None);
    }

    #[test]
    fn a_first_status_waits_only_within_the_window_of_its_generation() {
        let state = ParentState::default();
        let grace = Duration::from_secs(60);
        // No children written, no window open: write at once.
        assert_eq!(state.first_status_wait("uid-1", 1, false, grace), None);
        // Children written: wait; a later reconcile of the same generation honours the window.
        assert!(state.first_status_wait("uid-1", 1, true, grace).is_some());
        assert!(state.first_status_wait("uid-1", 1, false, grace).is_some());
        // A new generation does not inherit it.
        assert_eq!(state.first_status_wait("uid-1", 2, false, grace), None);
        // Over: write.
        assert!(state.first_status_wait("uid-2", 1, true, Duration::ZERO).is_none());
        state.first_status_done("uid-1");
        assert_eq!(state.first_status_wait("uid-1", 1, false, grace), None);
    }
}
