//! wasmop: a Kubernetes operator host whose reconcile logic lives in sandboxed WebAssembly
//! plugins. See the README for the tour and `wit/plugin.wit` for the plugin contract.

pub mod manifest;
pub mod names;
pub mod plugin;
pub mod policy;
