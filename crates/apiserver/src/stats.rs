//! Request counters by verb and resource.

use std::collections::BTreeMap;

/// Counts of API requests by (verb, resource); resource is the plural, with `/status` for the
/// status subresource. Discovery and OpenAPI requests are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// (verb, resource) -> count.
    pub counts: BTreeMap<(String, String), u64>,
}

const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

impl RequestStats {
    pub(crate) fn record(&mut self, verb: &str, resource: &str) {
        *self.counts.entry((verb.to_string(), resource.to_string())).or_default() += 1;
    }

    /// Requests with this verb on this resource (`*` matches any; `deployments` also counts
    /// `deployments/status`).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((v, r), _)| {
                (verb == "*" || v == verb)
                    && (resource == "*" || r == resource || r.split('/').next() == Some(resource))
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Write requests (create, update, patch, delete, deletecollection) on a resource (`*` for all).
    pub fn writes(&self, resource: &str) -> u64 {
        WRITE_VERBS.iter().map(|v| self.count(v, resource)).sum()
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Requests made after `earlier` was taken.
    pub fn since(&self, earlier: &RequestStats) -> RequestStats {
        let mut out = RequestStats::default();
        for (k, n) in &self.counts {
            let before = earlier.counts.get(k).copied().unwrap_or(0);
            if *n > before {
                out.counts.insert(k.clone(), n - before);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_differences() {
        let mut s = RequestStats::default();
        s.record("get", "configmaps");
        s.record("patch", "deployments/status");
        let before = s.clone();
        s.record("create", "configmaps");
        assert_eq!(s.count("patch", "deployments"), 1);
        assert_eq!(s.writes("*"), 2);
        assert_eq!(s.since(&before).total(), 1);
        assert_eq!(s.since(&before).writes("configmaps"), 1);
    }
}
