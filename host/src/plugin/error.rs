//! Every way loading or calling a plugin can fail, as one typed error.

use std::path::PathBuf;
use std::time::Duration;

/// A failure of a plugin, its file, or its answer. The host never panics on plugin behaviour;
/// it turns it into one of these, each naming the plugin (or file) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin file could not be read.
    #[error("cannot read plugin file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid WebAssembly component (truncated, corrupt, unsupported features).
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The component does not implement a world and version this host supports.
    #[error("plugin {plugin} is incompatible with this host: {reason}")]
    Incompatible {
        /// File or plugin name.
        plugin: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The plugin's `metadata()` answer is unusable.
    #[error("plugin {plugin} describes itself wrongly: {reason}")]
    InvalidMetadata {
        /// File or plugin name.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// The call ran past its wall-time limit and was interrupted.
    #[error("plugin {plugin} timed out: the call ran longer than {limit:?}")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The limit that was hit.
        limit: Duration,
    },
    /// The plugin tried to grow its memory past its limit.
    #[error("plugin {plugin} ran out of memory: it tried to use more than {limit_mib} MiB")]
    OutOfMemory {
        /// Plugin name.
        plugin: String,
        /// The memory limit in MiB.
        limit_mib: u64,
    },
    /// The plugin trapped (a panic in a Rust guest, `unreachable`, a bad memory access).
    #[error("plugin {plugin} crashed: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The guest's panic message when it printed one, else the trap.
        message: String,
    },
    /// The plugin's answer broke the contract (bad JSON, undeclared kind, wrong namespace...).
    #[error("plugin {plugin} returned an invalid {object}: {reason}")]
    InvalidOutput {
        /// Plugin name.
        plugin: String,
        /// Which object of the answer, e.g. `child 0 (apps/v1 Deployment web)`.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// The plugin's answer is larger than its output limit.
    #[error("plugin {plugin} returned {size} bytes, more than its {limit}-byte output limit")]
    OutputTooLarge {
        /// Plugin name.
        plugin: String,
        /// Bytes returned.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin returned more children than its `max_children` limit: nothing is applied.
    #[error(
        "plugin {plugin} returned {count} children for one parent; the limit is {limit} (max_children in its NAME.toml)"
    )]
    TooManyChildren {
        /// Plugin name.
        plugin: String,
        /// Children returned.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A selector the plugin's `related` returned breaks the contract: an undeclared kind, a
    /// namespace outside the declared scope, a label selector that does not parse, an id twice.
    #[error("plugin {plugin} returned an invalid related-object selector {selector:?}: {reason}")]
    InvalidSelector {
        /// Plugin name.
        plugin: String,
        /// The selector's id.
        selector: String,
        /// What is wrong and what to change.
        reason: String,
    },
    /// A parent's selectors picked more related objects than the plugin's `max_related`: the
    /// plugin is not called, so it never acts on a partial view.
    #[error(
        "plugin {plugin} selected {count} related objects for one parent (selector {selector:?} reached the limit of \
         {limit}; max_related in its NAME.toml); narrow the selector"
    )]
    TooManyRelated {
        /// Plugin name.
        plugin: String,
        /// The selector that crossed the limit.
        selector: String,
        /// Objects selected up to and including that selector.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin answered `invalid`: the spec cannot be satisfied until it changes.
    #[error("plugin {plugin} rejected the spec: {message}")]
    InvalidSpec {
        /// Plugin name.
        plugin: String,
        /// The plugin's explanation.
        message: String,
    },
    /// The plugin's `convert` refused the object, or the plugin cannot convert at all.
    #[error("plugin {plugin} cannot convert {object} to {to_version}: {message}")]
    ConversionFailed {
        /// Plugin name.
        plugin: String,
        /// The object, e.g. `Appoperator team-a/web (tools.wasmop.dev/v1beta1)`.
        object: String,
        /// The version asked for.
        to_version: String,
        /// The plugin's explanation.
        message: String,
    },
    /// The plugin answered `retry`: a transient problem.
    #[error("plugin {plugin} asked to retry: {message}")]
    Retry {
        /// Plugin name.
        plugin: String,
        /// The plugin's explanation.
        message: String,
    },
}

impl PluginError {
    /// The `reason` of the `Ready=False` condition this failure produces on a parent.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            PluginError::InvalidSpec { .. } => "InvalidSpec",
            PluginError::Timeout { .. } => "PluginTimeout",
            PluginError::OutOfMemory { .. } => "PluginOutOfMemory",
            PluginError::InvalidOutput { .. } | PluginError::OutputTooLarge { .. } => "InvalidPluginOutput",
            PluginError::TooManyChildren { .. } => "TooManyChildren",
            PluginError::InvalidSelector { .. } => "InvalidRelatedSelector",
            PluginError::TooManyRelated { .. } => "TooManyRelatedObjects",
            _ => "PluginError",
        }
    }

    /// The `reason` label of `wasmop_plugin_failures_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            PluginError::InvalidSpec { .. } => "invalid_spec",
            PluginError::Timeout { .. } => "timeout",
            PluginError::OutOfMemory { .. } => "memory",
            PluginError::Trap { .. } => "trap",
            PluginError::InvalidOutput { .. } | PluginError::OutputTooLarge { .. } => "invalid_output",
            PluginError::TooManyChildren { .. } => "too_many_children",
            PluginError::InvalidSelector { .. } => "invalid_selector",
            PluginError::TooManyRelated { .. } => "too_many_related",
            PluginError::ConversionFailed { .. } => "conversion",
            _ => "other",
        }
    }

    /// Whether retrying the same input can help (false for an invalid spec: wait for a new one).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PluginError::InvalidSpec { .. })
    }
}
