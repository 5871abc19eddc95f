//! wasmop: a Kubernetes operator host whose reconcile logic lives in sandboxed WebAssembly
//! plugins. See the README for the tour and `wit/plugin.wit` for the plugin contract.
#![warn(missing_docs)]

mod apply;
pub mod cached;
pub mod catalog;
pub mod controller;
pub mod crd;
pub mod diff;
pub mod discovery;
pub mod events;
pub mod golden;
pub mod leader;
pub mod manifest;
pub mod migrate;
pub mod paging;
pub use wasmop_contract::names;
pub mod plugin;
pub mod policy;
pub mod preview;
pub mod rbac;
pub mod reconcile;
pub mod registry;
pub mod related;
pub mod relist;
pub mod rollout;
pub mod roundtrip;
pub mod shard;
pub mod sidecar;
pub mod status;
pub mod supervisor;
pub mod telemetry;
mod text;
pub mod ticks;
pub mod traces;
pub mod wasmplugin;
pub mod webhook;
