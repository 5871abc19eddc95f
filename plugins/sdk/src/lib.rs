//! Write wasmop plugins in Rust.
//!
//! A plugin implements [`Operator`] (or [`Policy`]) on a type and exports it with
//! [`export_operator!`] (or [`export_policy!`]); the SDK does the WIT plumbing, JSON decoding of
//! the parent and children, and encoding of the answer. Built for `wasm32-wasip2` the crate becomes
//! a component of the `wasmop:plugin` worlds; built natively it is plain Rust, so the same logic
//! can be unit-tested and benchmarked without WebAssembly.
//!
//! ```ignore
//! struct Hello;
//! impl wasmop_sdk::Operator for Hello {
//!     fn metadata() -> Metadata { /* parent kind, child kinds, CRD */ }
//!     fn reconcile(req: Request) -> Result<Response, Error> {
//!         let parent: MyKind = req.parent_as()?;
//!         Ok(Response::new().child(&config_map_for(&parent))?)
//!     }
//! }
//! wasmop_sdk::export_operator!(Hello);
//! ```

pub mod conversion;
pub mod raw;
pub mod schema;
mod types;
pub mod wire;

pub use types::*;

pub use k8s_openapi;
pub use serde_json;
pub use serde_json::Value;

/// Raw bindings generated from the WIT contract (`wit/plugin.wit`). Plugins rarely need these:
/// the export macros wire them up.
#[doc(hidden)]
pub mod bindings {
    /// Bindings of the `operator` world.
    pub mod operator {
        wit_bindgen::generate!({
            world: "operator",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "export_raw_operator",
            default_bindings_module: "::wasmop_sdk::bindings::operator",
        });
    }
    /// Bindings of the `policy` world.
    pub mod policy {
        wit_bindgen::generate!({
            world: "policy",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "export_raw_policy",
            default_bindings_module: "::wasmop_sdk::bindings::policy",
        });
    }
}

/// An operator plugin: computes the desired children and status of one parent object.
pub trait Operator {
    /// Describes the plugin: its parent kind, child kinds, CRD and whether it uses a finalizer.
    fn metadata() -> Metadata;
    /// Computes the desired state of one parent. Must be a pure function of the request.
    fn reconcile(req: Request) -> Result<Response, Error>;
    /// The typed path of [`Operator::reconcile`]: the request's objects stay JSON text until
    /// the plugin decodes them into its own types, and the answer is encoded straight to text
    /// (see [`raw`]), which skips building `Value` trees. The host calls this; the default
    /// decodes a [`Request`] and calls [`Operator::reconcile`]. Override it for speed, and
    /// answer exactly as `reconcile` would.
    fn reconcile_raw(req: raw::RawRequest<'_>) -> Result<wire::EncodedResponse, Error> {
        Self::reconcile(req.decode()?).map(wire::encode_response)
    }
    /// Picks the objects of declared [`Metadata::reads`] kinds this parent reads; they arrive in
    /// [`Request::related`] under each selector's id, and a change to one of them reconciles the
    /// parent again. Gets the parent only and must be pure and cheap: the host calls it before
    /// every reconcile. An `Err` is reported on the parent as an invalid spec. The default reads
    /// nothing.
    fn related(parent: &Value) -> Result<Vec<Selector>, String> {
        let _ = parent;
        Ok(Vec::new())
    }
    /// Converts a parent object of any version the CRD defines to `to_version` of its group;
    /// the host serves this as the CRD's conversion webhook. Must be pure and lossless (see
    /// [`conversion`]). The default, for a CRD with one version, only sets `apiVersion`.
    fn convert(mut obj: Value, to_version: &str) -> Result<Value, String> {
        conversion::set_version(&mut obj, to_version);
        Ok(obj)
    }
}

/// A policy plugin: reviews each child an operator plugin wants to apply.
pub trait Policy {
    /// Describes the policy and the kinds it reviews.
    fn metadata() -> PolicyMetadata;
    /// Allows, mutates or denies one desired child of `parent`.
    fn review(parent: &Value, child: Value, settings: Option<&str>) -> Verdict;
}

/// Writes one line into the host's log, tagged with the plugin and object being reconciled.
/// Outside WebAssembly (native tests and benchmarks) the line goes to stderr.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_family = "wasm")]
    {
        use bindings::operator::wasmop::plugin::types::LogLevel as L;
        let level = match level {
            LogLevel::Trace => L::Trace,
            LogLevel::Debug => L::Debug,
            LogLevel::Info => L::Info,
            LogLevel::Warn => L::Warn,
            LogLevel::Error => L::Error,
        };
        bindings::operator::wasmop::plugin::host::log(level, message);
    }
    #[cfg(not(target_family = "wasm"))]
    eprintln!("[{level:?}] {message}");
}

/// Exports a type implementing [`Operator`] as the plugin's `reconciler`.
/// Expands to nothing outside WebAssembly, so the crate also builds natively.
#[macro_export]
macro_rules! export_operator {
    ($ty:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct WasmopOperatorGlue;
            impl $crate::bindings::operator::exports::wasmop::plugin::reconciler::Guest for WasmopOperatorGlue {
                fn metadata() -> $crate::bindings::operator::exports::wasmop::plugin::reconciler::OperatorMetadata {
                    $crate::wire::operator_metadata::<$ty>()
                }
                fn reconcile(
                    req: $crate::bindings::operator::exports::wasmop::plugin::reconciler::Request,
                ) -> ::core::result::Result<
                    $crate::bindings::operator::exports::wasmop::plugin::reconciler::Response,
                    $crate::bindings::operator::exports::wasmop::plugin::reconciler::Error,
                > {
                    $crate::wire::operator_reconcile::<$ty>(req)
                }
                fn related(
                    parent: ::std::string::String,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::bindings::operator::exports::wasmop::plugin::reconciler::Selector>,
                    ::std::string::String,
                > {
                    $crate::wire::operator_related::<$ty>(&parent)
                }
            }
            impl $crate::bindings::operator::exports::wasmop::plugin::converter::Guest for WasmopOperatorGlue {
                fn convert(
                    obj: ::std::string::String,
                    to_version: ::std::string::String,
                ) -> ::core::result::Result<::std::string::String, ::std::string::String> {
                    $crate::wire::convert_json::<$ty>(&obj, &to_version)
                }
            }
            $crate::bindings::operator::export_raw_operator!(WasmopOperatorGlue);
        };
    };
}

/// Exports a type implementing [`Policy`] as the plugin's `policy`.
/// Expands to nothing outside WebAssembly, so the crate also builds natively.
#[macro_export]
macro_rules! export_policy {
    ($ty:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct WasmopPolicyGlue;
            impl $crate::bindings::policy::exports::wasmop::plugin::reviewer::Guest for WasmopPolicyGlue {
                fn metadata() -> $crate::bindings::policy::exports::wasmop::plugin::reviewer::PolicyMetadata {
                    $crate::wire::policy_metadata::<$ty>()
                }
                fn review(
                    parent: ::std::string::String,
                    child: ::std::string::String,
                    settings: ::core::option::Option<::std::string::String>,
                ) -> $crate::bindings::policy::exports::wasmop::plugin::reviewer::Verdict {
                    $crate::wire::policy_review::<$ty>(parent, child, settings)
                }
            }
            $crate::bindings::policy::export_raw_policy!(WasmopPolicyGlue);
        };
    };
}
