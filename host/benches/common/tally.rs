//! A tally of the ConfigMaps by one mark (a label or an annotation), kept current by one watch,
//! for the benches that wait until N children carry a new plugin's mark.
//!
//! The watch backs off on errors and its task is aborted when the tally is dropped: a watch of a
//! server that has gone away must not spin, or the runtime's shutdown never ends (a CI run once
//! hung there after every figure was printed).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

/// How many ConfigMaps carry each value of the mark.
pub struct Tally {
    rx: tokio::sync::watch::Receiver<HashMap<String, usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tally {
    /// Follows `api`, reading each ConfigMap's mark with `mark`.
    pub fn follow(api: Api<ConfigMap>, mark: fn(&ConfigMap) -> Option<String>) -> Tally {
        let (tx, rx) = tokio::sync::watch::channel(HashMap::new());
        let task = tokio::spawn(async move {
            let mut by_name: HashMap<String, String> = HashMap::new();
            let mut counts: HashMap<String, usize> = HashMap::new();
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                let (name, value) = match event {
                    Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => (c.name_any(), mark(&c)),
                    Ok(watcher::Event::Delete(c)) => (c.name_any(), None),
                    _ => continue,
                };
                let previous = match value {
                    Some(v) => {
                        *counts.entry(v.clone()).or_default() += 1;
                        by_name.insert(name, v)
                    }
                    None => by_name.remove(&name),
                };
                if let Some(c) = previous.and_then(|p| counts.get_mut(&p)) {
                    *c -= 1;
                }
                if tx.send(counts.clone()).is_err() {
                    return;
                }
            }
        });
        Tally { rx, task }
    }

    /// How many ConfigMaps carry `value` now.
    pub fn count(&self, value: &str) -> usize {
        self.rx.borrow().get(value).copied().unwrap_or(0)
    }

    /// Waits until `n` ConfigMaps carry `value`; fails, saying how far it got, after 120 s
    /// without a change.
    pub async fn wait(&mut self, value: &str, n: usize) {
        loop {
            let seen = self.count(value);
            if seen >= n {
                return;
            }
            if !matches!(tokio::time::timeout(Duration::from_secs(120), self.rx.changed()).await, Ok(Ok(()))) {
                panic!("no change for 120 s, at {seen}/{n} ConfigMaps of {value}: {:?}", *self.rx.borrow());
            }
        }
    }
}
