//! The sandboxed WebAssembly runtime that runs plugins.
//!
//! One [`Runtime`] per process compiles plugin files (with an on-disk cache of compiled code)
//! into [`OperatorPlugin`]s and [`PolicyPlugin`]s. Every call runs in a fresh instance under
//! [`Limits`], and every failure is a [`PluginError`].

mod bindings;
mod cache;
pub mod contract;
mod error;
mod file;
mod legacy;
mod limits;
mod operator;
mod output;
mod policy;
mod runtime;
mod sandbox;

pub use cache::{CacheOutcome, CacheStats, sha256_hex};
pub use contract::{
    ChildKind, Condition, ConditionStatus, CrdVersion, Desired, Gvk, OperatorMetadata, Pick, PolicyMetadata, ReadKind,
    ReadScope, ReconcileRequest, RelatedObjects, Selector, Target, Verdict,
};
pub use error::PluginError;
pub use file::{PluginFile, World};
pub use limits::Limits;
pub use operator::OperatorPlugin;
pub use policy::PolicyPlugin;
pub use runtime::{
    CONTRACT_SERIES, CONTRACT_VERSION, LoadedPlugin, Runtime, RuntimeConfig, RuntimeError, default_cache_dir,
};
