//! What the pipeline remembers between reconciles of one parent, keyed by the parent's UID so a
//! parent deleted and created again under the same name starts clean: one entry per parent
//! holds all of it, and one sweep drops the entries of parents gone. See
//! `docs/architecture.md` ("State the pipeline keeps").

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ratelimit::{LOOP_THRESHOLD, LOOP_WINDOW};

/// Entries beyond the number of live parents kept before a sweep drops those of deleted ones.
const SWEEP_SLACK: usize = 256;

/// Everything remembered about one parent. An entry with nothing in it is dropped.
#[derive(Debug, Default)]
struct Entry {
    /// Consecutive failed reconciles, for backoff.
    failures: u32,
    /// The generation whose spec the plugin called invalid: not retried until it changes.
    invalid_generation: Option<i64>,
    /// A retry or requeue is scheduled and has not started yet (`workqueue_depth`).
    scheduled: bool,
    /// The status last written, until the cache shows the write.
    written: Option<Written>,
    /// The first status waits for the children just written: (generation, until).
    first_status: Option<(i64, Instant)>,
    /// Reconciles that wrote or requeued without a generation change, for the loop detector.
    loop_window: Option<LoopWindow>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.failures == 0
            && self.invalid_generation.is_none()
            && !self.scheduled
            && self.written.is_none()
            && self.first_status.is_none()
            && self.loop_window.is_none()
    }
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

/// Reconciles of one generation within [`LOOP_WINDOW`].
#[derive(Debug, Clone, Copy)]
struct LoopWindow {
    generation: i64,
    started: Instant,
    count: u32,
    reported: bool,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// How many entries are `scheduled`, kept as they change (read on every reconcile).
    scheduled: usize,
}

/// Per-parent memory of one controller: consecutive failures (backoff), the generation of a
/// spec the plugin called invalid, a scheduled retry, the last status write, the first-status
/// grace and the loop detector's window, in one entry per parent UID. Each part is cleared when
/// it is done with (a success clears the failures); parents deleted meanwhile are dropped by a
/// sweep that keeps the map within a fixed slack of the number of live parents.
#[derive(Debug, Default)]
pub struct ParentState {
    entries: Mutex<Entries>,
}

impl ParentState {
    /// Runs `f` on the entry of `uid` (created if absent), dropping it when left empty.
    fn update<T>(&self, uid: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut entries = match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Entries { map, scheduled } = &mut *entries;
        // Most calls find nothing to remember (a parent that reconciles cleanly): the key is
        // allocated only when an entry is kept.
        let mut fresh = Entry::default();
        let known = map.contains_key(uid);
        let entry = map.get_mut(uid).unwrap_or(&mut fresh);
        let was_scheduled = entry.scheduled;
        let result = f(entry);
        match (was_scheduled, entry.scheduled) {
            (false, true) => *scheduled += 1,
            (true, false) => *scheduled -= 1,
            _ => {}
        }
        match (known, entry.is_empty()) {
            (true, true) => {
                map.remove(uid);
            }
            (false, false) => {
                map.insert(uid.to_string(), fresh);
            }
            _ => {}
        }
        result
    }

    /// Reads the entry of `uid`, if any.
    fn read<T>(&self, uid: &str, f: impl FnOnce(Option<&Entry>) -> T) -> T {
        match self.entries.lock() {
            Ok(entries) => f(entries.map.get(uid)),
            Err(poisoned) => f(poisoned.into_inner().map.get(uid)),
        }
    }

    /// Counts one more consecutive failure of `uid`; returns how many in a row.
    pub fn record_failure(&self, uid: &str) -> u32 {
        self.update(uid, |e| {
            e.failures = e.failures.saturating_add(1);
            e.failures
        })
    }

    /// Remembers that the plugin called generation `generation` of `uid` invalid.
    pub fn record_invalid(&self, uid: &str, generation: i64) {
        self.update(uid, |e| e.invalid_generation = Some(generation));
    }

    /// Whether the plugin already called this generation of `uid` invalid.
    pub fn is_reported_invalid(&self, uid: &str, generation: i64) -> bool {
        self.read(uid, |e| e.and_then(|e| e.invalid_generation) == Some(generation))
    }

    /// A retry or requeue of `uid` was scheduled.
    pub fn schedule(&self, uid: &str) {
        self.update(uid, |e| e.scheduled = true);
    }

    /// A reconcile of `uid` started.
    pub fn started(&self, uid: &str) {
        self.update(uid, |e| e.scheduled = false);
    }

    /// How many parents wait for a scheduled retry or requeue.
    pub fn scheduled(&self) -> usize {
        self.entries.lock().map(|e| e.scheduled).unwrap_or_default()
    }

    /// `uid` reconciled successfully: its failures and invalid generation are forgotten.
    pub fn forget(&self, uid: &str) {
        self.update(uid, |e| {
            e.failures = 0;
            e.invalid_generation = None;
        });
    }

    /// Forgets everything about `uid`: it is gone.
    pub fn forget_all(&self, uid: &str) {
        self.update(uid, |e| *e = Entry::default());
    }

    /// Remembers that `status` was written to `uid`, whose cached copy had resourceVersion
    /// `before`.
    pub fn status_written(&self, uid: &str, before: &str, status: &serde_json::Value) {
        let written = Written { before: before.into(), status: status.to_string() };
        self.update(uid, |e| e.written = Some(written));
    }

    /// The status last written to `uid` when the cache (showing resourceVersion `cached`) has
    /// not caught up with that write yet; `None` when it has (and that write is forgotten).
    pub fn unseen_status(&self, uid: &str, cached: &str) -> Option<serde_json::Value> {
        self.update(uid, |e| match &e.written {
            Some(w) if w.before == cached => serde_json::from_str(&w.status).ok(),
            Some(_) => {
                e.written = None;
                None
            }
            None => None,
        })
    }

    /// How much longer the first status of generation `generation` of `uid` may wait for its
    /// children: `start` (children were just written) opens a window of `grace` if none is
    /// open; later reconciles of the same generation honour it. `None` once it is over.
    pub fn first_status_wait(&self, uid: &str, generation: i64, start: bool, grace: Duration) -> Option<Duration> {
        let now = Instant::now();
        let until = self.update(uid, |e| match e.first_status {
            Some((g, until)) if g == generation => Some(until),
            _ if start => {
                e.first_status = Some((generation, now + grace));
                Some(now + grace)
            }
            _ => None,
        })?;
        until.checked_duration_since(now).filter(|wait| !wait.is_zero())
    }

    /// The first status of `uid` was written (or is not waited for any more).
    pub fn first_status_done(&self, uid: &str) {
        self.update(uid, |e| e.first_status = None);
    }

    /// Records a reconcile of `uid` at `generation` that wrote or requeued; returns the count
    /// when it crosses [`LOOP_THRESHOLD`] within [`LOOP_WINDOW`] (once per window).
    pub fn record_loop(&self, uid: &str, generation: i64) -> Option<u32> {
        let now = Instant::now();
        self.update(uid, |e| {
            let fresh = LoopWindow { generation, started: now, count: 0, reported: false };
            let window = e.loop_window.get_or_insert(fresh);
            if window.generation != generation || now.duration_since(window.started) > LOOP_WINDOW {
                *window = fresh;
            }
            window.count += 1;
            if window.count >= LOOP_THRESHOLD && !window.reported {
                window.reported = true;
                return Some(window.count);
            }
            None
        })
    }

    /// Number of parents remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.map.len()).unwrap_or_default()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries of parents that no longer exist, when the map has grown past the live
    /// count plus a slack; `live` is asked for the live UIDs only then.
    pub fn sweep(&self, live_count: usize, live: impl FnOnce() -> HashSet<String>) {
        if self.len() <= live_count + SWEEP_SLACK {
            return;
        }
        let live = live();
        if let Ok(mut entries) = self.entries.lock() {
            entries.map.retain(|uid, _| live.contains(uid));
            entries.scheduled = entries.map.values().filter(|e| e.scheduled).count();
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
        state.forget("uid-2");
        state.forget("uid-1");
        assert!(state.is_empty(), "a parent with nothing left to remember keeps an entry");
    }

    #[test]
    fn churn_of_100k_deleted_parents_stays_bounded() {
        let state = ParentState::default();
        let mut live: HashSet<String> = HashSet::new();
        for i in 0..100_000 {
            let uid = format!("uid-{i}");
            live.insert(uid.clone());
            state.record_invalid(&uid, 1);
            state.schedule(&uid);
            state.status_written(&uid, "1", &serde_json::json!({}));
            state.record_loop(&uid, 1);
            state.sweep(live.len(), || live.clone());
            // Deleted right after its reconcile.
            live.remove(&uid);
        }
        assert!(state.len() <= SWEEP_SLACK + 1, "{} entries remembered", state.len());
        assert!(state.scheduled() <= SWEEP_SLACK + 1, "{} scheduled", state.scheduled());
    }

    #[test]
    fn scheduled_counts_parents_waiting_until_they_start() {
        let state = ParentState::default();
        state.schedule("a");
        state.schedule("a");
        state.schedule("b");
        assert_eq!(state.scheduled(), 2);
        state.started("a");
        assert_eq!(state.scheduled(), 1);
        state.forget_all("b");
        assert_eq!((state.scheduled(), state.len()), (0, 0));
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
        assert!(state.is_empty());
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

    #[test]
    fn a_loop_is_reported_once_per_window_and_generation() {
        let state = ParentState::default();
        let reports: Vec<u32> = (0..100).filter_map(|_| state.record_loop("u", 1)).collect();
        assert_eq!(reports, [LOOP_THRESHOLD]);
        for _ in 0..LOOP_THRESHOLD - 1 {
            assert_eq!(state.record_loop("u", 2), None);
        }
    }
}
