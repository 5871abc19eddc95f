//! Host-side bindings generated from `wit/plugin.wit` (contract 0.2). The frozen 0.1 contract's
//! bindings live in [`super::legacy`].

/// Bindings of the `operator` world (exports `reconciler` and `converter`).
pub mod operator {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "operator",
    });
}

/// Bindings of the `policy` world (exports `reviewer`), sharing the `types` and `host`
/// interfaces with the operator world.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        with: {
            "wasmop:plugin/types": super::operator::wasmop::plugin::types,
            "wasmop:plugin/host": super::operator::wasmop::plugin::host,
        },
    });
}
