//! Per-call resource limits of a plugin.

use std::time::Duration;

/// Limits applied to every call of a plugin. Each call runs in a fresh instance, so these
/// bound one reconcile, not the plugin's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall time of one call, enforced by epoch interruption.
    pub timeout: Duration,
    /// Linear memory of one instance, in bytes.
    pub memory_bytes: u64,
    /// Total size of one answer (children, status, conditions), in bytes.
    pub output_bytes: usize,
    /// Most children one parent may have; beyond it nothing is applied and the parent gets
    /// `Ready=False/TooManyChildren`.
    pub max_children: usize,
    /// Most related objects one parent may read, over all its selectors; beyond it the plugin
    /// is not called and the parent gets `Ready=False/TooManyRelatedObjects`.
    pub max_related: usize,
}

impl Limits {
    /// 500 ms wall time per call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
    /// 64 MiB of linear memory per instance.
    pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
    /// 4 MiB of output per call.
    pub const DEFAULT_OUTPUT_BYTES: usize = 4 << 20;
    /// 1,000 children per parent.
    pub const DEFAULT_MAX_CHILDREN: usize = 1000;
    /// 1,000 related objects per parent.
    pub const DEFAULT_MAX_RELATED: usize = 1000;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Self::DEFAULT_TIMEOUT,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            output_bytes: Self::DEFAULT_OUTPUT_BYTES,
            max_children: Self::DEFAULT_MAX_CHILDREN,
            max_related: Self::DEFAULT_MAX_RELATED,
        }
    }
}
