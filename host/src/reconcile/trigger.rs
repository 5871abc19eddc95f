//! Why a parent is reconciled: the trigger a reconcile's span carries. kube-runtime's
//! controller knows the reason of each request but does not hand it to the reconciler
//! (kube#457), so the host notes it where it arises — the parent's watch, a child's watch, a
//! requeue or retry it returned, a resync, a shard gained, a controller start — and the
//! reconcile takes the note. While a reconcile is pending, the first note stands: it is what
//! asked for the reconcile; later ones were merged into it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

/// What asked for a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The parent's spec changed, or it was created or is being deleted.
    Parent,
    /// A watch event of one of its children (`Kind namespace/name`).
    Child(String),
    /// A change to a related object the parent selected (`Kind namespace/name`).
    Related(String),
    /// The plugin asked to be called again (`requeueAfter`), or the host waits for children.
    Requeue,
    /// The last reconcile failed and is retried with backoff.
    Retry,
    /// The periodic resync.
    Resync,
    /// This replica gained the parent's shard.
    ShardGained,
    /// The controller started and listed the parents; why it started is in [`Start`].
    Start(Start),
    /// The watch of the parents listed them again (after it expired or was cut).
    Relist,
    /// No note (should not happen; shown rather than guessed).
    Unknown,
}

/// Why a controller started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// The host started (or this replica became leader).
    #[default]
    Startup,
    /// A new revision of the plugin replaced the one serving (a reload).
    Reload,
    /// A staged rollout changed which revision serves which parents.
    Rollout,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Parent => f.write_str("parent"),
            Trigger::Child(child) => write!(f, "child {child}"),
            Trigger::Related(object) => write!(f, "related {object}"),
            Trigger::Requeue => f.write_str("requeue"),
            Trigger::Retry => f.write_str("retry"),
            Trigger::Resync => f.write_str("resync"),
            Trigger::ShardGained => f.write_str("shard gained"),
            Trigger::Start(Start::Startup) => f.write_str("startup"),
            Trigger::Start(Start::Reload) => f.write_str("reload"),
            Trigger::Start(Start::Rollout) => f.write_str("rollout"),
            Trigger::Relist => f.write_str("relist"),
            Trigger::Unknown => f.write_str("unknown"),
        }
    }
}

/// The pending trigger of each parent, by UID: noted by the watches and the controller, taken
/// by the reconcile. Entries of parents that go away before their reconcile are swept.
#[derive(Debug, Default)]
pub struct Triggers {
    pending: Mutex<HashMap<String, Trigger>>,
}

impl Triggers {
    /// Notes that `trigger` asks to reconcile the parent `uid`, unless a trigger is pending.
    pub fn note(&self, uid: &str, trigger: Trigger) {
        if let Ok(mut pending) = self.pending.lock()
            && !pending.contains_key(uid)
        {
            pending.insert(uid.to_string(), trigger);
        }
    }

    /// Notes `trigger` for each of `uids` (a resync, a shard gained).
    pub fn note_all<'a>(&self, uids: impl IntoIterator<Item = &'a str>, trigger: &Trigger) {
        if let Ok(mut pending) = self.pending.lock() {
            for uid in uids {
                pending.entry(uid.to_string()).or_insert_with(|| trigger.clone());
            }
        }
    }

    /// Takes the trigger of `uid`'s reconcile ([`Trigger::Unknown`] when none was noted).
    pub fn take(&self, uid: &str) -> Trigger {
        self.pending.lock().ok().and_then(|mut p| p.remove(uid)).unwrap_or(Trigger::Unknown)
    }

    /// Drops the notes of parents `live` does not hold, once there are more notes than
    /// `parents` (the parents cached) plus a margin: bounded memory without a sweep per call.
    pub fn sweep(&self, parents: usize, live: impl FnOnce() -> std::collections::HashSet<String>) {
        let Ok(mut pending) = self.pending.lock() else { return };
        if pending.len() > parents + 1024 {
            let live = live();
            pending.retain(|uid, _| live.contains(uid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Start, Trigger, Triggers};

    #[test]
    fn the_first_note_stands_until_taken() {
        let triggers = Triggers::default();
        triggers.note("a", Trigger::Child("Deployment ns/a".into()));
        triggers.note("a", Trigger::Resync);
        assert_eq!(triggers.take("a").to_string(), "child Deployment ns/a");
        assert_eq!(triggers.take("a"), Trigger::Unknown);
        triggers.note_all(["a", "b"], &Trigger::Start(Start::Reload));
        assert_eq!(triggers.take("b").to_string(), "reload");
    }

    #[test]
    fn notes_of_gone_parents_are_swept_past_the_margin() {
        let triggers = Triggers::default();
        let uids: Vec<String> = (0..1100).map(|i| i.to_string()).collect();
        triggers.note_all(uids.iter().map(String::as_str), &Trigger::Resync);
        triggers.sweep(10, || ["5".to_string()].into());
        assert_eq!(triggers.take("5"), Trigger::Resync);
        assert_eq!(triggers.take("6"), Trigger::Unknown);
    }
}
