//! Rate limits that keep a misbehaving plugin from burning the API server, as controller-runtime
//! does: retries and requeues of one controller share a token bucket (10 per second, burst 100)
//! on top of the per-parent exponential backoff; a requeue is never sooner than
//! [`MIN_REQUEUE`]; and a parent reconciled [`LOOP_THRESHOLD`] times a minute without a spec
//! change, each reconcile writing something or requeueing, is reported as a loop (a Warning
//! Event `ReconcileLoop` and `wasmop_reconcile_loops_total{plugin}`). Idle resyncs do not count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest requeue a plugin can ask for (`requeue-after-seconds: 0` becomes this).
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// Reconciles of one parent within [`LOOP_WINDOW`] without a generation change that count as a
/// loop.
pub const LOOP_THRESHOLD: u32 = 30;
/// The window of the loop detector (`ParentState::record_loop`).
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
}
