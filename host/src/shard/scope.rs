//! What a sharded replica caches: its parent and child watches select the shards it holds, and
//! follow the held set as shards are gained and given back.
//!
//! Children are selected by their shard label. Parents are selected by the API server's
//! `shardSelector` (hash ranges of the UID, KEP-5866) when the server honours it — it echoes the
//! selector in a list's `metadata.shardInfo` ([`server_honours`]) — and by their shard label on
//! any other server ([`Selection`]).
//!
//! A change of the held set re-scopes each watch by starting it again with the new selector.
//! The new watch's list replaces the cache at once (kube-runtime's reflector swaps the whole
//! store on the list's end), so an object of a shard given back leaves the cache without a
//! delete event: nothing takes it for a deletion, nothing is pruned and no finalizer runs. The
//! child watches take a new scope first and the parent watch follows once they have listed it,
//! so a parent of a gained shard arrives with its children already cached.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{Shards, shard_of, shard_range};

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

    /// The `shardSelector` of the shards held now (see [`Shards::server_selector_of`]).
    #[must_use]
    pub fn server_selector(&self) -> Option<String> {
        self.server_selector_of(&self.owned().into_iter().collect())
    }

    /// The `shardSelector` of the held shards, one `shardRange` of the UID per shard joined by
    /// `||` (none held: `None`, as when unsplit).
    fn server_selector_of(&self, held: &BTreeSet<u32>) -> Option<String> {
        let ranges: Vec<String> = held.iter().map(|&shard| shard_range_expression(shard, self.count)).collect();
        (self.split && !ranges.is_empty()).then(|| ranges.join(" || "))
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

/// `shardRange(object.metadata.uid, 'START', 'END')` of shard `shard` of `count`.
fn shard_range_expression(shard: u32, count: u32) -> String {
    let (start, end) = shard_range(shard, count);
    format!("shardRange(object.metadata.uid, '0x{start:016x}', '0x{end:016x}')")
}

/// How a scoped watch selects the held shards' objects.
#[derive(Clone, Debug, Default)]
pub enum Selection {
    /// By [`SHARD_LABEL`]: any server (parents are labelled by [`super::assign`]).
    #[default]
    Labels,
    /// By the server's `shardSelector`, which the watch's client (made by [`server_client`]
    /// with this slot) adds to its requests.
    Server(ServerSelector),
}

/// The `shardSelector` a [`server_client`] adds to its GET requests (its lists and watches),
/// set by the scoped watch before each start.
#[derive(Clone, Debug, Default)]
pub struct ServerSelector(Arc<RwLock<String>>);

impl ServerSelector {
    fn set(&self, selector: &str) {
        if let Ok(mut slot) = self.0.write() {
            *slot = selector.to_string();
        }
    }

    fn current(&self) -> String {
        self.0.read().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A client like `client` whose GET requests carry `selector`'s current value as
/// `shardSelector` (kube-runtime's watcher has no such parameter).
#[must_use]
pub fn server_client(client: &Client, selector: ServerSelector) -> Client {
    let inner = client.clone();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (inner, selector) = (inner.clone(), selector.current());
        async move { inner.send(with_shard_selector(request, &selector)).await }
    });
    Client::new(service, client.default_namespace())
}

/// `request` with `&shardSelector=SELECTOR` added when it is a GET and `selector` is not empty.
fn with_shard_selector(
    mut request: http::Request<kube::client::Body>,
    selector: &str,
) -> http::Request<kube::client::Body> {
    if request.method() != http::Method::GET || selector.is_empty() {
        return request;
    }
    let uri = request.uri().to_string();
    let joiner = if uri.contains('?') { '&' } else { '?' };
    if let Ok(uri) = format!("{uri}{joiner}shardSelector={}", percent_encode(selector)).parse() {
        *request.uri_mut() = uri;
    }
    request
}

/// `text` with every byte but the unreserved ones (RFC 3986) percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether the server behind `client` honours `shardSelector` on the collection at `url` (an
/// [`Api::resource_url`]): a one-item list with a selector must echo it in
/// `metadata.shardInfo.selector`. A server without the feature ignores the parameter and says
/// nothing, so its full list is never taken for a shard.
pub async fn server_honours(client: &Client, url: &str) -> bool {
    let selector = shard_range_expression(0, 2);
    let request = http::Request::get(format!("{url}?limit=1&shardSelector={}", percent_encode(&selector)));
    let Ok(request) = request.body(Vec::new()) else { return false };
    match client.request::<serde_json::Value>(request).await {
        Ok(list) => list.pointer("/metadata/shardInfo/selector").and_then(|s| s.as_str()) == Some(selector.as_str()),
        Err(e) => {
            tracing::warn!(url, error = %e, "a list with shardSelector failed; selecting the parents by label");
            false
        }
    }
}

/// How far a [`scoped`] watch has followed the held shards, for the watches that must follow
/// it and for the controller.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The latest scope (a count of held-set changes) whose list this watch has delivered.
    pub listed: watch::Receiver<u64>,
    /// True while a re-scope's list is being delivered.
    pub rescoping: Arc<AtomicBool>,
}

/// A watch of `api` (with `config`, plus the held shards' selector by `selection` when split)
/// that follows the held set: on a change, once every watch of `after` has listed the new
/// scope, it starts again with the new selector. With backoff. Unsplit, a plain watch.
pub fn scoped<K>(
    api: Api<K>,
    config: watcher::Config,
    shards: Shards,
    selection: Selection,
    after: Vec<watch::Receiver<u64>>,
) -> (BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>, Scope)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (listed, listed_rx) = watch::channel(0);
    let rescoping = Arc::new(AtomicBool::new(false));
    let scope = Scope { listed: listed_rx, rescoping: rescoping.clone() };
    if !shards.is_split() {
        return (watcher(api, config).default_backoff().boxed(), scope);
    }
    let mut changes = shards.scope.subscribe();
    let generation = *changes.borrow_and_update();
    let held: BTreeSet<u32> = shards.owned().into_iter().collect();
    let events = start(&api, &config, &shards, &selection, &held);
    let state = Scoped {
        api,
        config,
        shards,
        selection,
        changes,
        closed: false,
        after,
        pending: None,
        generation,
        held,
        events,
        listed,
        rescoping,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((event, state))
    });
    (stream.boxed(), scope)
}

/// A watch of the objects of `held`, with backoff. Selected by the server, a watch of no shard
/// selects by a label value no object has.
fn start<K>(
    api: &Api<K>,
    config: &watcher::Config,
    shards: &Shards,
    selection: &Selection,
    held: &BTreeSet<u32>,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let selector = match (selection, shards.server_selector_of(held)) {
        (Selection::Server(slot), Some(ranges)) => {
            slot.set(&ranges);
            return watcher(api.clone(), config.clone()).default_backoff().boxed();
        }
        (Selection::Server(slot), None) => {
            slot.set("");
            shards.selector_of(&BTreeSet::new()).unwrap_or_default()
        }
        (Selection::Labels, _) => shards.selector_of(held).unwrap_or_default(),
    };
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
    selection: Selection,
    changes: watch::Receiver<u64>,
    /// The held set's sender is gone: no more changes.
    closed: bool,
    after: Vec<watch::Receiver<u64>>,
    /// A scope to take once the watches of `after` have listed it.
    pending: Option<u64>,
    /// The scope of the current watch.
    generation: u64,
    held: BTreeSet<u32>,
    events: BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    listed: watch::Sender<u64>,
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
        tracing::debug!(url = self.api.resource_url(), ?held, "re-scoping a sharded watch");
        self.events = start(&self.api, &self.config, &self.shards, &self.selection, &held);
        self.held = held;
        self.rescoping.store(true, Ordering::Relaxed);
    }

    /// The current watch delivered its list.
    fn delivered(&mut self) {
        self.listed.send_replace(self.generation);
        self.rescoping.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_name_the_held_shards() {
        let shards = Shards::none(4);
        assert_eq!(shards.selector().as_deref(), Some("wasmop.dev/shard in (none)"));
        assert_eq!(shards.server_selector(), None, "no range selects nothing");
        shards.hold(1);
        shards.hold(3);
        assert_eq!(shards.selector().as_deref(), Some("wasmop.dev/shard in (1-of-4,3-of-4)"));
        assert_eq!(
            shards.server_selector().as_deref(),
            Some(
                "shardRange(object.metadata.uid, '0x4000000000000000', '0x8000000000000000') || \
                 shardRange(object.metadata.uid, '0xc000000000000000', '0x10000000000000000')"
            )
        );
        assert_eq!(
            shards.unassigned_selector().as_deref(),
            Some("wasmop.dev/shard notin (0-of-4,1-of-4,2-of-4,3-of-4)")
        );
        let all = Shards::all();
        assert_eq!((all.selector(), all.server_selector(), all.label_of("a")), (None, None, None));
    }

    #[test]
    fn only_gets_carry_the_shard_selector() {
        let get = http::Request::get("/apis/g/v1/things?watch=true").body(kube::client::Body::empty()).unwrap();
        let sent = with_shard_selector(get, "shardRange(object.metadata.uid, '0x0', '0x8')");
        assert_eq!(
            sent.uri().to_string(),
            "/apis/g/v1/things?watch=true&shardSelector=shardRange%28object.metadata.uid%2C%20%270x0%27%2C%20%270x8%27%29"
        );
        let patch = http::Request::patch("/apis/g/v1/things/a").body(kube::client::Body::empty()).unwrap();
        assert_eq!(with_shard_selector(patch, "x").uri().to_string(), "/apis/g/v1/things/a");
    }
}
