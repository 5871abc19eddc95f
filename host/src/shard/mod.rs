//! Sharding: N replicas split the parents between them, each reconciling — and caching — the
//! parents whose UID hashes to a shard it holds.
//!
//! Every shard is a Lease (`PREFIX-0` … `PREFIX-(N-1)`), held through [`crate::leader`] (so
//! kube-lease-manager, with the same durations and renew-deadline watchdog as leader election).
//! Every replica also holds a member Lease (`PREFIX-member-IDENTITY`) and lists the others' to
//! know who is alive; with the live members sorted, shard `i` belongs to member `i mod M`. A
//! replica claims its shards, gives back the others (after the reconciles it runs in them have
//! finished, so no parent is ever reconciled by two replicas at once) and takes over the shard of
//! a replica that died once that replica's Leases expire: within one lease duration plus one
//! retry period.
//!
//! Each replica caches only its shards ([`scope`]): every parent carries the label
//! `wasmop.dev/shard: I-of-N` (set once by the holder of its shard, [`assign`]), every child
//! carries its parent's, and the parent and child watches select the held shards' values. A
//! parent outside the held shards is also refused before any request is made, so no parent is
//! reconciled by two replicas at once even while the caches are being re-scoped.

pub mod assign;
pub mod scope;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::leader::{self, LeaderError, LeaderSettings};
use crate::telemetry::Metrics;

/// Which of `count` shards a parent with this UID belongs to: the 64-bit FNV-1a hash of the UID
/// falls in one of `count` equal ranges of the hash space, shard `i` covering
/// [`shard_range`]`(i, count)`. These are the ranges of the API server's `shardSelector`
/// (`shardRange(object.metadata.uid, …)`, KEP-5866), so a server-side sharded watch and this
/// function agree. Stable across processes, versions and platforms.
#[must_use]
pub fn shard_of(uid: &str, count: u32) -> u32 {
    ((u128::from(fnv1a(uid.as_bytes())) * u128::from(count.max(1))) >> 64) as u32
}

/// The hashes of shard `shard` of `count`: from the first (inclusive) to the last (exclusive),
/// over the hash space `[0, 2^64)`.
#[must_use]
pub fn shard_range(shard: u32, count: u32) -> (u128, u128) {
    let bound = |i: u32| (u128::from(i) << 64).div_ceil(u128::from(count.max(1)));
    (bound(shard), bound(shard + 1))
}

/// 64-bit FNV-1a, as Go's `hash/fnv` `New64a` (the API server's shard hash).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The shards this replica holds now, shared by the claimer (which changes them) and the
/// controllers (which ask before reconciling a parent). Cloning shares the same state.
#[derive(Clone)]
pub struct Shards {
    count: u32,
    /// Whether the parents are split at all (`--shards`): then the caches hold only the held
    /// shards' objects, selected by their shard label.
    split: bool,
    owned: Arc<RwLock<BTreeSet<u32>>>,
    in_flight: Arc<[AtomicUsize]>,
    /// Wakes `give_back` when work in a shard ends.
    idle: Arc<tokio::sync::Notify>,
    gained: watch::Sender<u64>,
    /// Counts the changes of the held set once they may reach the caches: at once for a gained
    /// shard, after its work drained for one given back.
    scope: watch::Sender<u64>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("count", &self.count).field("owned", &self.owned()).finish()
    }
}

impl Default for Shards {
    fn default() -> Self {
        Shards::all()
    }
}

impl Shards {
    /// Unsharded: one shard, always held (every parent is this replica's).
    #[must_use]
    pub fn all() -> Shards {
        let mut shards = Shards::none(1);
        shards.split = false;
        shards.hold(0);
        shards
    }

    /// `count` shards, none held yet.
    #[must_use]
    pub fn none(count: u32) -> Shards {
        let count = count.max(1);
        Shards {
            count,
            split: true,
            owned: Arc::default(),
            in_flight: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            idle: Arc::default(),
            gained: watch::Sender::new(0),
            scope: watch::Sender::new(0),
        }
    }

    /// How many shards there are.
    #[must_use]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shards held now, in order.
    #[must_use]
    pub fn owned(&self) -> Vec<u32> {
        self.owned.read().map(|set| set.iter().copied().collect()).unwrap_or_default()
    }

    /// Starts work on the parent with `uid` if its shard is held: the returned guard keeps the
    /// shard from being given back until it is dropped. `None`: another replica's parent.
    #[must_use]
    pub fn enter(&self, uid: &str) -> Option<InShard> {
        let shard = shard_of(uid, self.count);
        // Counting under the read lock: `give_back` removes the shard under the write lock, so
        // once it has, no new work can start in it and it only waits for what is counted.
        let owned = self.owned.read().ok()?;
        if !owned.contains(&shard) {
            return None;
        }
        self.in_flight[shard as usize].fetch_add(1, Ordering::AcqRel);
        Some(InShard { shards: self.clone(), shard })
    }

    /// Marks `shard` held and wakes the controllers to reconcile its parents.
    pub fn hold(&self, shard: u32) {
        if let Ok(mut owned) = self.owned.write() {
            owned.insert(shard);
        }
        self.gained.send_modify(|n| *n += 1);
        self.scope.send_modify(|n| *n += 1);
    }

    /// Marks `shard` no longer held; new work in it is refused at once. Waits (up to `drain`)
    /// for the work already started in it to end; returns whether it did.
    pub async fn give_back(&self, shard: u32, drain: Duration) -> bool {
        if let Ok(mut owned) = self.owned.write() {
            owned.remove(&shard);
        }
        let idle = async {
            loop {
                // Registered before the count is read, so an end in between is not missed.
                let ended = self.idle.notified();
                if self.in_flight[shard as usize].load(Ordering::Acquire) == 0 {
                    return;
                }
                ended.await;
            }
        };
        let drained = tokio::time::timeout(drain, idle).await.is_ok();
        self.scope.send_modify(|n| *n += 1);
        drained
    }

    /// Yields every time a shard is gained (not for those held before the call): the assigner
    /// then labels the unassigned parents of the gained shard.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        wakes(self.gained.subscribe())
    }

    /// Yields every time the held set changes, gained or given back (not for changes before the
    /// call; a shard given back counts once its work has drained).
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        wakes(self.scope.subscribe())
    }
}

/// A stream yielding once per change `rx` sees, ending when its sender is gone.
fn wakes(rx: watch::Receiver<u64>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// Work in progress on one parent of a held shard (see [`Shards::enter`]).
pub struct InShard {
    shards: Shards,
    shard: u32,
}

impl Drop for InShard {
    fn drop(&mut self) {
        if self.shards.in_flight[self.shard as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shards.idle.notify_waiters();
        }
    }
}

/// Validated sharding settings: the shard count, plus the Lease settings (`lease_name` is the
/// prefix of the shard and member Leases).
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// How many shards the parents are split into (every replica must agree).
    pub shards: u32,
    /// Lease namespace, identity, prefix and durations.
    pub lease: LeaderSettings,
}

impl ShardSettings {
    /// Checks the count and the Lease durations.
    pub fn validate(&self) -> Result<(), LeaderError> {
        if self.shards == 0 || self.shards > 1024 {
            return Err(LeaderError::Settings(format!("--shards {} must be between 1 and 1024", self.shards)));
        }
        self.lease.validate()
    }

    fn shard_lease(&self, shard: u32) -> LeaderSettings {
        LeaderSettings { lease_name: format!("{}-{shard}", self.lease.lease_name), ..self.lease.clone() }
    }

    fn member_prefix(&self) -> String {
        format!("{}-member-", self.lease.lease_name)
    }

    /// This replica's member Lease: its identity made a valid object name (lowercase letters,
    /// digits, `-` and `.`; an identity such as `Host_1-42` becomes `host-1-42`).
    fn member_lease(&self) -> LeaderSettings {
        let name: String = self
            .lease
            .identity
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
            .collect();
        LeaderSettings { lease_name: format!("{}{}", self.member_prefix(), name), ..self.lease.clone() }
    }
}

/// Claims and gives back shards for this replica until `stop` turns true; then gives back
/// every shard (after its work in progress) and its membership, so the others take over at once.
pub async fn run(
    client: Client,
    settings: ShardSettings,
    shards: Shards,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LeaderError> {
    settings.validate()?;
    // Every task is in this set, so they all end with this function, even when it is aborted.
    let mut tasks = JoinSet::new();
    let leases = LeaseWatch::start(&mut tasks, &client, &settings.lease.namespace, stop.clone());
    tasks.spawn(hold_membership(client.clone(), settings.member_lease(), stop.clone()));
    let mut claims: HashMap<u32, Claim> = HashMap::new();
    let mut reported = None;
    loop {
        let wanted = match leases.view(&settings) {
            Ok(view) => view.wanted(&settings.lease.identity),
            Err(e) => {
                if let Some(e) = e.filter(|e| reported.as_ref() != Some(e)) {
                    report_watch_error(&e, &settings.lease.namespace);
                    reported = Some(e);
                }
                claims.keys().copied().collect()
            }
        };
        claims.retain(|_, claim| !*claim.done.borrow());
        while tasks.try_join_next().is_some() {}
        for shard in 0..settings.shards {
            match (wanted.contains(&shard), claims.get(&shard)) {
                (true, None) => {
                    let claim = Claim::start(&mut tasks, &client, &settings, shard, &shards, &metrics, &leases);
                    claims.insert(shard, claim);
                }
                (false, Some(claim)) => {
                    let _ = claim.give_back.send(true);
                }
                _ => {}
            }
        }
        tokio::select! {
            _ = until(&mut stop) => break,
            _ = tokio::time::sleep(settings.lease.retry_period) => {}
        }
    }
    for claim in claims.values() {
        let _ = claim.give_back.send(true);
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The Leases of the sharding namespace, from one watch (a reflector): the members, the shard
/// holders and the per-shard watchdogs all read it, so holding shards costs no LIST or GET per
/// retry period.
#[derive(Clone)]
struct LeaseWatch {
    store: Store<Lease>,
    /// The watch's last error while it has not listed the Leases yet, for the log.
    error: Arc<std::sync::Mutex<Option<WatchError>>>,
}

/// Why the Leases cannot be watched.
#[derive(Clone, Debug, PartialEq)]
enum WatchError {
    /// The identity may not list or watch Leases.
    Forbidden(String),
    /// Anything else (the API server unreachable).
    Other(String),
}

impl LeaseWatch {
    /// Starts watching the Leases of `namespace` in a task of `tasks`, until `stop` turns true.
    fn start(tasks: &mut JoinSet<()>, client: &Client, namespace: &str, mut stop: watch::Receiver<bool>) -> LeaseWatch {
        let (store, writer) = reflector::store();
        let error = Arc::new(std::sync::Mutex::new(None));
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let seen = error.clone();
        let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    () = until(&mut stop) => return,
                };
                let Some(event) = event else { return };
                let failure = match event {
                    Ok(_) => None,
                    Err(
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchFailed(kube::Error::Api(s)),
                    ) if s.code == 403 => Some(WatchError::Forbidden(s.message)),
                    Err(e) => Some(WatchError::Other(e.to_string())),
                };
                if let Ok(mut error) = seen.lock() {
                    *error = failure;
                }
            }
        });
        LeaseWatch { store, error }
    }

    /// What the Leases say now (see [`View`]); until the Leases were listed once, nothing, with
    /// the watch's error if it failed.
    fn view(&self, settings: &ShardSettings) -> Result<View, Option<WatchError>> {
        if self.store.is_empty() && !self.listed() {
            return Err(self.error.lock().ok().and_then(|e| e.clone()));
        }
        Ok(View::of(self.store.state().iter().map(|l| l.as_ref().clone()), settings, SystemTime::now()))
    }

    /// Whether the first list completed (an empty namespace lists nothing).
    fn listed(&self) -> bool {
        futures::FutureExt::now_or_never(self.store.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

/// Says why the Leases could not be watched; a refusal names the missing rules and their fix.
fn report_watch_error(e: &WatchError, namespace: &str) {
    match e {
        WatchError::Forbidden(message) => tracing::error!(error = %message,
            "sharding needs `list` and `watch` on leases (coordination.k8s.io) in namespace {namespace} to \
            see the other replicas; deploy/overlays/sharded grants them. No shard is claimed until then"),
        WatchError::Other(message) => {
            tracing::warn!(error = %message, "cannot watch the shard Leases; keeping the shards claimed")
        }
    }
}

/// Holds this replica's member Lease (acquiring it again if it is lost) until `stop` turns
/// true, then releases it so the others see this replica gone at once.
async fn hold_membership(client: Client, lease: LeaderSettings, mut stop: watch::Receiver<bool>) {
    loop {
        let held = tokio::select! {
            held = leader::acquire(&client, &lease) => held,
            _ = until(&mut stop) => return,
        };
        let held = match held {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot join the shard members; retrying");
                tokio::time::sleep(lease.retry_period).await;
                continue;
            }
        };
        tokio::select! {
            lost = held.lost() => tracing::error!(error = %lost, "shard membership lost; joining again"),
            _ = until(&mut stop) => {
                held.release().await;
                return;
            }
        }
    }
}

/// Completes once `flag` turns true (or its sender is gone).
async fn until(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|f| *f).await;
}

/// What the Leases say: the live members (sorted) and each shard's live holder.
#[derive(Debug, Default)]
struct View {
    members: BTreeSet<String>,
    holders: Vec<Option<String>>,
}

impl View {
    /// The shards `me` should hold. Each member's fair share is ⌈N/M⌉ shards. A member keeps
    /// what it holds up to its share (so a change of members moves as few shards as possible)
    /// and gives back the rest; below its share it claims shards nobody live holds, first those
    /// it prefers (shard `i` is preferred by the `i mod M`-th member), so that members starting
    /// together spread out. Two members claiming the same shard are arbitrated by its Lease.
    fn wanted(&self, me: &str) -> BTreeSet<u32> {
        let m = self.members.len().max(1);
        let fair = self.holders.len().div_ceil(m);
        let index = self.members.iter().position(|member| member == me).unwrap_or(0);
        let preference = |i: &usize| (*i % m != index, *i);
        let mut mine: Vec<usize> =
            (0..self.holders.len()).filter(|&i| self.holders[i].as_deref() == Some(me)).collect();
        mine.sort_by_key(preference);
        mine.truncate(fair);
        let mut free: Vec<usize> = (0..self.holders.len()).filter(|&i| self.holders[i].is_none()).collect();
        free.sort_by_key(preference);
        let missing = fair.saturating_sub(mine.len());
        mine.into_iter().chain(free.into_iter().take(missing)).map(|i| i as u32).collect()
    }
}

impl View {
    /// What `leases` say at `now`. A Lease counts as held while its holder renews it within its
    /// duration; a shard whose holder is not a live member counts as free (its Lease is then
    /// about to expire, and the claim waits for that). This replica is always a member.
    fn of(leases: impl Iterator<Item = Lease>, settings: &ShardSettings, now: SystemTime) -> View {
        let (prefix, member_prefix) = (format!("{}-", settings.lease.lease_name), settings.member_prefix());
        let mut view = View { holders: vec![None; settings.shards as usize], ..View::default() };
        view.members.insert(settings.lease.identity.clone());
        let mut held = Vec::new();
        for lease in leases {
            let Some(name) = lease.metadata.name.clone() else { continue };
            let Some(holder) = live_holder(lease, now) else { continue };
            if name.starts_with(&member_prefix) {
                view.members.insert(holder);
            } else if let Some(Ok(shard)) = name.strip_prefix(&prefix).map(str::parse::<usize>) {
                held.push((shard, holder));
            }
        }
        for (shard, holder) in held {
            if shard < view.holders.len() && view.members.contains(&holder) {
                view.holders[shard] = Some(holder);
            }
        }
        view
    }
}

/// The Lease's holder if it renewed within the Lease's duration.
fn live_holder(lease: Lease, now: SystemTime) -> Option<String> {
    let spec = lease.spec?;
    let renewed = SystemTime::from(spec.renew_time?.0);
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    (renewed + duration > now).then_some(spec.holder_identity?).filter(|h| !h.is_empty())
}

/// One shard being claimed or held by a task; `give_back` asks it to let go.
struct Claim {
    give_back: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl Claim {
    /// Spawns the task that acquires the shard's Lease, holds the shard while it is renewed, and
    /// gives it back (draining its work) when asked, or drops it at once when the Lease is lost.
    fn start(
        tasks: &mut JoinSet<()>,
        client: &Client,
        settings: &ShardSettings,
        shard: u32,
        shards: &Shards,
        metrics: &Arc<Metrics>,
        leases: &LeaseWatch,
    ) -> Claim {
        let (give_back, mut asked) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let (client, lease, shards, metrics, leases) =
            (client.clone(), settings.shard_lease(shard), shards.clone(), metrics.clone(), leases.clone());
        let drain = settings.lease.renew_deadline;
        tasks.spawn(async move {
            let held = tokio::select! {
                held = leader::acquire(&client, &lease) => held,
                _ = until(&mut asked) => {
                    let _ = done_tx.send(true);
                    return;
                }
            };
            match held {
                Ok(held) => {
                    let held = held.confirmed_by(leases.store.clone());
                    shards.hold(shard);
                    metrics.set_leader(&lease.lease_name, true);
                    tracing::info!(shard, lease = %lease.lease_name, "shard held");
                    tokio::select! {
                        lost = held.lost() => {
                            shards.give_back(shard, Duration::ZERO).await;
                            tracing::error!(shard, error = %lost, "shard lost; its parents are no longer reconciled here");
                        }
                        _ = until(&mut asked) => {
                            if !shards.give_back(shard, drain).await {
                                tracing::warn!(shard, "reconciles still running in the shard after {drain:?}; giving it back anyway");
                            }
                            held.release().await;
                            tracing::info!(shard, "shard given back");
                        }
                    }
                    metrics.set_leader(&lease.lease_name, false);
                }
                Err(e) => tracing::warn!(shard, error = %e, "cannot claim the shard"),
            }
            let _ = done_tx.send(true);
        });
        Claim { give_back, done }
    }
}

/// The `i`th of a series of random-looking UIDs, shaped as the API server's (a v4 UUID): the
/// shard hash spreads those, not short sequential strings (FNV-1a mixes a string's last bytes
/// into its high bits poorly).
#[cfg(test)]
pub(crate) fn test_uid(i: usize) -> String {
    let hex = crate::plugin::sha256_hex(&i.to_le_bytes());
    format!("{}-{}-4{}-a{}-{}", &hex[..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lease_names_are_valid_object_names() {
        let lease = LeaderSettings {
            lease_name: "wasmop-shard".into(),
            namespace: "n".into(),
            identity: "Host_1-42".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        let settings = ShardSettings { shards: 2, lease };
        assert_eq!(settings.member_lease().lease_name, "wasmop-shard-member-host-1-42");
        assert_eq!(settings.member_lease().identity, "Host_1-42", "the holder identity is kept as is");
    }

    #[test]
    fn uids_spread_over_the_shards_and_stay_put() {
        let mut counts = [0u32; 3];
        for i in 0..3000 {
            counts[shard_of(&test_uid(i), 3) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "uneven: {counts:?}");
        // The published FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c and of "foobar" 0x85944171f73967e8:
        // both in the upper half, "a" in the third quarter and the last third. A change of hash,
        // byte order or width moves every parent.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!((shard_of("a", 2), shard_of("a", 4), shard_of("a", 3)), (1, 2, 2));
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn shards_are_the_api_servers_hash_ranges() {
        // The API server's own 4-shard example: shard 1 is ['0x4000000000000000', '0x8000000000000000').
        assert_eq!(shard_range(1, 4), (0x4000_0000_0000_0000, 0x8000_0000_0000_0000));
        assert_eq!(shard_range(3, 4).1, 1 << 64);
        for count in [1, 2, 3, 7, 1024] {
            for uid in ["a", "foobar", "0b6c1c1e-4a7e-4f4e-9d3b-2f1c6a9e8d70"] {
                let (start, end) = shard_range(shard_of(uid, count), count);
                let hash = u128::from(fnv1a(uid.as_bytes()));
                assert!(start <= hash && hash < end, "{uid} of {count}: {hash:#x} outside [{start:#x}, {end:#x})");
            }
        }
    }

    /// The status writer follows `changes`: it must hear of shard 0 given back, not only of
    /// shards gained.
    #[tokio::test]
    async fn changes_tell_of_shards_given_back_as_well_as_gained() {
        let shards = Shards::none(2);
        let mut changes = Box::pin(shards.changes());
        shards.hold(0);
        assert_eq!(changes.next().await, Some(()));
        assert_eq!(shards.owned(), [0]);
        assert!(shards.give_back(0, Duration::from_secs(1)).await);
        assert_eq!(changes.next().await, Some(()));
        assert!(shards.owned().is_empty());
    }

    fn view(members: &[&str], holders: &[Option<&str>]) -> View {
        View {
            members: members.iter().map(|m| m.to_string()).collect(),
            holders: holders.iter().map(|h| h.map(String::from)).collect(),
        }
    }

    #[test]
    fn members_starting_together_spread_over_the_shards() {
        let fresh = view(&["a", "b", "c"], &[None; 3]);
        assert_eq!(fresh.wanted("a"), [0].into());
        assert_eq!(fresh.wanted("b"), [1].into());
        assert_eq!(fresh.wanted("c"), [2].into());
        assert_eq!(view(&["b"], &[None; 3]).wanted("b"), [0, 1, 2].into());
    }

    #[test]
    fn members_keep_their_shards_and_split_a_dead_members() {
        // b died: a and c keep theirs and both may claim shard 1 (its Lease decides).
        let after = view(&["a", "c"], &[Some("a"), None, Some("c")]);
        assert_eq!(after.wanted("a"), [0, 1].into());
        assert_eq!(after.wanted("c"), [1, 2].into());
        // Once a has it, c wants no more than it holds.
        let settled = view(&["a", "c"], &[Some("a"), Some("a"), Some("c")]);
        assert_eq!(settled.wanted("c"), [2].into());
        assert_eq!(settled.wanted("a"), [0, 1].into());
    }

    #[test]
    fn a_member_above_its_share_gives_back_to_one_that_joins() {
        let joined = view(&["a", "b", "c"], &[Some("a"), Some("a"), Some("a")]);
        assert_eq!(joined.wanted("a"), [0].into());
        assert_eq!(joined.wanted("b"), BTreeSet::new(), "nothing is free until a gives back");
        let given = view(&["a", "b", "c"], &[Some("a"), None, None]);
        assert_eq!(given.wanted("b"), [1].into());
        assert_eq!(given.wanted("c"), [2].into());
    }

    #[tokio::test]
    async fn giving_a_shard_back_waits_for_its_work_and_refuses_new_work() {
        let shards = Shards::none(1);
        assert!(shards.enter("x").is_none());
        shards.hold(0);
        let work = shards.enter("x").expect("held");
        let back = tokio::spawn({
            let shards = shards.clone();
            async move { shards.give_back(0, Duration::from_secs(10)).await }
        });
        // The shard is refused to new work as soon as it is being given back.
        while shards.enter("y").is_some() {
            tokio::task::yield_now().await;
        }
        assert!(!back.is_finished());
        drop(work);
        assert!(back.await.unwrap(), "give_back did not see the work end");
        assert!(shards.owned().is_empty());
    }
}
