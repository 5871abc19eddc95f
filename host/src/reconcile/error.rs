//! Why a reconcile failed, and how soon to try again.

use std::time::Duration;

use crate::plugin::PluginError;
use crate::policy::ReviewError;

/// First retry delay after a failure; doubles per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Delay before retrying after a write conflict (someone else changed the object).
pub const CONFLICT_RETRY: Duration = Duration::from_millis(50);

/// A failed reconcile of one parent.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The plugin failed (timeout, trap, invalid output, asked to retry...).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A policy plugin failed.
    #[error(transparent)]
    Review(#[from] ReviewError),
    /// An API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What the host was doing, naming the object.
        action: String,
        /// The API error.
        source: kube::Error,
    },
    /// A desired child's apiVersion and kind match none of the watched child kinds (e.g. an
    /// apiVersion spelled differently from the declaration).
    #[error("{object}: its apiVersion and kind match none of the plugin's declared child kinds exactly")]
    UnknownChildKind {
        /// `Kind namespace/name` of the child.
        object: String,
    },
    /// A desired child exists and belongs to someone else; it was not written.
    #[error("not written, someone else's: {message}")]
    ChildConflict {
        /// Each object and its owner.
        message: String,
    },
    /// The parent could not be read as JSON.
    #[error("cannot encode parent: {0}")]
    Encode(#[from] serde_json::Error),
    /// The plugin call task was lost (the runtime is shutting down).
    #[error("plugin call did not complete: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl ReconcileError {
    /// Whether the failure counts against the revision that computed it, as a rollout's
    /// analysis judges: the plugin failed (timeout, memory, trap, invalid output), a child is
    /// someone else's, or the API server refused a child (a 4xx other than a conflict or
    /// throttling). A spec the plugin calls invalid, a policy denial, or an outage does not.
    pub fn counts_against_revision(&self) -> bool {
        match self {
            ReconcileError::Plugin(e) => !matches!(e, PluginError::InvalidSpec { .. }),
            ReconcileError::UnknownChildKind { .. } | ReconcileError::ChildConflict { .. } => true,
            ReconcileError::Api { action, source: kube::Error::Api(status) } => {
                action.starts_with("applying")
                    && (400..500).contains(&status.code)
                    && ![409, 429].contains(&status.code)
            }
            _ => false,
        }
    }

    /// Whether the failure is a write conflict, retried at once.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ReconcileError::Api { source: kube::Error::Api(status), .. } if status.code == 409)
    }

    /// The `reason` of the `Ready=False` condition this failure produces.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            ReconcileError::Plugin(e) => e.condition_reason(),
            ReconcileError::Review(e) => e.condition_reason(),
            ReconcileError::Api { .. } => "ApplyFailed",
            ReconcileError::UnknownChildKind { .. } => "InvalidPluginOutput",
            ReconcileError::ChildConflict { .. } => "ChildConflict",
            ReconcileError::Encode(_) | ReconcileError::Join(_) => "InternalError",
        }
    }
}

/// Exponential backoff for the `failures`-th consecutive failure (1-based), capped.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(action: &str, code: u16) -> ReconcileError {
        let status = kube::core::Status::failure("refused", "Refused").with_code(code);
        ReconcileError::Api { action: action.into(), source: kube::Error::Api(Box::new(status)) }
    }

    #[test]
    fn a_rollout_counts_plugin_failures_conflicts_and_refused_children_only() {
        let plugin = |e: PluginError| ReconcileError::Plugin(e);
        let trap = plugin(PluginError::Trap { plugin: "p".into(), message: "boom".into() });
        let invalid = plugin(PluginError::InvalidSpec { plugin: "p".into(), message: "no image".into() });
        assert!(trap.counts_against_revision());
        assert!(!invalid.counts_against_revision(), "an invalid spec is the user's");
        assert!(ReconcileError::ChildConflict { message: "x".into() }.counts_against_revision());
        assert!(api("applying ConfigMap ns/a", 422).counts_against_revision(), "a child refused by the API server");
        for (action, code) in [
            ("applying ConfigMap ns/a", 409),
            ("applying ConfigMap ns/a", 429),
            ("applying ConfigMap ns/a", 503),
            ("writing status", 422),
        ] {
            assert!(!api(action, code).counts_against_revision(), "{action} {code}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps_at_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
