//! What a sharded replica caches: its parent and child watches select the shard label values of
//! the shards it holds, and follow the held set as shards are gained and given back.
//!
//! A change of the held set re-scopes each watch by starting it again with the new selector.
//! The new watch's list replaces the cache at once (kube-runtime's reflector swaps the whole
//! store on the list's end), so an object of a shard given back leaves the cache without a
//! delete event: nothing takes it for a deletion, nothing is pruned and no finalizer runs. The
//! child watches take a new scope first and the parent watch follows once they have listed it,
//! so a parent of a gained shard arrives with its children already cached.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{Shards, shard_of};

/// Label on every parent and child of a sharded operator: the parent's shard, as
/// `I-of-N` (shard `I` of `N`). Set once per parent by the holder of its shard.
pub const SHARD_LABEL: &str = "wasmop.dev/shard";

/// The value of [`SHARD_LABEL`] for shard `shard` of `count`: it names the count too, so a
/// parent labelled under another `--shards` is seen as unassigned and labelled again.
#[must_use]
pub fn label_value(shard: u32, count: u32) -> String {
    format!("{shard}-of-{count}")
}

impl Shards {
    /// Whether the parents are split into shards (`--shards`), so the caches are too.
    #[must_use]
    pub fn is_split(&self) -> bool {
        self.split
    }

    /// The [`SHARD_LABEL`] value of the parent with `uid` (its children carry it too); `None`
    /// when unsplit.
    #[must_use]
    pub fn label_of(&self, uid: &str) -> Option<String> {
        self.split.then(|| label_value(shard_of(uid, self.count), self.count))
    }

    /// Whether the shard of the parent with `uid` is held now.
    #[must_use]
    pub fn holds(&self, uid: &str) -> bool {
        self.owned.read().is_ok_and(|owned| owned.contains(&shard_of(uid, self.count)))
    }

    /// The label selector of the held shards' objects (none held: one that matches nothing);
    /// `None` when unsplit (every object is cached).
    #[must_use]
    pub fn selector(&self) -> Option<String> {
        self.selector_of(&self.owned().into_iter().collect())
    }

    fn selector_of(&self, held: &BTreeSet<u32>) -> Option<String> {
        if !self.split {
            return None;
        }
        let values: Vec<String> = held.iter().map(|&shard| label_value(shard, self.count)).collect();
        let values = if values.is_empty() { "none".to_string() } else { values.join(",") };
        Some(format!("{SHARD_LABEL} in ({values})"))
    }

    /// The label selector of parents without a valid shard label for this count (none yet, or
    /// one from another `--shards`): those [`super::assign`] labels. `None` when unsplit.
    #[must_use]
    pub fn unassigned_selector(&self) -> Option<String> {
        let values: Vec<String> = (0..self.count).map(|shard| label_value(shard, self.count)).collect();
        self.split.then(|| format!("{SHARD_LABEL} notin ({})", values.join(",")))
    }
}

/// How far a [`scoped`] watch has followed the held shards, for the watches that must follow
/// it and for the controller.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The latest scope (a count of held-set changes) whose list this watch has delivered.
    pub listed: watch::Receiver<u64>,
    /// Counts the re-scopes that gained shards, once their list is delivered: every parent is
    /// then reconciled again (one that returns with an unchanged generation has no event).
    pub gained: watch::Receiver<u64>,
    /// True while a re-scope's list is being delivered.
    pub rescoping: Arc<AtomicBool>,
}

/// A watch of `api` (with `config`, plus the held shards' selector when split) that follows the
/// held set: on a change, once every watch of `after` has listed the new scope, it starts again
/// with the new selector. With backoff. Unsplit, a plain watch.
pub fn scoped<K>(
    api: Api<K>,
    config: watcher::Config,
    shards: Shards,
    after: Vec<watch::Receiver<u64>>,
) -> (BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>, Scope)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (listed, listed_rx) = watch::channel(0);
    let (gained, gained_rx) = watch::channel(0);
    let rescoping = Arc::new(AtomicBool::new(false));
    let scope = Scope { listed: listed_rx, gained: gained_rx, rescoping: rescoping.clone() };
    if !shards.is_split() {
        return (watcher(api, config).default_backoff().boxed(), scope);
    }
    let mut changes = shards.scope.subscribe();
    let generation = *changes.borrow_and_update();
    let held: BTreeSet<u32> = shards.owned().into_iter().collect();
    let events = start(&api, &config, &shards, &held);
    let state = Scoped {
        api,
        config,
        shards,
        changes,
        closed: false,
        after,
        pending: None,
        generation,
        held,
        gaining: false,
        events,
        listed,
        gained,
        rescoping,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((event, state))
    });
    (stream.boxed(), scope)
}

/// A watch of the objects of `held`, with backoff.
fn start<K>(
    api: &Api<K>,
    config: &watcher::Config,
    shards: &Shards,
    held: &BTreeSet<u32>,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let selector = shards.selector_of(held).unwrap_or_default();
    let labels = match &config.label_selector {
        Some(own) if !own.is_empty() => format!("{own},{selector}"),
        _ => selector,
    };
    watcher(api.clone(), config.clone().labels(&labels)).default_backoff().boxed()
}

/// The state of a [`scoped`] watch.
struct Scoped<K> {
    api: Api<K>,
    config: watcher::Config,
    shards: Shards,
    changes: watch::Receiver<u64>,
    /// The held set's sender is gone: no more changes.
    closed: bool,
    after: Vec<watch::Receiver<u64>>,
    /// A scope to take once the watches of `after` have listed it.
    pending: Option<u64>,
    /// The scope of the current watch.
    generation: u64,
    held: BTreeSet<u32>,
    /// The current watch gained shards and has not listed yet.
    gaining: bool,
    events: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    listed: watch::Sender<u64>,
    gained: watch::Sender<u64>,
    rescoping: Arc<AtomicBool>,
}

/// What woke a [`Scoped`] watch.
enum Step<K> {
    Event(Option<Result<watcher::Event<K>, watcher::Error>>),
    Changed(bool),
    Ready,
}

impl<K> Scoped<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    /// The next event of the current watch, re-scoping in between as the held set changes.
    async fn next(&mut self) -> Option<Result<watcher::Event<K>, watcher::Error>> {
        loop {
            match self.step().await {
                Step::Event(event) => {
                    if let Some(Ok(watcher::Event::InitDone)) = &event {
                        self.delivered();
                    }
                    return event;
                }
                Step::Changed(true) => self.pending = Some(*self.changes.borrow_and_update()),
                Step::Changed(false) => self.closed = true,
                Step::Ready => self.rescope(),
            }
        }
    }

    async fn step(&mut self) -> Step<K> {
        let Scoped { events, changes, closed, after, pending, .. } = self;
        let ready = async {
            match *pending {
                Some(scope) => {
                    for watch in after.iter_mut() {
                        let _ = watch.wait_for(|listed| *listed >= scope).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.next() => Step::Event(event),
            changed = changes.changed().map(|r| r.is_ok()), if !*closed => Step::Changed(changed),
            () = ready => Step::Ready,
        }
    }

    /// Takes the pending scope: a new watch when the held set changed.
    fn rescope(&mut self) {
        let Some(scope) = self.pending.take() else { return };
        self.generation = scope;
        let held: BTreeSet<u32> = self.shards.owned().into_iter().collect();
        if held == self.held {
            self.listed.send_replace(scope);
            return;
        }
        self.gaining |= !held.is_subset(&self.held);
        tracing::debug!(url = self.api.resource_url(), ?held, "re-scoping a sharded watch");
        self.events = start(&self.api, &self.config, &self.shards, &held);
        self.held = held;
        self.rescoping.store(true, Ordering::Relaxed);
    }

    /// The current watch delivered its list.
    fn delivered(&mut self) {
        self.listed.send_replace(self.generation);
        if std::mem::take(&mut self.gaining) {
            self.gained.send_modify(|n| *n += 1);
        }
        self.rescoping.store(false, Ordering::Relaxed);
    }
}
