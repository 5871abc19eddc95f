//! Rate limits that keep a misbehaving plugin from burning the API server, as controller-runtime
//! does: retries and requeues of one controller share a token bucket (10 per second, burst 100)
//! on top of the per-parent exponential backoff; a requeue is never sooner than
//! [`MIN_REQUEUE`]; and a parent reconciled [`LOOP_THRESHOLD`] times a minute without a spec
//! change, each reconcile writing something or requeueing, is reported as a loop (a Warning
//! Event `ReconcileLoop` and `wasmop_reconcile_loops_total{plugin}`). Idle resyncs do not count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest requeue a plugin can ask for (`requeue-after-seconds: 0` becomes this).
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// Reconciles of one parent within [`LOOP_WINDOW`] without a generation change that count as a
/// loop.
pub const LOOP_THRESHOLD: u32 = 30;
/// The window of the loop detector.
pub const LOOP_WINDOW: Duration = Duration::from_secs(60);

/// A token bucket: `reserve` says how long to wait for the next token (0 when one is free).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` tokens per second, at most `burst` saved up.
    pub fn new(rate: f64, burst: u32) -> Self {
        TokenBucket { rate, burst: f64::from(burst), state: Mutex::new((f64::from(burst), Instant::now())) }
    }

    /// Takes a token, possibly one not yet earned; returns how long until it is.
    pub fn reserve(&self) -> Duration {
        let Ok(mut state) = self.state.lock() else { return Duration::ZERO };
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst) - 1.0;
        *state = (tokens, now);
        if tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-tokens / self.rate) }
    }
}

impl Default for TokenBucket {
    /// controller-runtime's overall limiter: 10 per second, burst 100.
    fn default() -> Self {
        TokenBucket::new(10.0, 100)
    }
}

/// Counts reconciles per parent UID that did not follow a generation change.
#[derive(Debug, Default)]
pub struct LoopDetector {
    seen: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    generation: i64,
    started: Instant,
    count: u32,
    reported: bool,
}

impl LoopDetector {
    /// Records a reconcile of `uid` at `generation`; returns the count when it crosses
    /// [`LOOP_THRESHOLD`] within the window (once per window).
    pub fn record(&self, uid: &str, generation: i64) -> Option<u32> {
        let Ok(mut seen) = self.seen.lock() else { return None };
        let now = Instant::now();
        let fresh = Window { generation, started: now, count: 0, reported: false };
        let window = seen.entry(uid.to_string()).or_insert(fresh);
        if window.generation != generation || now.duration_since(window.started) > LOOP_WINDOW {
            *window = fresh;
        }
        window.count += 1;
        if window.count >= LOOP_THRESHOLD && !window.reported {
            window.reported = true;
            return Some(window.count);
        }
        None
    }

    /// Forgets `uid` (deleted).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(uid);
        }
    }

    /// Keeps only the UIDs `keep` says are live.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|uid, _| keep(uid));
        }
    }

    /// Number of parents tracked.
    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Whether no parent is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_paces() {
        let bucket = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.reserve(), Duration::ZERO);
        }
        let wait = bucket.reserve();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100), "{wait:?}");
        let next = bucket.reserve();
        assert!(next > wait, "{next:?} after {wait:?}");
    }

    #[test]
    fn a_loop_is_reported_once_per_window_and_a_spec_change_resets_it() {
        let detector = LoopDetector::default();
        let reports: Vec<u32> = (0..100).filter_map(|_| detector.record("u", 1)).collect();
        assert_eq!(reports, [LOOP_THRESHOLD]);
        for _ in 0..LOOP_THRESHOLD - 1 {
            assert_eq!(detector.record("u", 2), None);
        }
    }
}
