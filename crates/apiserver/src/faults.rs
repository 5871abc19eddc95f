//! Fault injection for tests: failing requests, dropping watches, latency, history expiry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::State;

#[derive(Debug, Clone)]
struct Rule {
    verb: String,
    resource: String,
    remaining: u32,
    code: u16,
}

/// Handle to inject faults into a running server.
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    latency: Mutex<Duration>,
    drop: watch::Sender<u64>,
    state: Arc<Mutex<State>>,
}

impl Faults {
    pub(crate) fn new(state: Arc<Mutex<State>>) -> Self {
        Faults { rules: Mutex::new(Vec::new()), latency: Mutex::new(Duration::ZERO), drop: watch::channel(0).0, state }
    }

    /// Fails the next `n` requests with `verb` (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`, `deletecollection`, or `*`) on `resource` (plural such as
    /// `configmaps`, `deployments/status`, or `*`) with HTTP `status_code` and a matching Status.
    pub fn fail_next(&self, verb: &str, resource: &str, n: u32, status_code: u16) {
        if let Ok(mut r) = self.rules.lock() {
            r.push(Rule { verb: verb.to_string(), resource: resource.to_string(), remaining: n, code: status_code });
        }
    }

    /// Closes every open watch stream (clients see the stream end and re-watch).
    pub fn drop_watches(&self) {
        self.drop.send_modify(|v| *v += 1);
    }

    /// Adds a delay before every request is handled (`Duration::ZERO` to disable).
    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut l) = self.latency.lock() {
            *l = latency;
        }
    }

    /// Forgets the watch history, as an etcd compaction does: every watch resuming from an
    /// older resourceVersion then receives a 410 `Expired` ERROR event and must relist.
    pub fn expire_history(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.compact();
        }
    }

    /// Removes all pending failure rules and the latency.
    pub fn clear(&self) {
        if let Ok(mut r) = self.rules.lock() {
            r.clear();
        }
        self.set_latency(Duration::ZERO);
    }

    pub(crate) fn latency(&self) -> Duration {
        self.latency.lock().map(|l| *l).unwrap_or_default()
    }

    pub(crate) fn drop_receiver(&self) -> watch::Receiver<u64> {
        self.drop.subscribe()
    }

    /// Consumes one matching rule, returning the status code to fail with.
    pub(crate) fn take(&self, verb: &str, resource: &str) -> Option<u16> {
        let mut rules = self.rules.lock().ok()?;
        let base = resource.split('/').next().unwrap_or(resource);
        let idx = rules.iter().position(|r| {
            r.remaining > 0
                && (r.verb == "*" || r.verb == verb)
                && (r.resource == "*" || r.resource == resource || (r.resource == base && !resource.contains('/')))
        })?;
        rules[idx].remaining -= 1;
        let code = rules[idx].code;
        if rules[idx].remaining == 0 {
            rules.remove(idx);
        }
        Some(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_consumed() {
        let f = Faults::new(Arc::new(Mutex::new(State::new(10))));
        f.fail_next("create", "configmaps", 2, 500);
        assert_eq!(f.take("get", "configmaps"), None);
        assert_eq!(f.take("create", "configmaps"), Some(500));
        assert_eq!(f.take("create", "configmaps"), Some(500));
        assert_eq!(f.take("create", "configmaps"), None);
        f.fail_next("*", "*", 1, 409);
        assert_eq!(f.take("patch", "deployments/status"), Some(409));
    }
}
